"""hetclass plan: the cost model's arithmetic, the probe's solution, the command and the
front-end estimate line (no timing is asserted: speed lives in benchmarks/bench_scale.py)."""

import numpy as np
import pytest

from hetclass import cost_reference as ref
from hetclass.errors import InputError
from hetclass.explore import explore_size
from hetclass.phantoms import phantom_model
from hetclass.pipeline import ClassifyOptions, load_particles
from hetclass.plan import (
    GB,
    Machine,
    Rates,
    RunShape,
    classify_estimate,
    format_duration,
    iterations,
    memory_plan,
    stability_estimate,
    workload_for,
)
from hetclass.plan_probe import _solve, probe_rows
from hetclass.plan_report import PlanRequest, log_estimate, parse_duration_s
from hetclass.simulate import simulate_dataset
from hetclass_standalone.main import main as cli

RATES = Rates(read_s_per_image=2e-5, prep_s_per_image=1e-4, prep_efficiency=0.9,
              estep_s_per_coef=2e-8, estep_s_per_coef_class=1e-8,
              fixed_s=0.1, fixed_s_per_class=0.05, build_s_per_coef=1e-7,
              thread_efficiency=0.75, source="test")
BIG = Machine(cores=2, memory_GB=64.0)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("plan_ds"),
                            {"open": phantom_model("open", hinge_deg=0.0),
                             "swung": phantom_model("open", hinge_deg=90.0)},
                            n_particles=300, box_px=32, pixel_size_A=6.0, snr=0.1, seed=2,
                            threads=1)


def test_durations():
    assert parse_duration_s("3h") == 10800
    assert parse_duration_s("2h30m") == 9000
    assert parse_duration_s("90min") == 5400
    assert parse_duration_s("45") == 45
    with pytest.raises(InputError):
        parse_duration_s("soon")
    assert format_duration(3 * 3600 + 10 * 60) == "3 h 10 min"
    assert format_duration(42) == "42 s"


def test_workload_matches_preprocessing(ds):
    from hetclass.preprocess import setup_preprocess
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    for target in (None, 15.0):
        setup = setup_preprocess(particles, target, None, np.random.SeedSequence(0))
        wl = workload_for(len(particles), 32, 6.0, target)
        assert (wl.crop_box_px, wl.n_coefficients) == (setup.plan.crop_box_px, setup.coeffs.size)


def test_classify_time_follows_the_model():
    wl = workload_for(800000, 256, 1.0)
    shape = RunShape(threads=2)
    e4 = classify_estimate(RATES, wl, 4, shape, BIG, max_iter=25)
    m = wl.n_coefficients
    # 800k x M operators (64 B each) exceed the 3 GB operator cache: the rest is rebuilt
    # every iteration
    uncached = 1.0 - 3 * GB / (800000 * m * 64)
    assert 0.5 < uncached < 1
    it = 800000 * m * (2e-8 + 4e-8 + 1e-7 * uncached) / 1.5 + 0.1 + 4 * 0.05   # 2 threads 1.5x
    prep = 800000 * 1e-4 / (2 * 0.9)         # cropping on 2 cores is slower than reading
    out = ref.STARTUP_S + 800000 * ref.OUTPUT_S_PER_PARTICLE
    # exploration: 3 hard starts on explore_size(4) = 20000 particles (same cached
    # fraction), each with its initial reconstruction and held-out score, and (K = 4 >= 3)
    # two merge-and-split moves
    assert explore_size(4) == 20000
    it_x = 20000 * m * (2e-8 + 4e-8 + 1e-7 * uncached) / 1.5 + 0.1 + 4 * 0.05
    explore = (3 + 2) * (ref.EXPLORE_ITERATIONS + 2) * it_x
    # refinement on every particle: the typical iterations (the initial maps come from the
    # exploration subset)
    assert e4.seconds == pytest.approx(prep + iterations(4, 25) * it + explore + out, rel=1e-9)
    assert e4.seconds_max == pytest.approx(prep + 25 * it + 5 * 14 * it_x + out, rel=1e-9)
    # twice the particles: twice the per-particle part (a little more: the 3 GB operator cache
    # covers a smaller share) while exploration stays at 20000 particles; a larger K: longer
    e4_2n = classify_estimate(RATES, workload_for(1600000, 256, 1.0), 4, shape, BIG, 25)
    scaled = e4.seconds - explore           # preprocessing, refinement, outputs
    assert 2.0 <= (e4_2n.seconds - explore) / scaled < 2.2
    assert classify_estimate(RATES, wl, 8, shape, BIG, 25).seconds > e4.seconds
    # ranks divide the per-particle work, not the M-step
    ranks = classify_estimate(RATES, wl, 4, RunShape(ranks=16, threads=1), BIG, 25)
    assert ranks.seconds_max < e4.seconds_max / 4       # 25 iterations: the per-particle part
    assert ranks.seconds < e4.seconds / 3


