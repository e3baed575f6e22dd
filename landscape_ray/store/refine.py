"""Adaptive grids (`grid.mode: adaptive`): which points of the next pass the picture needs.

An adaptive grid is computed in the passes of a progressive one (spec/passes.py), coarse to fine, but a pass after
the second computes only the points of the cells where the picture is not yet good enough; every other point is
filled in from the lattice of the pass before, as `render` draws it (filled.py). The rule, decided after each pass
from the loss variables:

    a new point is off    where  |f − fill| > tolerance · max(|f|, FLOOR)
    a cell is refined     where  a corner is a new point that is off

`fill` is the value the picture showed at the point before the pass computed it (interpolated from the lattice of
the pass before): an evaluation that disagrees with it by more than the tolerance says the lattice does not carry
the surface there yet, and the cells around it get the next pass's points. Where a new point agrees, the lattice
already drew it; the fill's error falls by about 16× with each halving of the spacing (the cubics of filled.py), so
the cells around it are left as drawn. The first pass has nothing to compare with: the second computes every
point, and its agreement with the first decides the third. Relative, with a floor of FLOOR loss units: far from the
minimum the loss is large and smooth, a few coarse cells carry it; in the basin the tolerance is absolute and small,
so it gets every point. A cell of the lattice with no new corner (beside an axis's last point, whose interval is
shorter) keeps the decision of the cell it was. Non-finite values count as off.

Python's `adaptive` (Learner2D) places points anywhere in a triangulation, one at a time; this rule keeps the
regular grid (its store, chunks and `render`) and decides pass by pass from values alone, so 1 or 2 actors compute
the same points and a resumed run, replaying the decisions from the stored values, continues the same sequence.

    for pieces in schedule(store, passes):   # the pieces still to compute, pass by pass (each written before the
        ...                                  # next is asked for); adaptive: chosen from the values so far
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from landscape_ray.spec.passes import Passes, Piece
from landscape_ray.store.filled import filled

FLOOR = 0.1  # loss units: below this the tolerance is absolute (tolerance × 0.1), so the basin gets every point


def corners(a: np.ndarray) -> np.ndarray:
    """Whether any corner of each cell of the lattice `a` (booleans) is set: one entry fewer along each axis."""
    for axis in range(a.ndim):
        a = np.take(a, range(a.shape[axis] - 1), axis) | np.take(a, range(1, a.shape[axis]), axis)
    return a


def refine(passes: Passes, level: int, fields: list[tuple[np.ndarray, np.ndarray]], tolerance: float) -> None:
    """Choose the points of pass `level + 1` in every cell of pass `level`'s lattice the rule refines, edges
    included. `fields`: per loss variable, (values filled up to `level` from the passes before it, values filled up to
    `level` with it)."""
    if level == 0:
        need = np.ones(passes.grid.shape, bool)
    else:
        lattice = np.ix_(*passes.lattice(level))
        new = passes.levels == level
        off = np.zeros(passes.grid.shape, bool)
        for before, after in fields:
            off |= new & passes.chosen & ~(np.abs(after - before) <= tolerance * np.maximum(np.abs(after), FLOOR))
        rough = corners(off[lattice])
        inherit = ~corners(new[lattice])  # cells that are a cell of the lattice before: their old decision
        probe = tuple(np.minimum(i[:-1] + 1, i[1:]) for i in passes.lattice(level))  # a point inside each cell
        rough |= inherit & passes.refined[np.ix_(*probe)]
        need = np.zeros(passes.grid.shape, bool)
        for cell in zip(*np.nonzero(rough)):
            need[tuple(slice(index[i], index[i + 1] + 1) for index, i in zip(passes.lattice(level), cell))] = True
    passes.choose(level + 1, need)
    passes.refined = need


def loss_fields(store, passes: Passes, level: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The store's loss variables filled up to pass `level`, without and with its points (`refine`'s fields)."""
    done, coords = store.done(), store.grid.axes
    before = done & (passes.levels < level)
    fields = []
    for name in [n for n in store.variables if n.endswith("_loss")]:
        values = store.read(name)
        fields.append(tuple(filled(values, d, passes, coords, level) for d in (before, done)))
    return fields


def schedule(store, passes: Passes, damaged=()) -> Iterator[list[Piece]]:
    """The pieces still to compute, pass by pass: each pass is asked for once the one before is in `store`. An
    adaptive grid chooses each pass's points from the values of the passes before it (stored ones included, on
    resume), with the store's `grid.tolerance`."""
    done = store.done()
    for level in range(passes.count):
        todo = passes.pending(level, done, damaged)
        if todo:
            yield todo
            store.flush()
            done = store.done()
        if passes.adaptive and level + 1 < passes.count:
            refine(passes, level, loss_fields(store, passes, level), store.spec.grid.tolerance)


def complete(store) -> bool:
    """Whether every point the store's grid mode computes is done (adaptive: decided from the values)."""
    passes = Passes(store.grid, store.spec.grid.mode)
    return next(schedule(store, passes, store.damaged()), None) is None
