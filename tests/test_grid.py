"""Tiles cover the grid exactly once and their coordinates line up with where their values go."""
import numpy as np
import pytest

from landscape_ray.grid import Grid
from landscape_ray.spec import GridSpec


@pytest.mark.parametrize("raw, chunks", [
    ({"x": {"min": -1, "max": 1, "num": 11}, "tile": 4}, (4,)),
    ({"x": {"min": -1, "max": 1, "num": 7}, "y": {"min": 0, "max": 2, "num": 5}, "tile": 16}, (2, 7)),
    ({"x": {"min": -1, "max": 1, "num": 7}, "y": {"min": 0, "max": 2, "num": 5}, "tile": [2, 3]}, (2, 3)),
    ({"x": {"min": -1, "max": 1, "num": 3}, "y": {"min": 0, "max": 2, "num": 2}, "tile": 1000}, (2, 3)),
])
def test_tiles_cover_every_point_once(raw, chunks):
    grid = Grid.from_spec(GridSpec.model_validate(raw))
    assert grid.chunks == chunks
    hits = np.zeros(grid.shape, int)
    for tile in grid.tiles():
        coords = grid.coords(tile)
        where = grid.slices(tile)
        hits[where] += 1
        block = coords.reshape(*grid.tile_shape(tile), -1)
        if grid.y is None:
            np.testing.assert_array_equal(block[:, 0], grid.x[where[0]])
        else:
            np.testing.assert_array_equal(block[..., 0], np.broadcast_to(grid.x[where[1]], block.shape[:2]))
            np.testing.assert_array_equal(block[..., 1].T, np.broadcast_to(grid.y[where[0]], block.shape[:2][::-1]))
    assert (hits == 1).all()


def test_coordinates_are_linspace_with_endpoints():
    grid = Grid.from_spec(GridSpec.model_validate({"x": {"min": -1, "max": 1, "num": 5}}))
    np.testing.assert_array_equal(grid.x, [-1, -0.5, 0, 0.5, 1])
    assert grid.dims == ("x",) and grid.y is None