def test_memory_bound_streams_and_is_respected():
    wl = workload_for(800000, 256, 1.0)
    free = classify_estimate(RATES, wl, 4, RunShape(threads=2), BIG, 25)
    bounded = classify_estimate(RATES, wl, 4, RunShape(max_memory_GB=6, cache=True, threads=2),
                                BIG, 25)
    plan, peak = memory_plan(wl, 4, RunShape(max_memory_GB=6, cache=True, threads=2))
    assert not plan.data_in_memory and peak <= 6 * GB
    assert bounded.peak_GB <= 6 and free.peak_GB > 6
    assert bounded.seconds > free.seconds        # streaming and rebuilt operators cost time
    assert "stream" in bounded.note
    with pytest.raises(InputError):              # below the minimum: the engine's own error
        memory_plan(wl, 4, RunShape(max_memory_GB=0.1, threads=2))


def test_stability_counts_replicates_and_ks():
    wl = workload_for(200000, 256, 1.0)
    one = stability_estimate(RATES, wl, [2], 1, RunShape(threads=1), Machine(1, 64.0), 25)
    five = stability_estimate(RATES, wl, [2], 5, RunShape(threads=1), Machine(1, 64.0), 25)
    scan = stability_estimate(RATES, wl, [1, 2, 3], 5, RunShape(threads=1), Machine(1, 64.0), 25)
    prep = 200000 * 1e-4 + ref.STARTUP_S + 2 * 200000 * ref.OUTPUT_S_PER_PARTICLE   # 1 core
    assert (five.seconds - prep) == pytest.approx(5 * (one.seconds - prep), rel=0.05)
    assert scan.seconds > five.seconds           # K = 1 is free, K = 3 is not


def test_probe_solution_recovers_the_rates():
    m, a, b, c, d = 307, 3e-8, 2e-8, 0.2, 0.07
    # iterations = E-step pass + M-step; each pass has a fixed part of its own (the
    # references' transforms), which the per-particle rates must not absorb
    pass_fixed = {2: 0.05, 6: 0.15}
    points = [(n, k, n * m * (a + b * k) + c + d * k, n * m * (a + b * k) + pass_fixed[k])
              for n in (256, 4096) for k in (2, 6)]
    np.testing.assert_allclose(_solve(points, m), [a, b, c, d], rtol=1e-6)
    # a disturbed M-step (one iteration 0.3 s late) moves the fixed costs, not the rates
    noisy = [(n, k, t + (0.3 if (n, k) == (4096, 6) else 0.0), tp) for n, k, t, tp in points]
    got = _solve(noisy, m)
    np.testing.assert_allclose(got[:2], [a, b], rtol=1e-6)
    # negative estimates (noise) are clipped to zero
    flat = [(n, k, 0.1, 0.01) for n in (256, 4096) for k in (2, 6)]
    assert np.all(_solve(flat, m) >= 0)
    rows = probe_rows(100000, 256)
    assert rows.size == 256 and np.all(np.diff(rows) > 0)
    assert len(np.flatnonzero(np.diff(rows) > 1)) == 3        # four runs of consecutive rows


