"""The STAR poses' errors measured on the data (``hetclass.stability.pose_spread``).

Truth is made with the null's own simulator (``null_dataset``): images of the one-state model
at poses moved by known errors, classified at the STAR poses. The estimator must find the
errors' size (isotropic errors), find none where there are none, and put a consistent turn
about one axis (what a conformational change looks like to it) into the anisotropic part,
not into the isotropic spread the null simulates.
"""

from dataclasses import replace

import numpy as np
import pytest

from hetclass import engine
from hetclass.geometry import rotvec_to_matrix
from hetclass.options import ClassifyOptions
from hetclass.phantoms import phantom_model
from hetclass.pipeline import load_particles
from hetclass.simulate import simulate_dataset
from hetclass.stability import null as null_mod
from hetclass.stability import pose_spread as ps
from hetclass.stability.null import OneStateModel, null_dataset


@pytest.fixture(scope="module")
def one_state(tmp_path_factory):
    """One state, box 48 at 3.5 A/px, 1200 particles; its K = 1 model."""
    ds = simulate_dataset(tmp_path_factory.mktemp("pose_spread"),
                          {"open": phantom_model("open")}, n_particles=1200, box_px=48,
                          pixel_size_A=3.5, snr=0.5, seed=11, threads=1)
    options = ClassifyOptions(classes=1, seed=0, max_iter=8)
    prepared = engine.prepare(load_particles(ds.star_path, project_dir=ds.out_dir), options)
    res = engine.fit(prepared, options, seed=0)
    model = OneStateModel(np.asarray(res.state.maps[0], np.float32),
                          np.asarray(res.state.sigma2, np.float64),
                          float(np.asarray(res.resolution_A)[0]), n_particles=len(prepared.data))
    return prepared, model


def _measured(prepared, model, spread, seed=5):
    data = null_dataset(prepared, replace(model, pose_spread=spread), seed, 1)
    return ps.estimate_pose_spread(data, model, np.arange(len(prepared.data)), 0, null_dataset)


def test_rotation_matrices_are_rotations_by_the_vector_length():
    w = np.random.default_rng(0).normal(size=(20, 3)) * 0.3
    r = rotvec_to_matrix(w)
    assert np.allclose(r @ r.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(r), 1.0)
    angle = np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert np.allclose(angle, np.linalg.norm(w, axis=1))
    assert np.allclose(r @ w[:, :, None], w[:, :, None])          # the axis stays
    assert np.allclose(rotvec_to_matrix(np.zeros((2, 3))), np.eye(3))


