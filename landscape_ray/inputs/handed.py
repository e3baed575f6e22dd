"""Inputs a Python call hands over in memory (api.py): a model object, data, a metric function.

A spec is data, so it names such an input by its contents (`model.object`, `data.object`: a SHA-256) or its name
(`eval.metric`), and the process that made the call holds the object under that name while the call runs. No other
process holds it: a spec naming one elsewhere (`landscape-ray run --resume` of a store the API wrote) is refused in
one line. The actors get the model and the metric in the payload (payload.py), the data as arrays.

    with handing({spec.model.object: model, spec.data.object: splits}):
        job.run(spec)                     # kinds.load_inputs finds them by the spec's names
"""

from __future__ import annotations

from contextlib import contextmanager

from landscape_ray.core.errors import SpecError

HANDED: dict[str, object] = {}


@contextmanager
def handing(objects: dict[str, object]):
    """Hold `objects` under their names for the duration of the block."""
    HANDED.update(objects)
    try:
        yield
    finally:
        for name in objects:
            HANDED.pop(name, None)


def handed(name: str, field: str):
    """The object held under `name`; a spec field naming one that no call in this process handed over is an error."""
    if name not in HANDED:
        raise SpecError(
            f"{field}: object {name[:19]}… was handed over by a Python call (landscape_ray.plane, scan, interpolate) "
            "and only that call's process holds it; no spec can load it: resume with the same call and resume=True"
        )
    return HANDED[name]
