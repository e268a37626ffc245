"""Accuracy on hard simulated data: hetclass vs RELION vs the ideal observer, same data, same run.

For every case of :mod:`accuracy_cases` (close domain motions, low SNR, pose errors, six
states, junk, a small ligand with a focus mask, a 5 % state, box 128, a box 1.6x the
particle) and every seed:

* the **ideal observer** (:mod:`hetclass.ideal_observer`): each particle classified by its exact
  likelihood under the true states projected at its STAR pose with its CTF, the known noise
  and the true populations -- the physical limit;
* **RELION 3.1** ``relion_refine --skip_align`` with the command of ``shared/docs/accuracy.md``
  (reference from ``relion_reconstruct --ctf``, T = 4, 25 iterations) and ``--random_seed S``;
* **hetclass** ``classify`` at its defaults (``--seed S``; only ``--particle-diameter`` and,
  for the ligand case, ``--focus-mask`` are given).

Prints one table (ARI per seed, best/worst, ARI / ideal, time to result, RELION / hetclass
time ratio) and writes every figure to ``--json``. Data sets, ideal-observer results and
RELION runs are kept in ``--workdir`` and reused when their inputs are unchanged (RELION does
not change between runs of this script); hetclass runs again every time unless ``--reuse``.

Examples::

    python benchmarks/bench_accuracy.py --workdir /work/bench_acc --json acc.json
    python benchmarks/bench_accuracy.py --cases 4close,6states --seeds 1 --no-relion
    python benchmarks/bench_accuracy.py --cases 4close --hetclass-arg=--target-res --hetclass-arg=8
    python benchmarks/bench_accuracy.py --cases 4close --ranks 2     # mpirun -n 2, --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import starfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_cases import Case, get_cases  # noqa: E402
from bench_classify import code_version, mpi_launcher, run_child  # noqa: E402


# ----- data ------------------------------------------------------------------------------------
def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=float)
    os.replace(tmp, path)


def make_data(case: Case, work: str) -> dict:
    """Simulate the case into ``work/data`` (reused when ``case.key()`` is unchanged)."""
    from hetclass.simulate import simulate_dataset
    data = os.path.join(work, "data")
    info_path = os.path.join(data, "case.json")
    info = _read_json(info_path)
    if info is not None and info.get("key") == case.key():
        return info
    shutil.rmtree(data, ignore_errors=True)
    t0 = time.time()
    states = case.states()
    ds = simulate_dataset(data, states, case.populations, n_particles=case.n_particles,
                          box_px=case.box_px, pixel_size_A=case.pixel_size_A, snr=case.snr,
                          seed=1, min_sigma_px=min(1.0, 1.5 / case.pixel_size_A), **case.sim)
    groups = (np.arange(len(states)) if case.truth_groups is None
              else np.asarray(case.truth_groups))
    truth = pd.read_csv(ds.truth_path)
    truth["class_index"] = groups[truth["state_index"].values]
    truth.to_csv(ds.truth_path, index=False)
    mask = None
    if case.focus_mask is not None:
        from hetclass.simulate import _write_map
        mask = os.path.join(data, "focus_mask.mrc")
        _write_map(mask, case.focus_mask(case.box_px, case.pixel_size_A), case.pixel_size_A)
    info = {"key": case.key(), "star": ds.star_path, "truth": ds.truth_path,
            "project_dir": ds.out_dir, "noise_sigma": ds.noise_sigma, "focus_mask": mask,
            "simulate_s": time.time() - t0}
    _write_json(info_path, info)
    return info


def truth_labels(info: dict, image_names) -> np.ndarray:
    truth = pd.read_csv(info["truth"]).set_index("image_name")["class_index"]
    return truth.reindex(np.asarray(image_names, dtype=str)).values.astype(np.int64)


# ----- scores ----------------------------------------------------------------------------------
def scores(true: np.ndarray, pred: np.ndarray) -> Dict[str, float]:
    """ARI, NMI and accuracy after the best one-to-one matching of classes to states."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    t_ids, t = np.unique(true, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    confusion = np.zeros((t_ids.size, p_ids.size))
    np.add.at(confusion, (t, p), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return {"ari": float(adjusted_rand_score(true, pred)),
            "nmi": float(normalized_mutual_info_score(true, pred)),
            "accuracy": float(confusion[rows, cols].sum() / true.size)}


def labels_from_star(path: str) -> pd.DataFrame:
    parts = starfile.read(path, always_dict=True)["particles"]
    return pd.DataFrame({"image": parts["rlnImageName"].astype(str).values,
                         "label": parts["rlnClassNumber"].values.astype(np.int64)})


# ----- the three classifiers -------------------------------------------------------------------
def run_ideal(case: Case, info: dict, work: str) -> Optional[dict]:
    """Ideal-observer scores (cached in ``work/ideal.json``)."""
    if not case.ideal:
        return None
    path = os.path.join(work, "ideal.json")
    cached = _read_json(path)
    if cached is not None and cached.get("key") == case.key():
        return cached
    from ideal_bench import ideal_state_labels
    _, true_state, pred, _ = ideal_state_labels(
        info["star"], info["project_dir"], info["truth"], list(case.states().values()),
        case.populations, noise_sigma=info["noise_sigma"])
    groups = (np.arange(len(case.populations)) if case.truth_groups is None
              else np.asarray(case.truth_groups))
    result = {"key": case.key(), **scores(groups[true_state], groups[pred])}
    _write_json(path, result)
    return result


def relion_command(case: Case, info: dict, out: str, seed: int, threads: int, iters: int):
    ref = os.path.join(out, "ref_all.mrc")
    rec = ["relion_reconstruct", "--i", info["star"], "--o", ref, "--ctf"]
    refine = ["relion_refine", "--i", info["star"], "--o", os.path.join(out, "run"),
              "--ref", ref, "--ini_high", "25", "--ctf_corrected_ref", "--K", str(case.classes),
              "--skip_align", "--tau2_fudge", "4", "--ctf", "--particle_diameter",
              f"{case.diameter_A:g}", "--zero_mask", "--flatten_solvent", "--j", str(threads),
              "--iter", str(iters), "--pad", "2", "--random_seed", str(seed), "--norm",
              "--scale", "--oversampling", "1", "--sym", "C1",
              "--dont_combine_weights_via_disc", "--pool", "30"]
    return rec, refine


def run_relion(case: Case, info: dict, work: str, seed: int, threads: int,
               iters: int) -> Optional[dict]:
    """RELION's scores for one seed (cached in ``work/relion_s<seed>/result.json``)."""
    if shutil.which("relion_refine") is None:
        return None
    out = os.path.join(work, f"relion_s{seed}")
    cached = _read_json(os.path.join(out, "result.json"))
    if cached is not None and cached.get("key") == case.key() and cached.get("iters") == iters:
        return cached
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    rec, refine = relion_command(case, info, out, seed, threads, iters)
    a = run_child(rec, info["project_dir"], os.path.join(out, "reconstruct.log"))
    b = run_child(refine, info["project_dir"], os.path.join(out, "refine.log"))
    last = sorted(glob.glob(os.path.join(out, "run_it[0-9][0-9][0-9]_data.star")))[-1]
    lab = labels_from_star(last)
    result = {"key": case.key(), "iters": iters, "seed": seed,
              "time_to_result_s": a["wall_s"] + b["wall_s"],
              "load": [a["load_before"], b["load_after"]],
              "command": " ".join(rec) + " && " + " ".join(refine),
              **scores(truth_labels(info, lab["image"]), lab["label"].values)}
    _write_json(os.path.join(out, "result.json"), result)
    return result


def run_hetclass(case: Case, info: dict, work: str, seed: int, threads: int, tag: str,
                 extra: List[str], reuse: bool, ranks: int = 1) -> dict:
    """hetclass's scores for one seed; ``ranks`` > 1 runs it under ``mpirun -n ranks`` with
    ``--threads`` divided between the ranks (the same cores; the labels are the same as one
    process's whatever the rank count)."""
    if ranks > 1:
        tag = f"{tag}_mpi{ranks}"
    out = os.path.join(work, f"hetclass_{tag}_s{seed}")
    if reuse:
        cached = _read_json(os.path.join(out, "result.json"))
        if cached is not None and cached.get("key") == case.key():
            return cached
    shutil.rmtree(out, ignore_errors=True)
    launcher, threads = mpi_launcher(ranks, threads)
    cmd = launcher + [sys.executable, "-m", "hetclass_standalone.main", "classify",
                      "--particles", info["star"], "--classes", str(case.classes), "--out", out,
                      "--particle-diameter", f"{case.diameter_A:g}", "--seed", str(seed),
                      "--threads", str(threads), "--quiet"]
    if info.get("focus_mask"):
        cmd += ["--focus-mask", info["focus_mask"]]
    cmd += list(extra)
    version = code_version()
    child = run_child(cmd, info["project_dir"], os.path.join(work, f"hetclass_{tag}_s{seed}.log"))
    lab = labels_from_star(os.path.join(out, "run_data.star"))
    with open(os.path.join(out, "run.json")) as fh:
        run = json.load(fh)
    result = {"key": case.key(), "seed": seed, "time_to_result_s": child["wall_s"],
              "load": [child["load_before"], child["load_after"]], "command": " ".join(cmd),
              "code_version": version, "iterations": len(run.get("iterations", [])),
              "target_resolution_A": run.get("target_resolution_A"),
              **scores(truth_labels(info, lab["image"]), lab["label"].values)}
    _write_json(os.path.join(out, "result.json"), result)
    return result


# ----- report ----------------------------------------------------------------------------------
def _fmt(values, key="ari"):
    return " / ".join(f"{v[key]:.3f}" for v in values) if values else "-"


def summarise(case: Case, ideal, relion: List[dict], het: List[dict]) -> dict:
    row = {"case": case.name, "describe": case.describe, "K": case.classes,
           "n": case.n_particles, "box": case.box_px, "snr": case.snr,
           "ideal": ideal, "relion": relion, "hetclass": het}
    if relion:
        row["relion_best"] = max(r["ari"] for r in relion)
        row["relion_worst"] = min(r["ari"] for r in relion)
        row["relion_time_s"] = float(np.mean([r["time_to_result_s"] for r in relion]))
    row["hetclass_worst"] = min(h["ari"] for h in het)
    row["hetclass_best"] = max(h["ari"] for h in het)
    row["hetclass_time_s"] = float(np.mean([h["time_to_result_s"] for h in het]))
    if relion:
        row["margin_vs_relion_best"] = row["hetclass_worst"] - row["relion_best"]
        row["speedup"] = row["relion_time_s"] / row["hetclass_time_s"]
    if ideal:
        row["hetclass_worst_over_ideal"] = row["hetclass_worst"] / max(ideal["ari"], 1e-9)
    return row


def format_table(rows: List[dict]) -> str:
    head = ["case", "K", "ideal", "RELION ARI per seed", "hetclass ARI per seed",
            "worst het - best REL", "worst het / ideal", "t RELION s", "t het s", "speed-up"]
    lines = []
    for r in rows:
        ideal = r.get("ideal")
        lines.append([
            r["case"], str(r["K"]), f"{ideal['ari']:.3f}" if ideal else "-",
            _fmt(r["relion"]), _fmt(r["hetclass"]),
            f"{r['margin_vs_relion_best']:+.3f}" if "margin_vs_relion_best" in r else "-",
            f"{r['hetclass_worst_over_ideal']:.3f}" if "hetclass_worst_over_ideal" in r else "-",
            f"{r['relion_time_s']:.0f}" if "relion_time_s" in r else "-",
            f"{r['hetclass_time_s']:.1f}",
            f"{r['speedup']:.1f}x" if "speedup" in r else "-"])
    widths = [max([len(h), *(len(x[i]) for x in lines)]) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths)) for x in lines]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="", help="comma list (default: all)")
    p.add_argument("--seeds", default="1,2,3", help="comma list of seeds (default 1,2,3)")
    p.add_argument("--workdir", default="bench_accuracy_work")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-relion", action="store_true")
    p.add_argument("--relion-iter", type=int, default=25)
    p.add_argument("--hetclass-arg", action="append", default=[],
                   help="extra argument for hetclass classify (repeat)")
    p.add_argument("--tag", default="default", help="names the hetclass run folders")
    p.add_argument("--ranks", type=int, default=1,
                   help="run hetclass under mpirun -n RANKS with --threads divided between "
                        "the ranks (same cores as RELION's --j THREADS; same labels)")
    p.add_argument("--reuse", action="store_true", help="reuse earlier hetclass runs of this tag")
    p.add_argument("--ideal-only", action="store_true",
                   help="only simulate the data and score the ideal observer")
    p.add_argument("--json", help="write every figure here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cases = get_cases([c for c in args.cases.split(",") if c])
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows = []
    for case in cases:
        work = os.path.join(os.path.abspath(args.workdir), case.name)
        os.makedirs(work, exist_ok=True)
        info = make_data(case, work)
        ideal = run_ideal(case, info, work)
        if args.ideal_only:
            print(f"{case.name}: ideal observer {ideal}", flush=True)
            continue
        relion = [] if args.no_relion else [
            r for r in (run_relion(case, info, work, s, args.threads, args.relion_iter)
                        for s in seeds) if r is not None]
        het = [run_hetclass(case, info, work, s, args.threads, args.tag, args.hetclass_arg,
                            args.reuse, args.ranks) for s in seeds]
        rows.append(summarise(case, ideal, relion, het))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(f"bench_accuracy {datetime.date.today()} {code_version()} "
          f"load {os.getloadavg()[0]:.1f}")
    print(format_table(rows))
    if args.json:
        _write_json(args.json, {"date": str(datetime.date.today()), "version": code_version(),
                                "argv": sys.argv[1:], "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
