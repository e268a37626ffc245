"""Where the gap between hetclass and the ideal observer comes from, on one simulated case.

The ideal observer knows the true maps, the noise and the populations and uses every pixel.
A classifier that estimates its maps from the same particles cannot reach it. This script
separates the losses on a data set simulated by ``bench_stability.py`` or
``bench_accuracy.py`` (a ``data/`` folder with ``particles.star``, ``truth.csv`` and
``true_<state>.mrc``; the true states are rebuilt from the named case):

1. **resolution**: the ideal observer with the images' Fourier coefficients limited to
   ``--limits`` (A; the exact generative model otherwise);
2. **hetclass's likelihood with the true maps**: the engine's own E-step at
   ``--target-res`` against the true maps (scaled onto the data by least squares), with
   the noise spectrum measured against them and the true populations;
3. **maps estimated from the truth** ("oracle labels"): class maps reconstructed by the
   engine from the true labels of all particles but a held-out fold, each fold scored
   against maps that never saw it (``--folds``; 2 folds = half the particles per map, as
   in a gold-standard phase); as solved, with their deviations from the consensus
   weighted as the engine scores them, and with the deviations kept only where the true
   maps differ (an oracle region: what a perfect spatial prior on the differences could
   give);
4. **search or objective** (``--from-truth``): the engine started from the *true* partition
   (its exploration's hard iterations, then the usual soft refinement), and hetclass's
   default fit on the same prepared data (``--seed``). If the run from the truth ends with
   a higher log-likelihood than the default fit, the default missed a better optimum (a
   search problem); if it drifts far from the truth, the objective itself prefers a wrong
   partition (a model problem: more starts cannot help).

Each line prints an ARI against the truth. Example::

    python benchmarks/gap_to_ideal.py --workdir /work/bench_stab --case two_far --target-res 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _case(name: str):
    from accuracy_cases import all_cases as accuracy_cases
    from bench_stability import all_cases as stability_cases
    cases = {c.name: c for c in stability_cases()}
    cases.update({c.name: c for c in accuracy_cases()})
    if name not in cases and name.rsplit("_snr", 1)[0] in cases:
        name = name.rsplit("_snr", 1)[0]     # bench_stability.py --snr: the same states
    if name not in cases:
        raise SystemExit(f"unknown case {name!r}; choose from {sorted(cases)}")
    return cases[name]


def _ari(a, b) -> float:
    from hetclass.stability.scores import adjusted_rand_index
    return float(adjusted_rand_index(np.asarray(a), np.asarray(b)))


def ideal_by_resolution(info: dict, states, populations, sigma: float, limits_A, threads=2):
    """{limit_A: ideal-observer ARI} with the images' coefficients limited to each limit
    (0 = every coefficient)."""
    from hetclass.ideal_observer import true_projections
    from hetclass.io.images import ImageSource
    from hetclass.io.loader import load_particles
    p = load_particles(info["star"], project_dir=info["project_dir"])
    t = pd.read_csv(info["truth"]).set_index("image_name").reindex(p.image_names.astype(str))
    box, psize = int(p.box_px[0]), float(p.pixel_size_A[0])
    f = np.fft.fftfreq(box) / psize
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    masks = [radius <= (1.0 / lim if lim > 0 else np.inf) for lim in limits_A]
    ll = np.zeros((len(limits_A), len(p), len(states)))
    with ImageSource(p) as src:
        for start in range(0, len(p), 1000):
            rows = np.arange(start, min(len(p), start + 1000))
            sub = p.take(rows)
            raw = (src.read(rows).astype(np.float64) / t["norm_scale"].values[rows, None, None]
                   + t["norm_offset"].values[rows, None, None])
            fr = np.fft.fft2(raw)
            for s, gauss in enumerate(states):
                clean = true_projections(sub, gauss, threads)
                d2 = np.abs(fr - np.fft.fft2(clean)) ** 2
                for i, m in enumerate(masks):
                    ll[i, rows, s] = -d2[:, m].sum(1) / (2 * sigma ** 2 * box * box)
    prior = np.log(np.asarray(populations))
    truth = t["state_index"].values
    return {lim: _ari(truth, np.argmax(ll[i] + prior, 1)) for i, lim in enumerate(limits_A)}


def _options(k: int, target_res_A: float, references=None, seed: int = 0):
    from hetclass.options import ClassifyOptions
    return ClassifyOptions(classes=k, particle_diameter_A=150.0, target_res_A=target_res_A,
                           threads=2, references=references or (), seed=seed)


def _prepared(info: dict, k: int, target_res_A: float, references=None):
    from hetclass.io.loader import load_particles
    from hetclass.prepare import prepare
    p = load_particles(info["star"], project_dir=info["project_dir"])
    options = _options(k, target_res_A, references)
    truth = pd.read_csv(info["truth"]).set_index("image_name").reindex(
        p.image_names.astype(str))["state_index"].values.astype(np.int64)
    return prepare(p, options), truth


def _noise(acc, fallback):
    return np.where(acc.noise_count > 0, acc.noise / np.maximum(acc.noise_count, 1), fallback)


def true_map_paths(info: dict, state_names) -> list:
    """The simulation's true maps (``true_<state>.mrc`` beside the particles)."""
    data = os.path.dirname(info["star"])
    return [os.path.join(data, f"true_{s}.mrc") for s in state_names]


