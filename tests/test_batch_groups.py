"""A pass over a subset processes consecutive batches together (``hetclass.em.batch_groups``):
the same posteriors and evidence for every particle, the same sums up to float rounding, and
every batch its own group when all particles take part."""

import numpy as np

from hetclass import em, engine
from hetclass.options import ClassifyOptions
from hetclass.pipeline import load_particles


def _prepared(ds, batch_size):
    options = ClassifyOptions(classes=3, seed=0, batch_size=batch_size)
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    return engine.prepare(particles, options), options


def test_batch_groups_hold_one_half_set_and_at_most_one_batch_of_active_particles(two_states):
    prepared, _ = _prepared(two_states, 150)
    ws = prepared.workspace
    n = len(prepared.data)
    everyone = np.ones(n, bool)
    assert em.batch_groups(ws, everyone) == [[b] for b in range(len(ws.batches))]
    subset = np.zeros(n, bool)
    subset[::9] = True
    groups = em.batch_groups(ws, subset)
    assert len(groups) < len(ws.batches) / 3
    assert sorted(b for g in groups for b in g) == [
        b for b, (rows, _) in enumerate(ws.batches) if subset[rows].any()]
    for g in groups:
        assert len({ws.batches[b][1] for b in g}) == 1
        assert sum(int(subset[ws.batches[b][0]].sum()) for b in g) <= ws.batch_size
        assert g == list(range(g[0], g[-1] + 1))          # consecutive


def test_grouped_subset_pass_is_the_batch_by_batch_pass(two_states, monkeypatch):
    prepared, options = _prepared(two_states, 150)
    ws = prepared.workspace
    n, k = len(prepared.data), options.classes
    subset = np.zeros(n, bool)
    subset[::5] = True
    refs = engine.initial_state(prepared, options, 0).refs
    sigma2 = prepared.data_power.copy()
    log_prior = np.log(np.full(k, 1.0 / k))
    for hard in (False, True):
        grouped = em.run_pass(ws, refs, sigma2, log_prior, subset, hard)
        with monkeypatch.context() as m:
            m.setattr(em, "batch_groups", lambda ws, active: [
                [b] for b, (rows, _) in enumerate(ws.batches) if active[rows].any()])
            single = em.run_pass(ws, refs, sigma2, log_prior, subset, hard)
        np.testing.assert_array_equal(grouped[1], single[1])       # posteriors
        np.testing.assert_array_equal(grouped[2], single[2])       # log evidence
        scale = float(np.abs(single[0].grid).max())
        np.testing.assert_allclose(grouped[0].grid, single[0].grid, rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(grouped[0].class_weight, single[0].class_weight, rtol=1e-9)
        np.testing.assert_allclose(grouped[0].noise, single[0].noise, rtol=1e-9)
        assert not grouped[1][~subset].any()
