"""Cutting a batch down to its active particles gives the sums of the full batch.

run_pass projects only the active particles of a batch (exploration subsets, split fits on
one class, subsampled replicates); the inactive ones contributed zero weight before, so
every sum must be the same.
"""

import numpy as np
from scipy.spatial.transform import Rotation

from hetclass.em_step import process_batch, shell_onehot
from hetclass.fourier import coefficient_set
from hetclass.projector import coefficient_prefix, grid_side, particle_rows, slice_operator


def _setup(n=12, box=16, r_max=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    coeffs = coefficient_set(box, r_max)
    rot = Rotation.random(n, random_state=seed).as_matrix()
    op = slice_operator(rot, coeffs, 2)
    m = coeffs.size
    side = grid_side(box, 2)
    grids = (rng.standard_normal((side ** 3, k)) + 1j * rng.standard_normal((side ** 3, k))
             ).astype(np.complex64)
    x = (rng.standard_normal((n, m)) + 1j * rng.standard_normal((n, m))).astype(np.complex64)
    c = rng.uniform(0.2, 1.0, (n, m)).astype(np.float32)
    g = rng.integers(0, 2, n)
    n_shells = int(coeffs.shell.max()) + 1
    sigma2 = rng.uniform(0.5, 2.0, (2, n_shells))
    return op, m, grids, x, c, g, sigma2, coeffs.shell, n_shells, k


def test_particle_rows_are_the_operators_rows():
    op, m, *_ = _setup()
    keep = np.array([1, 4, 5, 11])
    rows = (keep[:, None] * m + np.arange(m)).ravel()
    cut = particle_rows(op, keep, m)
    assert cut.shape == (keep.size * m, op.shape[1])
    assert (cut != op[rows]).nnz == 0


def test_slice_operator_rows_are_the_trilinear_weights_of_each_sample():
    """Each row holds the 8 corners of its sample point, corner c = 4 dz + 2 dy + dx in
    order, weight ``(w_z[dz] * w_y[dy]) * w_x[dx]`` in float32 (``w[0] = 1 - f``,
    ``w[1] = f``): bit for bit, whatever the layout the operator is assembled in."""
    box, r_max, pad, n = 16, 6, 2, 7
    coeffs = coefficient_set(box, r_max)
    rot = Rotation.random(n, random_state=3).as_matrix()
    op = slice_operator(rot, coeffs, pad)
    side = grid_side(box, pad)
    m = coeffs.size
    assert op.shape == (n * m, side ** 3) and op.nnz == 8 * n * m
    for i in range(n):
        k = np.stack([coeffs.kx, coeffs.ky, np.zeros(m)]).astype(np.float64) * pad
        q = (rot[i].T @ k + side // 2).astype(np.float32)          # (3, M): x, y, z
        lo = np.floor(q)
        f = q - lo
        lo = lo.astype(np.int64)
        for corner in range(8):
            d = np.array([corner & 1, (corner >> 1) & 1, corner >> 2])     # dx, dy, dz
            w = [np.where(d[a] == 1, f[a], np.float32(1) - f[a]).astype(np.float32)
                 for a in range(3)]
            weight = (w[2] * w[1]) * w[0]
            voxel = (lo[2] + d[2]) * side * side + (lo[1] + d[1]) * side + lo[0] + d[0]
            entries = slice(i * m * 8 + corner, (i + 1) * m * 8, 8)
            np.testing.assert_array_equal(op.indices[entries], voxel)
            np.testing.assert_array_equal(op.data[entries], weight)


def test_active_rows_only_gives_the_same_sums():
    op, m, grids, x, c, g, sigma2, shell, n_shells, k = _setup()
    onehot = shell_onehot(shell, n_shells)
    log_prior = np.log(np.full(k, 1.0 / k))
    rows = np.arange(x.shape[0])
    active = np.zeros(rows.size, bool)
    active[[0, 3, 4, 9, 10]] = True
    keep = np.flatnonzero(active)
    for hard in (False, True):
        full = process_batch(rows, 0, op, grids, x, c, g, sigma2, log_prior, onehot, shell,
                             n_shells, hard, active=active)
        cut = process_batch(rows[keep], 0, particle_rows(op, keep, m), grids, x[keep], c[keep],
                            g[keep], sigma2, log_prior, onehot, shell, n_shells, hard,
                            active=np.ones(keep.size, bool))
        np.testing.assert_allclose(cut.grid, full.grid, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cut.acc.noise, full.acc.noise, rtol=1e-10)
        np.testing.assert_allclose(cut.acc.class_weight, full.acc.class_weight, rtol=1e-12)
        np.testing.assert_allclose(cut.acc.log_likelihood, full.acc.log_likelihood, rtol=1e-10)
        np.testing.assert_allclose(cut.posteriors, full.posteriors[keep], rtol=1e-6)
        assert np.abs(full.grid).max() > 0


def test_coefficient_prefix_is_the_operator_built_for_fewer_coefficients():
    """The cut is bit for bit the operator of the shorter coefficient list (odd box too)."""
    for box, r_max in ((16, 6), (17, 7)):
        coeffs = coefficient_set(box, r_max)
        rot = Rotation.random(9, random_state=box).as_matrix()
        full = slice_operator(rot, coeffs, 2)
        for shells in (1, 3, r_max, r_max + 1):
            m_use = coeffs.count_below(shells)
            built = slice_operator(rot, coeffs.prefix(m_use), 2)
            cut = coefficient_prefix(full, coeffs.size, m_use)
            assert cut.shape == built.shape
            np.testing.assert_array_equal(cut.data, built.data)
            np.testing.assert_array_equal(cut.indices, built.indices)
            np.testing.assert_array_equal(cut.indptr, built.indptr)


def _fake_data(n, seed, box=16, r_max=6):
    """The attributes of a FourierData that a Workspace's operators need."""
    from types import SimpleNamespace
    plan = SimpleNamespace(crop_box_px=box, data_shell=r_max, target_shell=r_max)
    return SimpleNamespace(plan=plan, coeffs=coefficient_set(box, r_max),
                           subset=np.repeat([1, 2], n // 2),
                           rotations=Rotation.random(n, random_state=seed).as_matrix())


def test_workspace_cuts_prefixes_from_its_full_operator_and_keeps_both(monkeypatch):
    import hetclass.workspace as W
    data = _fake_data(40, 3)
    coeffs = data.coeffs
    built = []
    original = W.slice_operator

    def counting(rot, co, pad):
        built.append(co.size)
        return original(rot, co, pad)

    monkeypatch.setattr(W, "slice_operator", counting)
    ws = W.Workspace(data, k=2, batch_size=10)
    short = coeffs.count_below(4)
    for m_use in (None, short, None, short, coeffs.count_below(5)):
        op = ws.operator(0, m_use)
        expect = original(data.rotations[ws.batches[0][0]],
                          coeffs.prefix(coeffs.size if m_use is None else m_use), 2)
        assert (op != expect).nnz == 0
    # one build of the full operator; every prefix cut out of it
    assert built == [coeffs.size]
    assert sorted(ws._ops[0]) == [coeffs.count_below(5), coeffs.size]
    # no room: nothing kept, every call builds (the same numbers)
    ws2 = W.Workspace(data, k=2, batch_size=10, cache_bytes=0)
    ws2.operator(0, short)
    ws2.operator(0, short)
    assert built[1:] == [short, short] and not ws2._ops


def test_workspace_subset_operator_is_cut_or_built_for_the_subset_alone(monkeypatch):
    """An exploration subset's operator: cut from a kept operator (or from the whole batch's,
    built and kept when there is room), else built for those particles only and not kept --
    the same numbers either way."""
    import hetclass.workspace as W
    data = _fake_data(40, 5)
    coeffs = data.coeffs
    built = []
    original = W.slice_operator

    def counting(rot, co, pad):
        built.append(rot.shape[0])
        return original(rot, co, pad)

    monkeypatch.setattr(W, "slice_operator", counting)
    keep = np.array([0, 3, 4, 9])
    short = coeffs.count_below(4)
    for cache_bytes, first_whole in ((None, True), (None, False), (0, False)):
        ws = W.Workspace(data, k=2, batch_size=10, cache_bytes=cache_bytes)
        whole = original(data.rotations[ws.batches[1][0]], coeffs.prefix(short), 2)
        want = particle_rows(whole, keep, short)
        built.clear()
        if first_whole:
            ws.operator(1)                     # kept: the subset is cut from it
        for _ in range(2):
            got = ws.operator(1, short, keep)
            assert (got != want).nnz == 0 and got.shape == want.shape
            np.testing.assert_array_equal(got.data, want.data)
            np.testing.assert_array_equal(got.indices, want.indices)
        # with room: the whole batch's operator once (kept, then cut twice); without room:
        # the 4 particles' rows on every call, nothing kept
        assert built == ([10] if cache_bytes is None else [keep.size, keep.size])
        assert (1 in ws._ops) == (cache_bytes is None)


def test_exploration_subset_grows_with_the_classes():
    from hetclass.explore import EXPLORE_MIN_PARTICLES, explore_size, explore_subset
    assert explore_size(2) == EXPLORE_MIN_PARTICLES
    assert explore_size(12) > explore_size(8) > EXPLORE_MIN_PARTICLES
    rows = np.arange(3, 60003, 2)                      # 30000 active of 60006
    seed = np.random.SeedSequence(7)
    small = explore_subset(rows, 60006, seed, 2)
    large = explore_subset(rows, 60006, seed, 8)
    assert small.sum() == explore_size(2) and large.sum() == rows.size
    assert not small[~np.isin(np.arange(60006), rows)].any()
    np.testing.assert_array_equal(small, explore_subset(rows, 60006, seed, 2))


def test_workspace_without_room_for_both_keeps_the_latest_operator():
    from hetclass.workspace import Workspace
    data = _fake_data(20, 4)
    probe = Workspace(data, k=2, batch_size=10)
    probe.operator(0)
    full_bytes = probe.cached_bytes
    # room for one full operator only: a prefix replaces it (the latest use wins)
    ws = Workspace(data, k=2, batch_size=10, cache_bytes=full_bytes)
    short = data.coeffs.count_below(4)
    ws.operator(0)
    ws.operator(0, short)
    assert list(ws._ops[0]) == [short]
    assert ws.cached_bytes == ws._ops[0][short][1] <= full_bytes


def test_block_size_never_changes_a_batch_result(monkeypatch):
    """process_batch computes its E-step BLOCK particles at a time; every number of a
    particle depends on that particle alone, so any block size gives the same arrays."""
    from hetclass import em_step
    op, m, grids, x, c, g, sigma2, shell, n_shells, k = _setup(n=23)
    onehot = shell_onehot(shell, n_shells)
    log_prior = np.log(np.array([0.5, 0.3, 0.2]))
    rows = np.arange(x.shape[0])
    active = np.ones(rows.size, bool)
    active[[2, 7]] = False
    for hard in (False, True):
        results = []
        for block in (em_step.BLOCK, 5, 1):
            monkeypatch.setattr(em_step, "BLOCK", block)
            results.append(process_batch(rows, 1, op, grids, x, c, g, sigma2, log_prior, onehot,
                                         shell, n_shells, hard, active=active))
        for res in results[1:]:
            np.testing.assert_array_equal(res.grid, results[0].grid)
            np.testing.assert_array_equal(res.posteriors, results[0].posteriors)
            np.testing.assert_array_equal(res.acc.noise, results[0].acc.noise)
            np.testing.assert_array_equal(res.loglik, results[0].loglik)


def test_expanded_likelihood_is_the_residual_likelihood():
    """The E-step's expanded form equals the residual form (the GPU kernels' twin) up to
    float32 rounding, in the posteriors and in the noise spectrum's residual power."""
    from hetclass.em_step import (
        class_log_likelihoods,
        expanded_log_likelihoods,
        inverse_noise_table,
        likelihood_shells,
        noise_weights,
        posteriors_from_loglik,
        weighted_residual_power,
    )
    from hetclass.projector import project
    op, m, grids, x, c, g, sigma2, shell, n_shells, k = _setup(n=40, seed=3)
    onehot = shell_onehot(shell, n_shells)
    slices = project(op, grids, x.shape[0], m) * np.float32(0.3)
    sig = sigma2[g][:, shell].astype(np.float32)
    want, per_shell = class_log_likelihoods(x, c, slices, sig, onehot, n_shells)
    inv, y, q = noise_weights(x, c, inverse_noise_table(sigma2, shell), g)
    # the E-step masks the coefficients outside the likelihood's shells (the DC) as here
    keep = likelihood_shells(shell, n_shells).astype(np.float32)
    assert keep[shell == 0].sum() == 0 and keep[shell > 0].all()
    got, abs2 = expanded_log_likelihoods(x, y * keep, q * keep, inv * keep, slices)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    w, _, _ = posteriors_from_loglik(got, np.zeros(k), False)
    w_ref, _, _ = posteriors_from_loglik(want, np.zeros(k), False)
    np.testing.assert_allclose(w, w_ref, atol=1e-4)
    power = weighted_residual_power(x, c, slices, abs2, w_ref, onehot)
    np.testing.assert_allclose(power, np.einsum("nk,nks->ns", w_ref, per_shell), rtol=1e-4)


def test_one_hot_weights_backproject_by_class_bit_for_bit():
    """With one-hot weights (hard assignment, reconstructions from labels) each particle is
    back-projected into its own class only, in one 3-column product; converted to the
    accumulators' layout it is bit for bit the dense 3K-column product (the terms left out
    are exact zeros), with an inactive particle and an empty class."""
    from hetclass.em_step import (
        backproject_by_class,
        class_major_to_grid,
        is_one_hot,
        use_by_class,
    )
    op, m, grids, x, c, g, sigma2, shell, n_shells, k = _setup(n=17, k=4)
    n = x.shape[0]
    labels = np.random.default_rng(5).integers(0, 3, n)      # class 3 stays empty
    weights = np.zeros((n, k))
    weights[np.arange(n), labels] = 1.0
    active = np.ones(n, bool)
    active[6] = False
    weights[6] = 0.0
    assert is_one_hot(weights) and not is_one_hot(weights * 0.5)
    assert use_by_class(k, op.shape[1], True, None) and not use_by_class(2, op.shape[1], True, None)
    assert not use_by_class(k, op.shape[1], False, None)
    assert not use_by_class(k, 2 ** 30, True, None)             # int32 indices would overflow
    onehot = shell_onehot(shell, n_shells)
    log_prior = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    rows = np.arange(n)
    for fixed in (weights, None):        # a reconstruction from labels, a hard E-step
        dense, grouped = (process_batch(rows, 0, op, grids, x, c, g, sigma2, log_prior, onehot,
                                        shell, n_shells, True, with_estep=fixed is None,
                                        fixed_weights=fixed, active=active, by_class=by)
                          for by in (False, True))
        assert grouped.grid.shape == (op.shape[1] * k, 3)
        np.testing.assert_array_equal(class_major_to_grid(grouped.grid, k), dense.grid)
        np.testing.assert_array_equal(grouped.posteriors, dense.posteriors)
        assert np.abs(dense.grid).max() > 0
    # converted into a given array
    own = np.zeros((n, m, 3), np.float32)
    own[..., 0] = 1.0
    part = backproject_by_class(op, own, weights)
    out = np.empty((op.shape[1], 3 * k), np.float32)
    assert class_major_to_grid(part, k, out=out) is out
    np.testing.assert_array_equal(out[:, 2 * k:], 0.0)
    assert out[:, 2 * 3:2 * 3 + 2].max() == 0 and out[:, :6].max() > 0     # class 3 empty


def test_the_dc_coefficient_never_enters_the_likelihood():
    """An image's DC coefficient (its integrated density, shifted by normalisation errors)
    changes no posterior and no log-evidence, on the CPU E-step and in the residual form
    (the GPU kernels' twin); it is still back-projected (the maps' mean density)."""
    from hetclass.em_step import FIRST_LIKELIHOOD_SHELL, class_log_likelihoods
    from hetclass.projector import project
    assert FIRST_LIKELIHOOD_SHELL == 1
    op, m, grids, x, c, g, sigma2, shell, n_shells, k = _setup(n=20, seed=4)
    onehot = shell_onehot(shell, n_shells)
    log_prior = np.log(np.full(k, 1.0 / k))
    rows = np.arange(x.shape[0])
    shifted = x.copy()
    shifted[:, shell == 0] += np.linspace(-50, 50, x.shape[0]).astype(np.float32)[:, None]
    a, b = (process_batch(rows, 0, op, grids, d, c, g, sigma2, log_prior, onehot, shell,
                          n_shells, False) for d in (x, shifted))
    np.testing.assert_array_equal(a.posteriors, b.posteriors)
    np.testing.assert_array_equal(a.loglik, b.loglik)
    assert not np.array_equal(a.grid, b.grid)            # the DC is still reconstructed
    slices = project(op, grids, x.shape[0], m)
    sig = sigma2[g][:, shell].astype(np.float32)
    la, _ = class_log_likelihoods(x, c, slices, sig, onehot, n_shells)
    lb, _ = class_log_likelihoods(shifted, c, slices, sig, onehot, n_shells)
    np.testing.assert_allclose(la, lb, rtol=1e-6)
