"""Replicate mechanics and the exhaustive tree logic with a stand-in engine (known truth).

The stand-in ``fit`` classifies by a hidden truth (with errors) when the particles it is
given hold distinct states, and at random otherwise; the stand-in ``reconstruct`` averages
per-state maps with noise falling as 1/sqrt(particles). No images are involved, so these
tests isolate seeds, subsampling, parallelism, matching and the splitting rules.
"""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from hetclass.errors import AbortRequested, InputError
from hetclass.fsc import fsc as fsc_curve
from hetclass.options import parse_k_range
from hetclass.stability.exhaustive import explore
from hetclass.stability.replicates import consensus_maps, replicate_seeds, run_replicates, subsample_rows

BOX = 12


def _smooth_field(rng):
    v = rng.normal(size=(BOX, BOX, BOX))
    k = np.fft.fftfreq(BOX)
    kk = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    f = np.fft.ifftn(np.fft.fftn(v) * np.exp(-kk * 60)).real
    return (f / f.std()).astype(np.float32)


class FakeEngine:
    """Hierarchical truth: state 0 | (1 | 2) -- K=2 on all splits 0 vs {1, 2} first."""

    def __init__(self, truth, error=0.03, seed=0, identical_maps=False):
        self.truth = np.asarray(truth)
        self.error = error
        rng = np.random.default_rng(seed)
        base = _smooth_field(rng)
        self.state_maps = np.stack([base if identical_maps else base + 0.8 * _smooth_field(rng)
                                    for _ in range(3)])
        self.calls = []
        mask = np.ones((BOX, BOX, BOX), np.float32)
        self.prepared = SimpleNamespace(
            data=SimpleNamespace(__len__=None, plan=SimpleNamespace(target_shell=5, crop_box_px=BOX)),
            solvent_mask=mask, pixel_size_A=5.0)
        self.prepared.data = _Sized(len(truth), self.prepared.data.plan)
        self.split_homogeneous_by_parity = False

    def fit(self, prepared, options, seed, rows, progress=None, abort_check=None):
        rng = np.random.default_rng(seed)
        rows = np.asarray(rows)
        self.calls.append((seed, rows.copy(), options.classes))
        if abort_check is not None:
            abort_check()
        t = self.truth[rows]
        k = options.classes
        values, counts = np.unique(t, return_counts=True)
        states = values[counts >= 0.05 * rows.size]          # strays are classification errors
        if states.size >= 2:
            lab = (t != states[0]).astype(int) if k == 2 else np.minimum(t - states[0], k - 1)
            flip = rng.random(rows.size) < self.error
            lab[flip] = rng.integers(0, k, flip.sum())
        elif self.split_homogeneous_by_parity:
            lab = (rows % 2).astype(int)
        else:
            lab = rng.integers(0, k, rows.size)
        lab = rng.permutation(k)[lab]
        post = np.eye(k, dtype=np.float32)[lab]
        rec = self.reconstruct(prepared, post.astype(np.float64), rows=rows)
        return SimpleNamespace(labels=lab, posteriors=post, maps=rec.maps,
                               half_maps=rec.half_maps, fsc=np.ones((k, BOX // 2 + 1)),
                               resolution_A=np.full(k, 10.0), pixel_size_A=5.0,
                               stats=[{"iteration": 1, "class_fractions": [1.0 / k] * k}])

    def reconstruct(self, prepared, weights, rows=None):
        rows = np.arange(len(self.truth)) if rows is None else np.asarray(rows)
        rng = np.random.default_rng(int(weights.sum() * 1000) % 2 ** 32)
        maps, halves, fscs = [], [], []
        for w in np.asarray(weights).T:
            total = max(w.sum(), 1e-9)
            mean = np.tensordot(w, self.state_maps[self.truth[rows]], axes=1) / total
            h = [mean + rng.normal(size=mean.shape) * 3.0 / np.sqrt(total / 2) for _ in range(2)]
            maps.append((h[0] + h[1]) / 2)
            halves.append(h)
            fscs.append(fsc_curve(h[0], h[1]))
        return SimpleNamespace(maps=np.array(maps), half_maps=np.array(halves).transpose(1, 0, 2, 3, 4),
                               fsc=np.array(fscs), resolution_A=np.full(len(maps), 12.0))


class _Sized:
    def __init__(self, n, plan):
        self.n = n
        self.n_total = n
        self.plan = plan

    def __len__(self):
        return self.n


def _options(k=2):
    from hetclass.pipeline import ClassifyOptions
    return ClassifyOptions(classes=k)


def test_replicate_seeds_are_named_streams_and_never_advance_the_root():
    from hetclass import seeds
    root = np.random.SeedSequence(7)
    ours = replicate_seeds(root, 4)
    for r, a in enumerate(ours):
        assert np.array_equal(a.generate_state(4),
                              seeds.stream(7, "replicate", r).generate_state(4))
    assert root.n_children_spawned == 0
    # stateless: asking again, or for more replicates, gives the same seeds
    assert np.array_equal(replicate_seeds(7, 6)[2].generate_state(2), ours[2].generate_state(2))
    # distinct from every other stream of the same root
    assert len({tuple(s.generate_state(2)) for s in ours}
               | {tuple(seeds.stream(7, "subsample", r).generate_state(2))
                  for r in range(4)}) == 8


def test_subsample_rows_size_and_independence():
    a, b = subsample_rows(0, 0, 1000, 0.8), subsample_rows(0, 1, 1000, 0.8)
    assert a.size == b.size == 800 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(subsample_rows(0, 0, 10, None), np.arange(10))


@pytest.mark.parametrize("workers", [1, 3])
def test_run_replicates_places_labels_and_is_deterministic(workers):
    truth = np.repeat([0, 1], 150)
    eng = FakeEngine(truth)
    run = run_replicates(eng.prepared, _options(), 2, n_replicates=3, seed=11, subsample=0.7,
                         workers=workers, fit=eng.fit)
    assert run.labels.shape == (3, 300) and run.posteriors.shape == (3, 300, 2)
    for r in range(3):
        present = run.labels[r] >= 0
        assert present.sum() == 210
        kept = subsample_rows(11, r, 300, 0.7)
        np.testing.assert_array_equal(np.flatnonzero(present), kept)
        np.testing.assert_allclose(run.posteriors[r][~present], 0.0)
    seeds = [c[0].generate_state(1)[0] for c in eng.calls]
    assert len(set(seeds)) == 3
    again = FakeEngine(truth)
    run2 = run_replicates(again.prepared, _options(), 2, 3, seed=11, subsample=0.7, workers=1,
                          fit=again.fit)
    np.testing.assert_array_equal(run.labels, run2.labels)


def test_abort_in_one_replicate_stops_the_run():
    eng = FakeEngine(np.repeat([0, 1], 50))
    calls = {"n": 0}

    def abort():
        calls["n"] += 1
        if calls["n"] >= 2:
            raise AbortRequested("stop")

    with pytest.raises(AbortRequested):
        run_replicates(eng.prepared, _options(), 2, 4, seed=0, workers=2, fit=eng.fit,
                       abort_check=abort)


def test_consensus_maps_follow_the_permutations():
    truth = np.repeat([0, 1], 50)
    eng = FakeEngine(truth)
    run = run_replicates(eng.prepared, _options(), 2, 2, seed=0, workers=1, fit=eng.fit)
    run.maps = np.stack([np.stack([np.full((2, 2, 2), 1.0), np.full((2, 2, 2), 2.0)])] * 2)
    run.half_maps = np.stack([run.maps] * 2, axis=1)
    perms = np.array([[0, 1], [1, 0]])
    maps, halves = consensus_maps(run, perms)
    np.testing.assert_allclose(maps[0], 1.5)     # (1 + 2) / 2: replicate 2's class 1 is class 0
    np.testing.assert_allclose(halves[1, 1], 1.5)


@pytest.mark.parametrize("text,expected", [("4", [4]), ("2-5", [2, 3, 4, 5]), (" 1-2 ", [1, 2]),
                                           (3, [3]), ([4, 2, 2], [2, 4])])
def test_parse_k_range(text, expected):
    assert parse_k_range(text) == expected


@pytest.mark.parametrize("bad", ["x", "3-", "0", "0-3", "5-2"])
def test_parse_k_range_rejects(bad):
    with pytest.raises(InputError) as err:
        parse_k_range(bad)
    assert err.value.field == "--classes"


def test_too_few_replicates_is_an_input_error():
    eng = FakeEngine(np.repeat([0, 1], 10))
    with pytest.raises(InputError) as err:
        run_replicates(eng.prepared, _options(), 2, 1, fit=eng.fit)
    assert err.value.field == "--replicates"
    with pytest.raises(InputError) as err:
        run_replicates(eng.prepared, _options(), 2, 3, subsample=1.5, fit=eng.fit)
    assert err.value.field == "--subsample"


def _fake_null(values=(0.0, 0.1, -0.1, 0.05, -0.05, 0.0)):
    """A null of map statistics near 0 (the stand-in maps have no selection)."""
    from hetclass.stability.distinguish import NullModel
    from hetclass.stability.null import NullRun
    sizes = [1200, 300, 75] * (len(values) // 3)
    return NullRun(None, [], NullModel(sizes, list(values)))


def _explore(eng, **kw):
    return explore(eng.prepared, _options(), n_replicates=4, seed=3, workers=1,
                   reconstruct=eng.reconstruct, fit=eng.fit, null_run=_fake_null(), **kw)


def test_exhaustive_finds_the_three_leaves_of_a_hierarchy():
    truth = np.repeat([0, 1, 2], [600, 300, 300])
    eng = FakeEngine(truth)
    root = _explore(eng, min_class_size=100, max_depth=4)
    leaves = root.leaves()
    assert len(leaves) == 3
    purities = sorted(np.bincount(truth[lf.rows], minlength=3).max() / lf.n_particles
                      for lf in leaves)
    assert purities[0] > 0.9
    # one state per leaf: the split is random (worse than chance) or within the null
    assert {lf.reason for lf in leaves} <= {"unstable split", "no significant map difference"}
    assert root.decision == "split" and root.map_test["significant"]
    assert all(p["p_value"] < 0.01 for p in root.map_test["pairs"])
    assert [c.node_id for c in root.children] == ["1.1", "1.2"]
    # a leaf whose split was futile ran only the first replicates
    futile = [n for n in root.walk() if n.verdict and any(
        v["futile"] for v in n.verdict["scan"].values())]
    assert futile and all(v["replicates_run"] == 2 for n in futile
                          for v in n.verdict["scan"].values() if v["futile"])
    # too small: the same data with a minimum the second level cannot meet
    eng2 = FakeEngine(truth)
    root2 = _explore(eng2, min_class_size=350, max_depth=4)
    reasons = sorted(lf.reason for lf in root2.leaves())
    assert len(root2.leaves()) == 2 and "too small" in reasons
    small = next(lf for lf in root2.leaves() if lf.reason == "too small")
    assert small.note.startswith("not tried") and small.verdict is None
    # max depth
    root3 = _explore(FakeEngine(truth), min_class_size=100, max_depth=1)
    assert [lf.reason for lf in root3.leaves()] == ["max depth", "max depth"]


def test_exhaustive_refuses_a_stable_split_without_map_difference():
    truth = np.zeros(800, dtype=int)
    eng = FakeEngine(truth, identical_maps=True)
    eng.split_homogeneous_by_parity = True        # reproducible, but the maps are the same
    root = _explore(eng, min_class_size=100, max_depth=3)
    assert root.decision == "leaf"
    assert root.reason == "no significant map difference", root.map_test
    assert root.stability["all_stable"]


class _TwoWayBlind(FakeEngine):
    """Three groups that K = 2 cannot split reproducibly (random labels when the rows hold
    three states); K = 3 splits them by the truth."""

    def fit(self, prepared, options, seed, rows, **kw):
        t = self.truth[np.asarray(rows)]
        values, counts = np.unique(t, return_counts=True)
        if options.classes == 2 and np.sum(counts >= 0.05 * t.size) >= 3:
            saved, self.truth = self.truth, np.zeros_like(self.truth)   # one "state": random
            try:
                return super().fit(prepared, options, seed, rows, **kw)
            finally:
                self.truth = saved
        return super().fit(prepared, options, seed, rows, **kw)


def test_exhaustive_k3_pair_inflated_inside_the_fit_is_classified_again(monkeypatch, tmp_path):
    """Groups 2 and 3 are one state (the same map); inside the K = 3 fit their pair looks
    distinguishable (p 0.003, the inflation the stand-in lacks is put in by hand). The tree
    classifies that pair again on its own (its own task keys, kept for --continue), finds
    it within the null and does not accept the three-way split."""
    from hetclass.stability import exhaustive
    from hetclass.stability.tasks import WorkCache
    truth = np.repeat([0, 1, 2], [500, 350, 350])
    eng = _TwoWayBlind(truth)
    eng.state_maps[2] = eng.state_maps[1]
    from hetclass.stability import class_tests
    real_tests, real_pair_fits = exhaustive.pairwise_tests, class_tests.pair_fits
    refits = []

    def inflated(run, scores, null_model, mask, alpha):
        out = real_tests(run, scores, null_model, mask, alpha)
        for p in out["pairs"]:
            if out["k"] == 3 and not p["distinguishable"]:
                p.update(p_value=0.003, distinguishable=True)
        out["all_distinguishable"] = all(p["distinguishable"] for p in out["pairs"])
        out["merge"] = []
        return out

    def pair_fits(prepared, options, members, seed, run, fit=None, start_labels=None,
                  confirm_k=None):
        assert confirm_k == 3 and start_labels is not None
        refits.append(sorted(members))
        return real_pair_fits(prepared, options, members, seed, run, fit=fit,
                              start_labels=start_labels, confirm_k=confirm_k)

    def split_fit(prepared, options, rows, seed, check, fit, start_labels=None):
        from hetclass.stability.tasks import compact  # the stand-in has no images
        return compact(eng.fit(prepared, replace(options, classes=2), seed, rows))

    monkeypatch.setattr(exhaustive, "pairwise_tests", inflated)
    monkeypatch.setattr(class_tests, "pair_fits", pair_fits)
    monkeypatch.setattr("hetclass.stability.class_tests._split_fit", split_fit)
    cache = WorkCache(tmp_path, {"run": "confirm"}, resume=False)
    root = _explore(eng, min_class_size=100, max_depth=1, cache=cache)
    assert root.decision == "leaf", root.map_test
    assert root.verdict["scan"]["3"]["distinguishable"] is False
    assert len(refits) == 1 and (1, 2) in refits[0]       # the borderline pairs, once
    assert any(f.name.startswith("n1_confirm_k3_c2_c3") for f in tmp_path.rglob("*.npz"))
    # without the inflation the pair fails inside the fit: nothing is classified again
    monkeypatch.setattr(exhaustive, "pairwise_tests", real_tests)
    refits.clear()
    again = _explore(eng, min_class_size=100, max_depth=1)
    assert again.decision == "leaf" and refits == []


@pytest.mark.parametrize("argv,field", [
    (["stability", "--classes", "2-x", "--replicates", "3"], "--classes"),
    (["stability", "--classes", "2-3", "--replicates", "1"], "--replicates"),
    (["stability", "--classes", "1", "--replicates", "3"], "--classes"),
    (["exhaustive", "--k-scan", "3"], "--k-scan"),
])
def test_cli_bad_values_exit_2_with_one_line(tmp_path, capsys, argv, field):
    from hetclass.phantoms import phantom_model
    from hetclass.simulate import simulate_dataset
    from hetclass_standalone.main import main
    ds = simulate_dataset(tmp_path / "d", {"open": phantom_model("open")}, n_particles=20,
                          box_px=20, pixel_size_A=12.0, snr=None, seed=0)
    rc = main(argv + ["--particles", ds.star_path, "--project-dir", ds.out_dir,
                      "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and field in err, err


def test_continue_keeps_finished_classifications_and_gives_the_same_result(tmp_path):
    from hetclass.stability.analysis import run_stability
    from hetclass.stability.tasks import WORK_DIR, WorkCache
    truth = np.repeat([0, 1, 2], [120, 100, 80])
    ident = {"run": "test"}

    def run(out, eng, resume=False, abort_after=None):
        calls = {"n": 0}

        def fit(*a, **kw):
            calls["n"] += 1
            if abort_after is not None and calls["n"] > abort_after:
                raise AbortRequested("killed")
            return eng.fit(*a, **kw)
        cache = WorkCache(out, ident, resume)
        result = run_stability(eng.prepared, _options(), [1, 2, 3], n_replicates=3, seed=4,
                               workers=1, fit=fit, cache=cache, null_sets=0)
        return result, calls["n"]

    whole, n_fits = run(tmp_path / "a", FakeEngine(truth))
    with pytest.raises(AbortRequested):
        run(tmp_path / "b", FakeEngine(truth), abort_after=4)
    assert len(list((tmp_path / "b" / WORK_DIR).glob("*.npz"))) == 4
    again, n_again = run(tmp_path / "b", FakeEngine(truth), resume=True)
    assert n_again == n_fits - 4
    for k in (2, 3):
        np.testing.assert_array_equal(whole.per_k[k].aligned, again.per_k[k].aligned)
        assert whole.maps[k].tobytes() == again.maps[k].tobytes()
    assert whole.verdict.heterogeneity == again.verdict.heterogeneity
    # another run's work is refused, in one line naming what differs
    with pytest.raises(InputError) as err:
        WorkCache(tmp_path / "b", {"run": "other"}, resume=True)
    assert err.value.field == "run"


@pytest.mark.parametrize("bad_replicates, set_aside", [((2,), 3), ((1, 3), None)])
def test_scan_sets_aside_one_replicate_that_found_another_partition(bad_replicates, set_aside):
    """Five replicates of three states; at K = 3 the replicates in ``bad_replicates`` label
    at random. One such replicate is set aside and K = 3 is recommended (scored on the four
    others); with two, nothing is set aside and K = 3 is unstable."""
    from hetclass.stability.analysis import run_stability
    from hetclass.stability.replicates import replicate_seeds
    truth = np.repeat([0, 1, 2], [160, 140, 100])
    good, bad = FakeEngine(truth), FakeEngine(truth, error=1.0)
    bad_keys = {replicate_seeds(4, 5)[r].spawn_key for r in bad_replicates}

    def fit(prepared, options, seed, rows, **kw):
        odd = options.classes == 3 and seed.spawn_key in bad_keys
        return (bad if odd else good).fit(prepared, options, seed, rows, **kw)

    result = run_stability(good.prepared, _options(), [1, 2, 3], n_replicates=5, seed=4,
                           workers=1, fit=fit, null_sets=0, extend=False)
    scores = result.per_k[3]
    if set_aside is None:
        assert "set_aside" not in scores.extra and not scores.all_stable
        assert result.runs[3].n_replicates == 5 and result.verdict.recommended_k == 2
        return
    assert scores.extra["set_aside"]["replicate"] == set_aside
    assert scores.all_stable and scores.n_replicates == 4 and result.runs[3].n_replicates == 4
    assert result.verdict.recommended_k == 3
    assert scores.set_aside_labels is not None and scores.set_aside_labels.shape == truth.shape
    # K = 2 had nothing to set aside: its scores are those of all five replicates
    assert result.per_k[2].n_replicates == 5 and "set_aside" not in result.per_k[2].extra
