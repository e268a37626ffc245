"""Accuracy on a small *hard* case, against RELION and the ideal observer (issue 18).

Four domain positions 8 deg apart (domain RMSD ~4.5-9 A), 40/30/20/10 %, SNR 0.25, 2400
particles of box 56 at 2.8 A (the first round's hinges of 30-90 deg hid every problem). The
case and its three classifiers come from ``benchmarks/bench_accuracy.py``:

* the ideal observer (true maps at the STAR poses with the CTFs, the known noise and the true
  populations): the physical limit, no classifier beats it on average;
* ``relion_refine --skip_align`` with the command of ``shared/docs/accuracy.md`` (seed 1);
* hetclass ``classify`` at its defaults (seed 1).

The test fails when hetclass falls below RELION on the same data or far below the ideal
observer. Figures are printed (``pytest -s``) for the record. Measured 2026-12-04: ideal
observer 0.918, relion_refine 0.173 (seed 1, 151 s), hetclass 0.666 / 0.665 (seeds 1 / 2, ~60 s
each, default target 11.2 A = 4 x pixel; 0.751 / 0.751 with --target-res 8). hetclass is at
0.73 of the physical limit here: the floor below is a guard against regressions, not the goal.
"""

import os
import sys

import pytest
from relion_tools import relion_available

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

RELION_ITER = 25
IDEAL_FRACTION = 0.70      # hetclass ARI >= this x the ideal observer's (now 0.73)
RELION_MARGIN = 0.01       # hetclass ARI >= RELION's - this


def _case():
    from accuracy_cases import Case, four_close
    return Case("ci_4close", "4 domain positions 8 deg apart, 40/30/20/10 %, box 56",
                lambda: four_close(8.0), [0.40, 0.30, 0.20, 0.10], 4, n_particles=2400,
                box_px=56, pixel_size_A=2.8, snr=0.25)


@pytest.fixture(scope="module")
def hard_case(tmp_path_factory):
    from bench_accuracy import make_data, run_ideal
    case = _case()
    work = str(tmp_path_factory.mktemp("hard_case"))
    info = make_data(case, work)
    return case, info, work, run_ideal(case, info, work)


def _hetclass_ari(case, info, seed):
    from bench_accuracy import scores, truth_labels

    from hetclass import engine
    from hetclass.pipeline import ClassifyOptions, load_particles
    particles = load_particles(info["star"], project_dir=info["project_dir"])
    options = ClassifyOptions(classes=case.classes, particle_diameter_A=case.diameter_A,
                              seed=seed)
    result = engine.fit(engine.prepare(particles, options), options)
    truth = truth_labels(info, particles.image_names)
    return scores(truth, result.labels)["ari"]     # rows: every particle, in order


@pytest.mark.skipif(not relion_available("relion_refine", "relion_reconstruct"),
                    reason="RELION binaries not installed: relion_refine, relion_reconstruct")
def test_hard_case_not_below_relion_nor_far_below_the_ideal_observer(hard_case):
    from bench_accuracy import run_relion
    case, info, work, ideal = hard_case
    ours = _hetclass_ari(case, info, seed=1)
    theirs = run_relion(case, info, work, seed=1, threads=2, iters=RELION_ITER)["ari"]
    print(f"\nhard case ARI: hetclass {ours:.3f}, relion_refine {theirs:.3f}, "
          f"ideal observer {ideal['ari']:.3f}")
    assert ours >= theirs - RELION_MARGIN, (ours, theirs, ideal["ari"])
    assert ours >= IDEAL_FRACTION * ideal["ari"], (ours, theirs, ideal["ari"])


def test_hard_case_other_seed_close_to_the_ideal_observer(hard_case):
    """A second seed: no seed may land in a wrong optimum (each run explores several
    starts and keeps the best by held-out evidence)."""
    case, info, _, ideal = hard_case
    ours = _hetclass_ari(case, info, seed=2)
    assert ours >= IDEAL_FRACTION * ideal["ari"], (ours, ideal["ari"])
