"""User code named in a spec as 'package.module:name': models, data sets and metrics plugged in without a registry.

    factory = import_object("mypkg.nets:make_net", "model.arch")
    metric = import_object("jobs.tiny_lm:next_token", "eval.metric")

A module that cannot be imported, or that lacks the name, is a `SpecError` naming the spec field (chained to the
import error, so `--debug` shows the traceback inside the user's module). Kept free of torch, so that any module
can resolve a plugin.
"""

from __future__ import annotations

import importlib

from landscape_ray.core.errors import SpecError


def import_object(path: str, field: str):
    """Resolve 'package.module:name'; errors name the spec field."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError(f"{field}: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError(f"{field}: module {module_name!r} has no {attr!r}") from None
