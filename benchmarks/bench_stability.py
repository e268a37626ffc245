"""Does ``hetclass stability`` tell the truth? Verdict, K, consensus ARI, p-values, time.

A suite of simulated cases built with the project's simulator (:mod:`hetclass.simulate`,
the procedural phantom of :mod:`hetclass.phantoms` sharpened to 1.5 A pseudo-atoms as in
``accuracy_cases.py``), small enough to run on a workstation: 2000-6000 particles, box 48 of
3.3 A; ``homogeneous_72``, ``4close`` and ``6states`` are the accuracy suite's data (box 72 of
2.2 A, 8000 particles, SNR 0.25; the same simulation as ``bench_accuracy.py``'s cases of those
names, so its RELION runs are on the same images), where states are closer, and
``continuous_72`` / ``mixed_72`` / ``two_72`` / ``junk_72`` / ``hierarchy_72`` the other rows
of the issue's table at that size. Each case is
classified the way a user would: ``hetclass stability --classes <the range a user would
type>`` at the defaults (R = 5), as a child process. The table gives the
truth, the typed range, the verdict, the recommended K, the consensus ARI against the truth
(where the truth is discrete), the heterogeneity p-value, the scan's extension and the
time. The ``*_pose`` cases give the STAR file poses that differ from the ones the images were
made with (``hetclass.simulate.perturb_poses``: a median 3 deg rotation about a random axis
and 1 A shift), as a refinement's errors would; the ideal observer uses the STAR poses too.

``--false-splits N`` adds N independent one-state data sets (different simulation seeds,
2000 particles; ``--false-snr``) and reports how many are not called homogeneous and
whether their heterogeneity p-values look uniform (Kolmogorov-Smirnov); ``--false-from I``
starts at set I (simulation seed 100 + I), so a later run adds sets to an earlier one's
(``--json`` of both runs; the summary covers the sets of the run).

``--ratio`` measures the cost bar: ``stability --classes 1-6`` (R = 5) against one default
``classify`` at K = 4, on the same data, one after the other.

Data sets are simulated into ``--workdir`` once and reused; results go to ``--json``.

Examples::

    python benchmarks/bench_stability.py --workdir /tmp/bench_stab --json stab.json
    python benchmarks/bench_stability.py --cases two,continuous --false-splits 0
    python benchmarks/bench_stability.py --cases none --false-splits 10
    python benchmarks/bench_stability.py --cases four,mixed --false-splits 0 --sim-seed 11
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_cases import SIGMA_A, Y_AXIS, Z_AXIS, _dm, four_close, junk_states, six_states  # noqa: E402
from bench_classify import code_version, run_child  # noqa: E402

BOX, PSIZE = 48, 3.3
# STAR poses off as a refinement leaves them (median rotation, median shift): the *_pose cases
POSE_ERRORS = {"pose_error_deg": 3.0, "shift_error_A": 1.0}
# the geometry, size and SNR of the accuracy suite's cases (accuracy_cases.Case defaults)
ACCURACY_DATA = {"box_px": 72, "pixel_size_A": 2.2, "n": 8000, "snr": 0.25}


@dataclass
class Case:
    """One suite case: what to simulate, the truth and the K range a user would type."""

    name: str
    describe: str
    truth: str                       # homogeneous | discrete | continuous | mixed | leaves
    true_k: Optional[int]
    typed: str                       # --classes as a user would type it
    states: Callable[[], Dict[str, tuple]]
    populations: Sequence[float]
    n: int = 4000
    snr: float = 0.1
    seed: int = 1
    truth_groups: Optional[Sequence[int]] = None     # state -> true class (None: identity)
    continuous_states: Sequence[int] = ()             # states forming the continuous part
    command: str = "stability"
    extra: Sequence[str] = field(default_factory=tuple)
    pose_error_deg: float = 0.0      # median error of the STAR poses (simulate.perturb_poses)
    shift_error_A: float = 0.0       # median error of the STAR origins
    box_px: int = BOX
    pixel_size_A: float = PSIZE

    def key(self) -> dict:
        key = {"name": self.name, "pops": [round(float(p), 6) for p in self.populations],
               "n": self.n, "snr": self.snr, "seed": self.seed, "box": self.box_px,
               "psize": self.pixel_size_A, "version": 2}
        if self.pose_error_deg or self.shift_error_A:
            key["pose_error"] = [self.pose_error_deg, self.shift_error_A]
        return key


def _hinge_path(angles_deg) -> Dict[str, tuple]:
    """A closure path: the domain rotated about the hinge by each angle (1.5 A atoms)."""
    return {f"hinge{a:05.1f}": _dm([(Y_AXIS, float(a))]) for a in angles_deg}


def _continuum(n_steps: int = 31, span_deg: float = 24.0):
    angles = np.linspace(0.0, span_deg, n_steps)
    return _hinge_path(angles)


def _mixed() -> Dict[str, tuple]:
    states = _continuum()
    states["noB"] = _dm((), ("B",))
    return states


def _six() -> Dict[str, tuple]:
    out = {}
    for comp, remove in (("full", ()), ("noD", ("D",)), ("noB", ("B",))):
        out[f"{comp}_rest"] = _dm((), remove)
        out[f"{comp}_closed"] = _dm([(Y_AXIS, 12.0)], remove)
    return out


def _four() -> Dict[str, tuple]:
    """Four domain positions, 12 deg apart about two axes."""
    return {"rest": _dm(), "closed": _dm([(Y_AXIS, 12.0)]), "swung": _dm([(Z_AXIS, 12.0)]),
            "opened": _dm([(Y_AXIS, -12.0)])}


def _three(closed_deg: float = 20.0) -> Dict[str, tuple]:
    """rest, closed by ``closed_deg``, without subunit B."""
    return {"rest": _dm(), "closed": _dm([(Y_AXIS, closed_deg)]), "noB": _dm((), ("B",))}


def _junk() -> Dict[str, tuple]:
    states = junk_states(24)
    states["closed"] = _dm([(Y_AXIS, 16.0)])
    return states


def all_cases() -> List[Case]:
    n_cont = 31
    cont_pops = [1.0 / n_cont] * n_cont
    mixed_pops = [0.6 / n_cont] * n_cont + [0.4]
    junk_pops = [0.45, 0.40] + [0.15 / 24] * 24
    return [
        Case("homogeneous", "one state, SNR 0.1", "homogeneous", 1, "1-4",
             lambda: {"rest": _dm()}, [1.0]),
        Case("homogeneous_snr005", "one state, SNR 0.05", "homogeneous", 1, "1-4",
             lambda: {"rest": _dm()}, [1.0], snr=0.05),
        Case("homogeneous_snr002", "one state, SNR 0.02", "homogeneous", 1, "1-4",
             lambda: {"rest": _dm()}, [1.0], snr=0.02, n=6000),
        Case("homogeneous_pose", "one state, SNR 0.05, STAR poses off by 3 deg / 1 A (median)",
             "homogeneous", 1, "1-4", lambda: {"rest": _dm()}, [1.0], snr=0.05, **POSE_ERRORS),
        Case("homogeneous_pose_8k", "homogeneous_pose with 8000 particles", "homogeneous", 1,
             "1-4", lambda: {"rest": _dm()}, [1.0], n=8000, snr=0.05, seed=2, **POSE_ERRORS),
        Case("two_far", "2 states: domain closed by 20 deg, 50/50", "discrete", 2, "1-4",
             lambda: {"rest": _dm(), "closed": _dm([(Y_AXIS, 20.0)])}, [0.5, 0.5]),
        Case("two_near", "2 states: subunit B present / absent, 60/40, SNR 0.05",
             "discrete", 2, "1-4", lambda: {"full": _dm(), "noB": _dm((), ("B",))},
             [0.6, 0.4], snr=0.05),
        Case("junk", "2 states (16 deg) + 15 % junk of 24 shapes", "discrete", 3, "1-4",
             _junk, junk_pops, truth_groups=[0, 1] + [2] * 24),
        Case("three", "3 states: rest, closed 20 deg, without subunit B", "discrete", 3, "1-4",
             _three, [0.4, 0.35, 0.25]),
        Case("three_pose", "three, STAR poses off by 3 deg / 1 A (median)", "discrete", 3,
             "1-4", _three, [0.4, 0.35, 0.25], **POSE_ERRORS),
        Case("four", "4 domain positions 12 deg apart, 40/30/20/10 %", "discrete", 4, "1-5",
             _four, [0.4, 0.3, 0.2, 0.1], n=5000, snr=0.15),
        Case("four_pose", "four, STAR poses off by 3 deg / 1 A (median)", "discrete", 4, "1-5",
             _four, [0.4, 0.3, 0.2, 0.1], n=5000, snr=0.15, **POSE_ERRORS),
        Case("six", "3 compositions x 2 domain positions (12 deg), 25...10 %", "discrete", 6,
             "1-8", _six, [0.25, 0.20, 0.17, 0.15, 0.13, 0.10], n=6000, snr=0.15),
        Case("continuous", "closure path 0-24 deg, uniform", "continuous", None, "1-4",
             _continuum, cont_pops),
        Case("continuous_pose", "continuous, STAR poses off by 3 deg / 1 A (median)",
             "continuous", None, "1-4", _continuum, cont_pops, **POSE_ERRORS),
        Case("mixed", "60 % on the closure path 0-24 deg + 40 % without subunit B", "mixed",
             None, "1-4", _mixed, mixed_pops, truth_groups=[0] * n_cont + [1],
             continuous_states=range(n_cont)),
        Case("hierarchy", "exhaustive: rest / closed 20 deg / without subunit B", "leaves", 3,
             "-", _three, [0.4, 0.35, 0.25], command="exhaustive"),
        # the accuracy suite's data (accuracy_cases.py: box 72 of 2.2 A, 8000 particles,
        # SNR 0.25), where states are closer than above: the data the table came from
        Case("homogeneous_72", "one state, box 72 of 2.2 A, 8000 particles, SNR 0.25",
             "homogeneous", 1, "1-4", lambda: {"rest": _dm()}, [1.0], **ACCURACY_DATA),
        Case("4close", "4 domain positions 6 deg apart, 40/30/20/10 %, box 72 of 2.2 A",
             "discrete", 4, "1-5", four_close, [0.4, 0.3, 0.2, 0.1], **ACCURACY_DATA),
        Case("6states", "3 compositions x 2 domain positions (8 deg), 25...10 %, box 72 of "
             "2.2 A", "discrete", 6, "1-8", six_states, [0.25, 0.20, 0.17, 0.15, 0.13, 0.10],
             **ACCURACY_DATA),
        Case("continuous_72", "continuous at box 72 of 2.2 A, 8000 particles, SNR 0.25",
             "continuous", None, "1-4", _continuum, cont_pops, **ACCURACY_DATA),
        Case("mixed_72", "mixed at box 72 of 2.2 A, 8000 particles, SNR 0.25", "mixed", None,
             "1-4", _mixed, mixed_pops, truth_groups=[0] * n_cont + [1],
             continuous_states=range(n_cont), **ACCURACY_DATA),
        Case("two_72", "2 domain positions 6 deg apart, 60/40, box 72 of 2.2 A", "discrete", 2,
             "1-4", lambda: _hinge_path([0.0, 6.0]), [0.6, 0.4], **ACCURACY_DATA),
        Case("junk_72", "2 states (10 deg) + 15 % junk of 24 shapes, box 72 of 2.2 A",
             "discrete", 3, "1-4", lambda: junk_states(24), junk_pops,
             truth_groups=[0, 1] + [2] * 24, **ACCURACY_DATA),
        Case("hierarchy_72", "exhaustive: rest / closed 8 deg / without subunit B, box 72 of "
             "2.2 A", "leaves", 3, "-", lambda: _three(8.0), [0.4, 0.35, 0.25],
             command="exhaustive", **ACCURACY_DATA),
    ]


def homogeneous_set(index: int, snr: float, n: int = 2000) -> Case:
    return Case(f"null{index:02d}", f"one state, SNR {snr:g}, simulation seed {100 + index}",
                "homogeneous", 1, "1-4", lambda: {"rest": _dm()}, [1.0], n=n, snr=snr,
                seed=100 + index)


# ----- data ----------------------------------------------------------------------------------
def make_data(case: Case, work: str) -> dict:
    """Simulate ``case`` into ``work/data`` (reused while ``case.key()`` is unchanged)."""
    from hetclass.simulate import simulate_dataset
    data = os.path.join(work, "data")
    info_path = os.path.join(data, "case.json")
    if os.path.exists(info_path):
        with open(info_path) as fh:
            info = json.load(fh)
        if info.get("key") == case.key():
            return info
    shutil.rmtree(data, ignore_errors=True)
    states = case.states()
    ds = simulate_dataset(data, states, case.populations, n_particles=case.n,
                          box_px=case.box_px, pixel_size_A=case.pixel_size_A, snr=case.snr,
                          seed=case.seed, min_sigma_px=min(1.0, SIGMA_A / case.pixel_size_A),
                          pose_error_deg=case.pose_error_deg, shift_error_A=case.shift_error_A)
    info = {"key": case.key(), "star": ds.star_path, "truth": ds.truth_path,
            "project_dir": ds.out_dir}
    with open(info_path, "w") as fh:
        json.dump(info, fh)
    return info


def truth_of(case: Case, info: dict, image_names) -> pd.DataFrame:
    t = pd.read_csv(info["truth"]).set_index("image_name").reindex(
        np.asarray(image_names, dtype=str))
    groups = (np.arange(len(case.populations)) if case.truth_groups is None
              else np.asarray(case.truth_groups))
    state = t["state_index"].values.astype(np.int64)
    return pd.DataFrame({"state": state, "class": groups[state]})


def run_ideal(case: Case, info: dict, work: str) -> Optional[float]:
    """The ideal observer's ARI against the true classes (cached in ``work/ideal.json``);
    None where the truth is not a set of discrete classes."""
    if case.truth not in ("discrete", "leaves"):
        return None
    path = os.path.join(work, "ideal.json")
    if os.path.exists(path):
        with open(path) as fh:
            cached = json.load(fh)
        if cached.get("key") == case.key():
            return cached["ari"]
    from ideal_bench import ideal_state_labels
    _, true_state, pred, sigma = ideal_state_labels(
        info["star"], info["project_dir"], info["truth"], list(case.states().values()),
        case.populations)
    groups = (np.arange(len(case.populations)) if case.truth_groups is None
              else np.asarray(case.truth_groups))
    value = round(ari(groups[true_state], groups[pred]), 3)
    with open(path, "w") as fh:
        json.dump({"key": case.key(), "ari": value, "noise_sigma_measured": sigma}, fh)
    return value


def ari(a, b) -> float:
    from hetclass.stability.scores import adjusted_rand_index
    return float(adjusted_rand_index(np.asarray(a), np.asarray(b)))


# ----- runs ----------------------------------------------------------------------------------
def run_case(case: Case, info: dict, work: str, replicates: int, jobs: Optional[int],
             extra: Sequence[str]) -> dict:
    import starfile
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "hetclass_standalone.main", case.command,
           "--particles", info["star"], "--project-dir", info["project_dir"],
           "--particle-diameter", "150", "--replicates", str(replicates), "--out", out,
           "--quiet", *case.extra, *extra]
    if case.command == "stability":
        cmd += ["--classes", case.typed]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    child = run_child(cmd, work, os.path.join(work, "run.log"))
    row = {"case": case.name, "describe": case.describe, "truth": case.truth,
           "true_k": case.true_k, "typed": case.typed, "n": case.n, "snr": case.snr,
           "wall_s": round(child["wall_s"], 1), "cpu_s": round(child["cpu_s"], 1),
           "load": [round(child["load_before"], 2), round(child["load_after"], 2)],
           "command": " ".join(cmd)}
    if case.command == "exhaustive":
        with open(os.path.join(out, "tree.json")) as fh:
            tree = json.load(fh)
        star = starfile.read(os.path.join(out, "leaves_data.star"), always_dict=True)["particles"]
        truth = truth_of(case, info, star["rlnImageName"])
        again_path = os.path.join(out, "leaves_reassigned_data.star")
        if os.path.exists(again_path):      # the leaves' ARI after reassignment (the final sets)
            again = starfile.read(again_path, always_dict=True)["particles"]
            row["tree_leaves_ari"] = round(ari(star["rlnClassNumber"], truth["class"]), 3)
            star = again
        row.update({"verdict": f"{len(tree['leaves'])} leaves", "k": len(tree["leaves"]),
                    "consensus_ari": round(ari(star["rlnClassNumber"], truth["class"]), 3),
                    "leaves": [(lf["id"], lf["n_particles"], lf["reason"])
                               for lf in tree["leaves"]],
                    "right": len(tree["leaves"]) == case.true_k})
        return row
    with open(os.path.join(out, "summary.json")) as fh:
        summary = json.load(fh)
    star = starfile.read(os.path.join(out, "consensus_data.star"), always_dict=True)["particles"]
    truth = truth_of(case, info, star["rlnImageName"])
    k = summary["consensus_k"]
    labels = star["rlnClassNumber"].values
    row.update({
        "verdict": summary["heterogeneity"], "k": summary["recommended_classes"],
        "consensus_ari": round(ari(labels, truth["class"]), 3) if k > 1 else None,
        "p_heterogeneity": (summary.get("p_values") or {}).get("heterogeneity"),
        "p_values": summary.get("p_values"), "scan": summary.get("scan"),
        "suggestions": [s["why"] for s in summary.get("suggestions") or []],
        "reasons": summary["reasons"], "timings_s": summary.get("timings_s")})
    if summary.get("continuous_particles"):
        cont = starfile.read(os.path.join(out, "continuous_particles.star"),
                             always_dict=True)["particles"]
        t = truth_of(case, info, cont["rlnImageName"])
        row["continuous_part"] = {"particles": len(cont), "fraction_truly_continuous":
                                  round(float(np.isin(t["state"], list(case.continuous_states)).mean()), 3)
                                  if case.continuous_states else None}
    right = summary["heterogeneity"] == case.truth
    if case.truth == "discrete":
        right = right and summary["recommended_classes"] == case.true_k
    row["right"] = bool(right)
    return row


def run_ratio(case: Case, info: dict, work: str, jobs: Optional[int]) -> dict:
    """stability --classes 1-6 (R = 5) against one default classify --classes 4."""
    out_c = os.path.join(work, "ratio_classify")
    out_s = os.path.join(work, "ratio_stability")
    for d in (out_c, out_s):
        shutil.rmtree(d, ignore_errors=True)
    base = [sys.executable, "-m", "hetclass_standalone.main"]
    common = ["--particles", info["star"], "--project-dir", info["project_dir"],
              "--particle-diameter", "150", "--quiet"]
    c = run_child(base + ["classify", "--classes", "4", "--out", out_c] + common, work,
                  os.path.join(work, "ratio_classify.log"))
    s_cmd = base + ["stability", "--classes", "1-6", "--out", out_s] + common
    if jobs:
        s_cmd += ["--jobs", str(jobs)]
    s = run_child(s_cmd, work, os.path.join(work, "ratio_stability.log"))
    return {"case": case.name, "classify_wall_s": round(c["wall_s"], 1),
            "classify_cpu_s": round(c["cpu_s"], 1), "stability_wall_s": round(s["wall_s"], 1),
            "stability_cpu_s": round(s["cpu_s"], 1),
            "wall_ratio": round(s["wall_s"] / c["wall_s"], 2),
            "cpu_ratio": round(s["cpu_s"] / c["cpu_s"], 2),
            "load": [round(c["load_before"], 2), round(s["load_after"], 2)],
            "commands": [" ".join(base + ["classify", "--classes", "4"] + common),
                         " ".join(s_cmd)]}


# ----- report --------------------------------------------------------------------------------
def _p(x) -> str:
    return "-" if x is None else (f"{x:.2g}" if x >= 1e-4 else "<1e-4")


def print_table(rows: List[dict]) -> None:
    head = (f"{'case':20s} {'truth':12s} {'typed':5s} {'verdict':12s} {'K':>2s} {'ARI':>5s} "
            f"{'ideal':>5s} {'p(het)':>7s} {'scan':>6s} {'wall s':>7s} {'cpu s':>7s}  right")
    print(head)
    print("-" * len(head))
    for r in rows:
        scan = r.get("scan") or {}
        ext = f"->{scan['extended_to']}" if scan.get("extended_to") else ""
        truth = r["truth"] + (f" {r['true_k']}" if r["truth"] in ("discrete", "leaves") else "")
        a = "-" if r.get("consensus_ari") is None else f"{r['consensus_ari']:.3f}"
        ideal = "-" if r.get("ideal_ari") is None else f"{r['ideal_ari']:.3f}"
        print(f"{r['case']:20s} {truth:12s} {r['typed']:5s} {r['verdict']:12s} {r['k']:>2} "
              f"{a:>5s} {ideal:>5s} {_p(r.get('p_heterogeneity')):>7s} {ext:>6s} {r['wall_s']:>7.0f} "
              f"{r['cpu_s']:>7.0f}  {'yes' if r['right'] else 'NO'}")


def false_split_summary(rows: List[dict]) -> dict:
    from scipy import stats
    ps = [r["p_heterogeneity"] for r in rows if r.get("p_heterogeneity") is not None]
    wrong = [r["case"] for r in rows if r["verdict"] != "homogeneous"]
    out = {"sets": len(rows), "not_homogeneous": len(wrong), "which": wrong,
           "false_split_rate": round(len(wrong) / max(len(rows), 1), 3),
           "p_values": [round(p, 4) for p in ps]}
    if len(ps) >= 5:
        out["ks_uniform_p"] = round(float(stats.kstest(ps, "uniform").pvalue), 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/bench_stability")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--cases", default="all", help="comma-separated names, all, or none")
    ap.add_argument("--replicates", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--false-splits", type=int, default=10, metavar="N",
                    help="independent one-state sets for the false-split rate (default 10)")
    ap.add_argument("--false-from", type=int, default=0, metavar="I",
                    help="index of the first one-state set (simulation seed 100 + I)")
    ap.add_argument("--false-snr", type=float, default=0.1)
    ap.add_argument("--snr", type=float, default=None,
                    help="simulate the --cases at this SNR instead of their own (the moonshot's "
                         "0.01); their work folders get the suffix _snr<value>")
    ap.add_argument("--sim-seed", type=int, default=None, metavar="S",
                    help="simulate the --cases with simulation seed S instead of their own (a "
                         "new draw of the same case: particles, noise, CTFs, pose errors); "
                         "their work folders get the suffix _seed<S>")
    ap.add_argument("--ratio", action="store_true", help="measure the 8x cost bar")
    ap.add_argument("--ideal-only", action="store_true",
                    help="only simulate the cases and score the ideal observer")
    ap.add_argument("--arg", action="append", default=[], help="extra argument for hetclass")
    args = ap.parse_args(argv)
    cases = {c.name: c for c in all_cases()}
    names = (list(cases) if args.cases == "all" else [] if args.cases == "none"
             else args.cases.split(","))
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {sorted(cases)}")
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "code": code_version(), "cases": [], "false_splits": None, "ratio": None}

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1, default=float)

    for name in names:
        case = cases[name]
        if args.snr is not None:
            case = replace(case, name=f"{name}_snr{args.snr:g}", snr=args.snr)
        if args.sim_seed is not None:
            case = replace(case, name=f"{case.name}_seed{args.sim_seed}", seed=args.sim_seed)
        work = os.path.join(args.workdir, case.name)
        os.makedirs(work, exist_ok=True)
        info = make_data(case, work)
        if args.ideal_only:
            print(f"{name:20s} ideal ARI {run_ideal(case, info, work)}")
            continue
        row = run_case(case, info, work, args.replicates, args.jobs, args.arg)
        row["ideal_ari"] = run_ideal(case, info, work)
        result["cases"].append(row)
        print_table([row])
        save()
    nulls = []
    for i in range(args.false_from, args.false_from + args.false_splits):
        case = homogeneous_set(i, args.false_snr)
        work = os.path.join(args.workdir, case.name)
        os.makedirs(work, exist_ok=True)
        row = run_case(case, make_data(case, work), work, args.replicates, args.jobs, args.arg)
        nulls.append(row)
        print_table([row])
        result["false_splits"] = {**false_split_summary(nulls), "rows": nulls}
        save()
    if args.ratio:
        case = cases["four"]
        work = os.path.join(args.workdir, case.name)
        os.makedirs(work, exist_ok=True)
        result["ratio"] = run_ratio(case, make_data(case, work), work, args.jobs)
        save()
    print(f"\n{result['code']}, {result['date']}")
    print_table(result["cases"])
    if result["false_splits"]:
        fs = {k: v for k, v in result["false_splits"].items() if k != "rows"}
        print("false splits:", json.dumps(fs))
    if result["ratio"]:
        print("cost:", json.dumps(result["ratio"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
