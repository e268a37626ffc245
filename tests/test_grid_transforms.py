"""The map <-> padded-grid transforms without shifts equal the shifted definitions, and the
view order of a batch puts similar slice planes next to each other."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hetclass.projector import view_order
from hetclass.reconstruct import (
    _grid_to_volume_shifted,
    _volume_to_grid_shifted,
    grid_to_volume,
    symmetrise,
    volume_to_grid,
)


@pytest.mark.parametrize("box,pad", [(16, 2), (17, 2), (12, 3), (15, 1), (18, 1)])
def test_volume_to_grid_is_the_shifted_transform(box, pad):
    vol = np.random.default_rng(box).standard_normal((box,) * 3).astype(np.float32)
    got = volume_to_grid(vol, pad)
    want = _volume_to_grid_shifted(vol, pad)
    assert got.dtype == np.complex64 and got.shape == (box * pad,) * 3
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("box,pad", [(16, 2), (17, 2), (12, 3), (15, 1), (18, 1)])
def test_grid_to_volume_is_the_shifted_inverse(box, pad):
    rng = np.random.default_rng(box + 1)
    side = box * pad
    raw = (rng.standard_normal((side,) * 3) + 1j * rng.standard_normal((side,) * 3))
    grid, _ = symmetrise(raw.astype(np.complex64), np.ones((side,) * 3, np.float32))
    for correct in (True, False):
        got = grid_to_volume(grid, box, correct)
        want = _grid_to_volume_shifted(grid, box, correct)
        assert got.dtype == np.float32 and got.shape == (box,) * 3
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_view_order_follows_the_slice_planes():
    rot = Rotation.random(2000, random_state=4).as_matrix()
    order = view_order(rot)
    assert np.array_equal(np.sort(order), np.arange(rot.shape[0]))
    assert np.array_equal(order, view_order(rot))

    def mean_step_deg(rows):
        normal = rot[rows, 2, :]
        cos = np.abs(np.sum(normal[1:] * normal[:-1], axis=1))   # n and -n: one plane
        return float(np.degrees(np.arccos(np.clip(cos, 0, 1))).mean())

    # consecutive planes 3 deg apart on average in view order, 57 deg in random order
    assert mean_step_deg(order) < 5.0
    assert mean_step_deg(np.arange(rot.shape[0])) > 50.0
