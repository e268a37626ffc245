"""Where one classification's time goes: each EM run inside ``engine.fit``, timed.

A fit is a chain of EM runs (``hetclass.em.iterate``): the exploration starts (hard
assignment), the merge-and-split moves' two-class split fits (hard, on one class's
particles) and their moved refinements (hard, on every particle), then the soft refinement.
This script runs one fit in-process and prints, per EM run, its kind, particles,
iterations, seconds and the % of labels changed at each iteration, then the seconds per
kind. With ``--starts 1`` it is one stability replicate (``REPLICATE_STARTS``).

Example (one K = 5 replicate of the stability suite's ``four`` case, one thread)::

    python benchmarks/profile_fit.py --data /work/bench_stab/four/data --classes 5 --starts 1 \
        --seed 3 --particle-diameter 150
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

from hetclass import em, engine, explore, split_merge
from hetclass.options import ClassifyOptions
from hetclass.pipeline import load_particles


def _kind(hard: bool, n: int, n_explored: int, starts_done: bool) -> str:
    """Which part of the fit an EM run is (from its assignment mode and particle count:
    starts and moved refinements run on the ``n_explored`` particles of exploration, split
    fits on one class's)."""
    if not hard:
        return "soft refinement"
    if n < n_explored:
        return "move: split fit"
    return "move: refinement" if starts_done else "start"


def profile(prepared, options: ClassifyOptions, seed: int):
    """``(rows, seconds)``: one tuple per EM run (hard, particles, iterations, seconds,
    changed %), and the whole fit's seconds. ``em.iterate`` is wrapped where the fit calls
    it and restored afterwards."""
    rows = []
    original = em.iterate

    def timed(ws, state, opts, active, *args, **kwargs):
        t0 = time.perf_counter()
        out = original(ws, state, opts, active, *args, **kwargs)
        changed = [h["changed_pct"] for h in out.history]
        rows.append((opts.hard, int(active.sum()), out.iteration, time.perf_counter() - t0, changed))
        return out

    modules = (engine, explore, split_merge)
    try:
        for m in modules:
            m.iterate = timed
        t0 = time.perf_counter()
        engine.fit(prepared, options, seed=seed)
        return rows, time.perf_counter() - t0
    finally:
        for m in modules:
            m.iterate = original


def report(rows, seconds: float, n_explored: int, n_starts: int) -> None:
    """Print one line per EM run and the seconds per kind."""
    per_kind: dict = defaultdict(float)
    starts = 0
    for hard, n, iterations, s, changed in rows:
        kind = _kind(hard, n, n_explored, starts >= n_starts)
        starts += kind == "start"
        per_kind[kind] += s
        trace = " ".join(f"{c:.1f}" for c in changed)
        print(f"{kind:17s} n={n:6d} it={iterations:2d} {s:7.2f} s   changed %: {trace}")
    print("seconds per kind: " + ", ".join(f"{k} {v:.1f}" for k, v in per_kind.items())
          + f"; whole fit {seconds:.1f} (outside EM runs {seconds - sum(per_kind.values()):.1f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with particles.star (a benchmark's data/)")
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--particle-diameter", type=float, default=None, help="A")
    p.add_argument("--target-res", type=float, default=None, help="A")
    args = p.parse_args()
    particles = load_particles(os.path.join(args.data, "particles.star"), project_dir=args.data)
    options = ClassifyOptions(classes=args.classes, n_init=args.starts, threads=args.threads,
                              seed=args.seed, particle_diameter_A=args.particle_diameter,
                              target_res_A=args.target_res)
    prepared = engine.prepare(particles, options)
    n_explored = min(len(prepared.data), explore.explore_size(args.classes))
    rows, seconds = profile(prepared, options, args.seed)
    report(rows, seconds, n_explored, args.starts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