def true_map_estep(pr, truth: np.ndarray) -> float:
    """ARI of the engine's E-step against the true maps (``pr`` prepared with them as
    references; noise measured against them)."""
    from hetclass.em import run_pass
    from hetclass.engine import scale_references
    ws, active = pr.workspace, np.ones(len(truth), bool)
    log_prior = np.log(np.bincount(truth) / truth.size)
    refs = scale_references(pr, pr.references, active, pr.data_power) * pr.solvent_mask
    pair = np.stack([refs, refs]).astype(np.float32)
    acc, _, _ = run_pass(ws, pair, pr.data_power, log_prior, active, False)
    _, post, _ = run_pass(ws, pair, _noise(acc, pr.data_power), log_prior, active, False)
    return _ari(truth, post.argmax(1))


def difference_region(true_maps: np.ndarray, solvent_mask: np.ndarray,
                      fraction: float = 0.1) -> np.ndarray:
    """(b, b, b) soft mask of where the true maps differ: voxels whose largest deviation
    from the states' mean exceeds ``fraction`` of its maximum, dilated by 2 px, a 3 px
    cosine edge, times the solvent mask (an oracle: no classifier knows it)."""
    from scipy import ndimage

    from hetclass.masks import soft_edge
    dev = np.abs(true_maps - true_maps.mean(0)).max(0)
    core = ndimage.binary_dilation(dev > fraction * dev.max(), iterations=2)
    return (soft_edge(ndimage.distance_transform_edt(~core), 3.0) * solvent_mask
            ).astype(np.float32)


ORACLE_VARIANTS = ("plain", "weighted", "region")


def oracle_label_maps(pr, truth: np.ndarray, folds: int, tau2_fudge: float = 4.0) -> dict:
    """``{variant: ARI}`` when each fold is scored against maps reconstructed from the true
    labels of the other folds (``pr`` prepared with the true maps as references).
    Variants: ``plain`` the maps as solved; ``weighted`` their deviations from the
    consensus weighted as the engine scores them (:func:`hetclass.variability.local_weight`);
    ``region`` the deviations kept only where the true maps differ
    (:func:`difference_region`, the engine's focus-mask path)."""
    from hetclass.em import run_pass
    from hetclass.engine import initial_tau2
    from hetclass.mstep import m_step
    from hetclass.variability import local_weight, weighted_references
    k = len(pr.references)
    region = difference_region(np.asarray(pr.references, dtype=np.float64),
                               np.asarray(pr.solvent_mask))
    ws, active = pr.workspace, np.ones(len(truth), bool)
    fractions = np.bincount(truth, minlength=k) / truth.size
    log_prior = np.log(fractions)
    onehot = np.eye(k)[truth]
    acc, _, _ = run_pass(ws, None, pr.data_power, log_prior, active, False, fixed_weights=onehot)
    ms = m_step(ws, acc, initial_tau2(pr), tau2_fudge,
                pr.solvent_mask, None)
    tau2 = np.maximum(ms.tau2, 0.0)
    full = (np.stack([ms.maps, ms.maps]) * pr.solvent_mask).astype(np.float32)
    acc, _, _ = run_pass(ws, full, pr.data_power, log_prior, active, False)
    sigma2 = _noise(acc, pr.data_power)
    fold = np.random.default_rng(0).integers(0, folds, truth.size)
    labels = {v: np.zeros(truth.size, np.int64) for v in ORACLE_VARIANTS}
    for f in range(folds):
        acc, _, _ = run_pass(ws, None, sigma2, log_prior, active, False,
                             fixed_weights=onehot * (fold != f)[:, None])
        ms = m_step(ws, acc, tau2, tau2_fudge, pr.solvent_mask, None)
        w = local_weight(ms.maps, ms.half_maps, ms.consensus, ms.half_consensus, fractions)
        maps = {"plain": ms.maps, "weighted": weighted_references(ms.maps, ms.consensus, w),
                "region": m_step(ws, acc, tau2, tau2_fudge, pr.solvent_mask, region).maps}
        for v in ORACLE_VARIANTS:
            refs = (np.stack([maps[v], maps[v]]) * pr.solvent_mask).astype(np.float32)
            _, post, _ = run_pass(ws, refs, sigma2, log_prior, fold == f, False)
            labels[v][fold == f] = post[fold == f].argmax(1)
    return {v: _ari(truth, labels[v]) for v in ORACLE_VARIANTS}


