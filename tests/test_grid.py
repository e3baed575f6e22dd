"""Tiles cover the grid exactly once and their coordinates line up with where their values go."""

import numpy as np
import pytest

from landscape_ray.spec.grid import Grid
from landscape_ray.spec.schema import GridSpec


@pytest.mark.parametrize(
    "raw, tile",
    [
        ({"x": {"min": -1, "max": 1, "num": 11}, "tile": 4}, (4,)),
        ({"x": {"min": -1, "max": 1, "num": 7}, "y": {"min": 0, "max": 2, "num": 5}, "tile": 16}, (2, 7)),
        ({"x": {"min": -1, "max": 1, "num": 7}, "y": {"min": 0, "max": 2, "num": 5}, "tile": [2, 3]}, (2, 3)),
        ({"x": {"min": -1, "max": 1, "num": 3}, "y": {"min": 0, "max": 2, "num": 2}, "tile": 1000}, (2, 3)),
    ],
)
def test_tiles_cover_every_point_once(raw, tile):
    grid = Grid.from_spec(GridSpec.model_validate(raw))
    assert grid.tile == tile
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


@pytest.mark.parametrize("workers", [1, 2, 7])
@pytest.mark.parametrize(
    "axes", [{"x": {"num": 9}, "y": {"num": 9}}, {"x": {"num": 51}, "y": {"num": 51}}, {"x": {"num": 401}}]
)
def test_auto_tiles_give_every_worker_several_tiles(axes, workers):
    grid = Grid.from_spec(GridSpec.model_validate({**axes, "tile": "auto"}), workers=workers)
    tiles = grid.tiles()
    assert len(tiles) >= 4 * workers or grid.tile == (1,) * len(grid.shape), (grid.tile, len(tiles))
    assert len(tiles) <= grid.size
    hits = np.zeros(grid.shape, int)
    for tile in tiles:
        hits[grid.slices(tile)] += 1
    assert (hits == 1).all()
    assert np.prod(grid.tile) <= 256 and np.prod(grid.chunks) <= 256  # both stay small however large the grid


def test_auto_tiles_are_whole_rows_when_rows_fit_and_pieces_of_rows_otherwise():
    def tile(num: int, workers: int) -> tuple[int, ...]:
        return Grid.from_spec(GridSpec.model_validate({"x": {"num": num}, "y": {"num": num}}), workers=workers).tile

    assert tile(51, 2) == (1, 51)  # 51 rows: 16 tiles per worker or more
    assert tile(1001, 2) == (1, 251)  # 4 pieces of each row
    assert tile(3, 2) == (1, 1)  # 6 points for 2 workers: one point per tile
    assert tile(9, 2) == (1, 2)  # 9 × 9 for 2 workers: 45 tiles, whole rows would be only 9


def test_auto_tiles_shrink_for_expensive_points():
    spec = GridSpec.model_validate({"x": {"num": 51}, "y": {"num": 51}})
    assert Grid.from_spec(spec, workers=1, point_seconds=1.0).tile == (1, 1)  # a second a point: nothing to save
    assert Grid.from_spec(spec, workers=1, point_seconds=1e-5).tile == (5, 51)  # cheap points: the 256-point cap
    assert Grid.from_spec(spec, workers=2, point_seconds=0.01).tile == (1, 17)  # 25 would do: rows in 3 pieces


def test_tile_list_on_a_1d_scan():
    assert Grid.from_spec(GridSpec.model_validate({"x": {"num": 11}, "tile": [4]})).tile == (4,)