def test_pose_errors_of_a_particle_do_not_depend_on_the_sharding():
    spread = ps.PoseSpread(2.0, 0.5, 1.0)
    rot = rotvec_to_matrix(np.random.default_rng(1).normal(size=(600, 3)))
    rows = np.arange(600)
    whole = ps.perturbed_poses(spread, rot, rows, 3, 0, 256)
    part = np.arange(150, 600, 7)
    shard = ps.perturbed_poses(spread, rot[part], rows[part], 3, 0, 256)
    assert np.allclose(whole[0][part], shard[0]) and np.allclose(whole[1][part], shard[1])
    other = ps.perturbed_poses(spread, rot, rows, 3, 1, 256)      # another null set
    assert not np.allclose(whole[1], other[1])
    # per-axis standard deviations as asked
    w = np.array([np.linalg.inv(a) @ b for a, b in zip(rot, whole[0])])
    angle = np.rad2deg(np.arccos(np.clip((np.trace(w, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert abs(np.median(angle) / (ps.MAXWELL_MEDIAN * 2.0) - 1) < 0.12
    assert abs(np.std(whole[1]) / 0.5 - 1) < 0.1


def test_no_pose_error_measures_about_none(one_state):
    prepared, model = one_state
    got = _measured(prepared, model, None)
    assert got.rot_deg < 0.5 and got.shift_px < 0.1, got
    assert not got.simulated            # too small to matter: the null keeps the STAR poses
    assert 1.0 < got.noise_inflation < 2.5


def test_isotropic_pose_errors_are_measured(one_state):
    prepared, model = one_state
    got = _measured(prepared, model, ps.PoseSpread(2.5, 0.4, prepared.pixel_size_A))
    assert 1.9 < got.rot_deg < 3.1, got
    assert 0.25 < got.shift_px < 0.55, got
    assert max(got.rot_axes_deg) < 3.3
    assert got.simulated and got.displacement_A > 0.05 * got.resolution_A


def test_a_turn_about_one_axis_is_not_isotropic_error(one_state, monkeypatch):
    """Particles turned by +-3 deg about one map axis (as two conformations differ to a
    one-state model): large along that axis, no isotropic spread."""
    prepared, model = one_state

    def turned(spread, rotations, global_rows, seed, index, block):
        sign = np.where(global_rows % 2 == 0, 1.0, -1.0)
        w = np.zeros((global_rows.size, 3))
        w[:, 2] = np.deg2rad(3.0) * sign
        return rotations @ rotvec_to_matrix(w), np.zeros((global_rows.size, 2))

    monkeypatch.setattr(null_mod, "perturbed_poses", turned)
    got = _measured(prepared, model, ps.PoseSpread(1.0, 0.0, prepared.pixel_size_A))
    assert got.rot_axes_deg[2] > 2.0, got
    assert got.rot_deg < 0.6, got


def _blobs(b=32, seed=0, drop=None, turn_deg=0.0):
    """Gaussian blobs; ``turn_deg``: the same blobs turned about the first array axis."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-7, 7, size=(14, 3))
    t = np.deg2rad(turn_deg)
    centres = centres @ np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)],
                                  [0, np.sin(t), np.cos(t)]]).T
    grid = np.indices((b, b, b)).transpose(1, 2, 3, 0) - b // 2
    vol = np.zeros((b, b, b))
    for i, c in enumerate(centres):
        if i != drop:
            vol += np.exp(-np.sum((grid - c) ** 2, axis=-1) / (2 * 1.5 ** 2))
    return vol


def _with_halves(maps, noise, seed=1):
    rng = np.random.default_rng(seed)
    halves = np.stack([maps + rng.normal(0, noise, maps.shape) for _ in range(2)])
    return halves.mean(0), halves


def test_aligned_statistic_discounts_a_turn_and_keeps_a_change():
    """Map statistic with ``aligned`` (data with pose errors): two maps of one structure
    turned 3 deg apart no longer differ much; a missing blob still does."""
    from hetclass.stability.distinguish import log_ratio_matrix
    a = _blobs()
    turned = _blobs(turn_deg=3.0)
    changed = _blobs(drop=3)
    maps, halves = _with_halves(np.stack([a, turned, changed]), 0.005)
    plain = log_ratio_matrix(maps, halves)
    aligned = log_ratio_matrix(maps, halves, aligned=True)
    assert plain[0, 1] > 2.0                       # the turn alone is far beyond noise ...
    assert aligned[0, 1] < 0.5                     # ... and explained by a rigid motion
    assert aligned[0, 2] > plain[0, 2] - 0.3       # a change of structure keeps its difference
    assert np.isnan(aligned[0, 0])


@pytest.mark.parametrize("noise", [0.005, 0.02])
def test_aligned_statistic_of_one_structure_turned_sits_at_the_noise_level(noise):
    """Two noisy maps of one structure, turned 1 and 3 deg apart: after the rigid motion the
    residual is the maps' noise (log T ~ 0) at low and at high noise. Trilinear motion with
    the unmoved noise gave +0.6 (its blur left signal) and -0.25 (it smoothed the noise)."""
    from hetclass.stability.distinguish import log_ratio_matrix
    structures = np.stack([_blobs(), _blobs(turn_deg=3.0), _blobs(turn_deg=1.0)])
    values = np.array([log_ratio_matrix(*_with_halves(structures, noise, seed=s),
                                        aligned=True)[0, 1:] for s in range(3)])
    assert np.all(np.abs(values) < 0.1), values