def from_truth(info: dict, k: int, target_res_A: float, seed: int) -> dict:
    """ARIs and mean log-likelihoods of the engine started from the true labels and of its
    default fit (step 4)."""
    import dataclasses

    from hetclass import engine
    from hetclass.em import iterate
    from hetclass.explore import exploration_options
    pr, truth = _prepared(info, k, target_res_A)
    options = _options(k, target_res_A, seed=seed)
    active = np.ones(len(truth), bool)
    start = iterate(pr.workspace, engine.labelled_state(pr, options, truth),
                    exploration_options(options), active,
                    pr.solvent_mask, pr.focus_mask, warn_empty=False, polish=False)
    start = dataclasses.replace(start, converged=False, polishing=False, history=[],
                                iteration=0)
    refined = engine.fit(pr, options, state=start)
    default = engine.fit(pr, options)
    return {"truth_hard": _ari(truth, start.labels), "truth_refined": _ari(truth, refined.labels),
            "truth_loglik": float(refined.log_likelihood.mean()),
            "default": _ari(truth, default.labels),
            "default_loglik": float(default.log_likelihood.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="the benchmark's work folder")
    ap.add_argument("--case", required=True)
    ap.add_argument("--target-res", type=float, default=8.0, help="A, for steps 2 and 3")
    ap.add_argument("--limits", default="13.2,8,6.6,0", help="A, for step 1 (0: all)")
    ap.add_argument("--folds", default="2,10", help="comma list, for step 3")
    ap.add_argument("--from-truth", action="store_true", help="step 4 (two classifications)")
    ap.add_argument("--seed", type=int, default=1, help="of the default fit in step 4")
    args = ap.parse_args(argv)
    case = _case(args.case)
    with open(os.path.join(args.workdir, args.case, "data", "case.json")) as fh:
        info = json.load(fh)
    states = case.states()
    from ideal_bench import ideal_state_labels
    *_, sigma = ideal_state_labels(info["star"], info["project_dir"], info["truth"],
                                   list(states.values()), case.populations,
                                   noise_sigma=info.get("noise_sigma"))
    limits = [float(x) for x in args.limits.split(",")]
    for lim, value in ideal_by_resolution(info, list(states.values()), case.populations,
                                          sigma, limits).items():
        print(f"{args.case}: ideal observer, coefficients to {lim or 'the corner'} A: "
              f"ARI {value:.3f}")
    pr, truth = _prepared(info, len(states), args.target_res,
                          true_map_paths(info, list(states)))
    print(f"{args.case}: hetclass E-step with the true maps at {args.target_res} A: "
          f"ARI {true_map_estep(pr, truth):.3f}")
    said = {"plain": "", "weighted": ", deviations weighted as the engine scores them",
            "region": ", deviations only where the true maps differ (oracle region)"}
    for folds in (int(x) for x in args.folds.split(",")):
        for variant, ari in oracle_label_maps(pr, truth, folds).items():
            print(f"{args.case}: maps from the true labels of the other folds ({folds} folds)"
                  f"{said[variant]} at {args.target_res} A: ARI {ari:.3f}")
    if args.from_truth:
        r = from_truth(info, len(states), args.target_res, args.seed)
        print(f"{args.case}: the engine from the true labels: ARI {r['truth_hard']:.3f} after "
              f"the hard phase, {r['truth_refined']:.3f} refined (mean log-likelihood "
              f"{r['truth_loglik']:.3f}); default fit, seed {args.seed}: ARI {r['default']:.3f} "
              f"(mean log-likelihood {r['default_loglik']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
