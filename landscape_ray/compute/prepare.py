"""A job's inputs, loaded and probed: one batch per split at θ* shows that model, data and metric fit, names the
variables the evaluator produces, and times a point for `grid.tile: auto`. Every input error surfaces here,
before a store exists or an actor starts.

    payload = prepare(spec)                           # inputs.kinds.load_inputs, then the probe
    ev = Evaluator.from_payload(spec, payload)
"""

from __future__ import annotations

import math
import time

import numpy as np

from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.kinds import load_inputs
from landscape_ray.inputs.payload import Payload
from landscape_ray.spec.schema import Spec

AGAIN_S = 0.05  # a probe faster than this is timed a second time (the first is cold): at most this much more


def prepare(spec: Spec, vectors: list[dict[str, np.ndarray]] | None = None) -> Payload:
    """Load θ*, the data and the directions once, on the CPU, and probe them; every input error surfaces here.

    `vectors`: directions already made (a resumed store's), so they are not computed again (a PCA can be costly).
    """
    payload = load_inputs(spec, vectors)
    plain = spec.model_copy(update={"eval": spec.eval.model_copy(update={"compile": False})})  # no compiling to probe
    evaluator = Evaluator.from_payload(plain, payload, "cpu")
    start = time.perf_counter()
    payload.variables = probe(evaluator) + (["train_lambda_max", "train_lambda_min"] if spec.eval.curvature else [])
    seconds = time.perf_counter() - start
    if seconds < AGAIN_S:  # cold: a small MLP's first batch took 3.6-6.7 ms, its second 1.2-1.6 (digits CNN: 5.6, 4.5)
        start = time.perf_counter()
        evaluator.measure(limit=1)
        seconds = min(seconds, time.perf_counter() - start)
    # One batch per split took this long; a point takes about that many times more (an overestimate where the
    # batch was cold, which only makes `tile: auto` cut a little smaller and a small job look larger).
    batches = max(math.ceil(len(s) / evaluator.batch_size) for s in payload.splits.values())
    payload.point_seconds = seconds * batches
    return payload


def probe(evaluator: Evaluator) -> list[str]:
    """The variables an evaluator produces, from one batch per split: model, data and metric must fit."""
    try:
        return list(evaluator.measure(limit=1))
    except Exception as err:  # noqa: BLE001 - anything the user's model or metric raises is an input error here
        # Chained, so that `--debug` shows where in the user's code it failed.
        raise SpecError(
            f"eval: one batch at θ* failed (model, data and metric must fit): {type(err).__name__}: {err}"
        ) from err