def test_plan_command_probes_and_prints_the_options(ds, capsys):
    code = cli(["plan", "--particles", ds.star_path, "--project-dir", ds.out_dir,
                "--classes", "2", "--threads", "1", "--budget", "1h"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "300 particles, box 32 px" in out.out and "probe on 256" in out.out
    assert "classify K=2" in out.out and "--max-memory" in out.out
    assert "within 1 h" in out.out or "within 60 min" in out.out
    assert "probe: 4096 particles, K=4" in out.err


def test_plan_command_stability_without_probe(ds, capsys):
    code = cli(["plan", "--particles", ds.star_path, "--project-dir", ds.out_dir,
                "--mode", "stability", "--classes", "1-4", "--replicates", "3", "--no-probe",
                "--cores", "16", "--memory-GB", "64"])
    out = capsys.readouterr().out
    assert code == 0
    assert "stability K=1-4 R=3" in out and "reference machine" in out
    assert "mpirun -n 16" in out and "16 cores" in out


def test_plan_command_bad_budget_is_one_line(ds, capsys):
    code = cli(["plan", "--particles", ds.star_path, "--project-dir", ds.out_dir,
                "--budget", "tomorrow", "--no-probe"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--budget" in err[0]


def test_front_end_estimate_line(ds):
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    lines = []
    log_estimate(particles, ClassifyOptions(classes=3, max_iter=10), PlanRequest("classify", [3]),
                 lines.append)
    assert len(lines) == 1 and lines[0].startswith("estimate: classify K=3: about ")
    assert "300 particles" in lines[0]
    bad = []
    log_estimate(object(), ClassifyOptions(), PlanRequest("classify", [3]), bad.append)
    assert len(bad) == 1 and bad[0].startswith("estimate: not available")


def _scale_model():
    """benchmarks/scale_model.py (the benchmark folder is not a package)."""
    import importlib
    import os
    import sys
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("scale_model")


def test_written_reference_defines_every_constant_the_model_reads(ds):
    """``bench_scale.py --fit-model --write`` rewrites hetclass/cost_reference.py: the text it
    writes must define every constant of the module it replaces (a missing one would break
    ``hetclass plan`` only after the next refit)."""
    reference_source = _scale_model().reference_source
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    constants = {"ITERATIONS": {2: 7.5, 4: 14.0}}
    text = reference_source(constants, {"w": (particles, RATES)})
    written: dict = {}
    exec(compile(text, "cost_reference.py", "exec"), written)
    expected = {k for k in vars(ref) if k.isupper()}
    assert expected <= set(written), sorted(expected - set(written))
    assert written["ITERATIONS"] == {2: 7.5, 4: 14.0}
    assert written["REPLICATE_COST_FACTOR"] == ref.REPLICATE_COST_FACTOR


def test_thread_efficiency_is_measured_on_whole_passes(ds, monkeypatch):
    """The probe's thread efficiency compares the same E-step passes on one thread and on
    ``threads``, each with four batches per thread; it is a per-doubling efficiency."""
    from hetclass import plan_probe
    from hetclass.engine import prepare
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    opts = ClassifyOptions(classes=2, threads=2)
    prepared = prepare(particles, opts)
    seen = []
    import hetclass.em as em
    real = em.run_pass

    def spy(ws, *a, **kw):
        if ws is not prepared.workspace:         # the probe's own batches
            seen.append((ws.threads, len(ws.batches), ws.batch_size))
        return real(ws, *a, **kw)

    monkeypatch.setattr(em, "run_pass", spy)
    eff = plan_probe._pass_efficiency(prepared, opts, 2, 2)
    assert 0.3 <= eff <= 1.0
    # a warm-up and 2 timed passes on each thread count
    assert [t for t, _, _ in seen] == [1] * 3 + [2] * 3
    # four batches per thread, or the smallest batches (64 particles) on tiny sets
    assert all(b >= 4 * t or size == 64 for t, b, size in seen)


def test_fitted_iterations_keep_the_reference_for_classes_not_measured(monkeypatch):
    """A fit from records at K = 2 and 4 replaces those two entries of the iteration table
    and keeps the reference's for the other K (a table of only the measured K would make the
    plan read K = 8 as K = 4)."""
    fit_constants = _scale_model().fit_constants
    monkeypatch.setattr(ref, "ITERATIONS", {2: 4, 4: 15, 8: 22})
    records = [{"step": "classify", "K": 2, "iterations": 5, "em_iterations": 5,
                "dataset": {"n": 1000}, "wall_s": 10.0, "prep_s": 1.0, "em_s": 8.0},
               {"step": "classify", "K": 4, "iterations": 9, "em_iterations": 9,
                "dataset": {"n": 1000}, "wall_s": 20.0, "prep_s": 1.0, "em_s": 18.0}]

    class _Rates:
        prep_efficiency = 0.9

    class _Particles:
        box_px = [64]

    found = fit_constants(records, {"w": (_Particles(), _Rates())})
    assert found["ITERATIONS"] == {2: 5.0, 4: 9.0, 8: 22.0}
