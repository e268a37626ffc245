"""Terminal progress of the ``hetclass`` commands, and the closing class table.

The core reports through ``progress(event, **info)`` (see :mod:`hetclass.pipeline`):
``batch`` (done/total of a stage), ``iteration`` (it, max_iter, changed_pct,
class_fractions; ``phase="explore"`` with ``start``/``n_starts`` during exploration),
``explore_start`` (start, n_starts), ``explore_done`` (selected, scores), ``message`` (text); the replicate
code adds ``k`` and ``replicate`` to the engine's events and sends ``replicate`` (one
finished), ``k_done``, ``node_start`` and ``node`` (exhaustive splitting).

On a terminal a tqdm bar shows the work with elapsed and estimated remaining time; milestones
(iterations of one classification, exploration starts, finished replicates, tree nodes) are printed as
lines above it. Elsewhere (a log file, a pipe) there is no bar: milestones are printed one
line each, and long replicate work adds a status line with the estimate every
``status_interval_s`` seconds. ``--quiet`` passes no callback at all.
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, TextIO, Tuple

import numpy as np
from tqdm import tqdm

from hetclass.reports.labels import resolution_text

BAR_FORMAT = "{desc} {bar} {n_fmt}/{total_fmt} [{elapsed} elapsed, {remaining} left]{postfix}"


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def seconds_text(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; ``4000`` -> ``1 h 07 min``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class _Output:
    """Lines and (on a terminal) bars on one stream; lines never break a bar."""

    def __init__(self, stream: TextIO, bars: Optional[bool] = None):
        self.stream = stream
        self.bars = is_terminal(stream) if bars is None else bool(bars)
        self.t0 = time.time()
        self._batch: Optional[tqdm] = None
        self._batch_stage: Optional[str] = None

    def line(self, text: str) -> None:
        tqdm.write(text, file=self.stream)
        self.stream.flush()

    def new_bar(self, total: int, desc: str, unit: str, leave: bool = True) -> Optional[tqdm]:
        if not self.bars:
            return None
        # smoothing 0: the estimate uses the average rate since the bar started
        return tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=leave,
                    bar_format=BAR_FORMAT, dynamic_ncols=True, mininterval=0.2, smoothing=0)

    def batch(self, info: dict) -> None:
        """A transient bar for the batches of one stage (terminal only)."""
        if not self.bars:
            return
        stage, done, total = info.get("stage", ""), int(info.get("done", 0)), int(info.get("total", 1))
        if self._batch is None or stage != self._batch_stage or done < self._batch.n:
            self.close_batch()
            self._batch = self.new_bar(total, f"  {stage}", "batch", leave=False)
            self._batch_stage = stage
        self._batch.n = done
        self._batch.refresh()
        if done >= total:
            self.close_batch()

    def close_batch(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None


class ClassifyProgress(_Output):
    """Progress of one classification: one line per EM iteration, a bar over the iterations
    (terminal), exploration starts and the kept start announced."""

    def __init__(self, stream: TextIO, max_iter: int, bars: Optional[bool] = None):
        super().__init__(stream, bars)
        self.max_iter = int(max_iter)
        self._bar: Optional[tqdm] = None
        self._t_first: Optional[float] = None

    def __call__(self, event: str, **info) -> None:
        if event == "batch":
            if info.get("stage") != "preprocess":
                self._em_bar()         # the estimate starts with the EM, not preprocessing
            self.batch(info)
        elif event == "iteration" and info.get("phase") == "explore":
            self.close_batch()
            self.line(f"  start {int(info['start']) + 1}/{info['n_starts']}, iteration "
                      f"{info['it']:2d}/{info['max_iter']}: {info['changed_pct']:6.2f} % changed "
                      f"| {seconds_text(time.time() - self.t0)}")
        elif event == "iteration":
            self.close_batch()
            self._iteration(info)
        elif event in ("explore_start", "explore_done"):
            self.close_batch()
            self.line(explore_text(event, info))
        elif event == "message":
            self.close_batch()
            self.line(str(info.get("text", "")))

    def _iteration(self, info: dict) -> None:
        it = int(info["it"])
        now = time.time()
        if self._t_first is None or it == 1:
            self._t_first = now - 1e-9 if it == 1 else now
        fr = " ".join(f"{f:.3f}" for f in info.get("class_fractions", []))
        left = ""
        if it < self.max_iter:
            per_it = (now - self._t_first) / max(it - 1, 1) if it > 1 else None
            if per_it:
                left = f", at most {seconds_text(per_it * (self.max_iter - it))} left"
        first = (f" ({int(info['first_assigned'])} assigned for the first time)"
                 if info.get("first_assigned") else "")
        self.line(f"iteration {it:3d}/{self.max_iter}: {info['changed_pct']:6.2f} % changed"
                  f"{first} | fractions {fr} | {seconds_text(now - self.t0)}{left}")
        bar = self._em_bar()
        if bar is not None:
            bar.n = it
            bar.set_postfix_str(f"{info['changed_pct']:.1f} % changed", refresh=True)

    def _em_bar(self) -> Optional[tqdm]:
        if self._bar is None and self.bars:
            self._bar = self.new_bar(self.max_iter, "EM iterations", "it")
        return self._bar

    def close(self) -> None:
        self.close_batch()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def explore_text(event: str, info: dict) -> str:
    """Lines for the exploration starts (:mod:`hetclass.explore`)."""
    if event == "explore_start":
        return (f"exploring: start {int(info['start']) + 1}/{info['n_starts']} from random "
                "references, hard assignments")
    scores = ", ".join(f"{s:.2f}" for s in info.get("scores", []))
    return (f"start {int(info['selected']) + 1} kept: highest held-out log-evidence per "
            f"particle ({scores}); refining it with soft assignments")


def _task_name(info: dict) -> str:
    if "replicate" not in info:
        return ""
    return f"K={info.get('k')} replicate {int(info['replicate']) + 1}"


class ReplicateProgress(_Output):
    """Progress of replicate work (stability, exhaustive): every EM iteration of every
    replicate advances one count; the bar's total is ``max_iter`` per replicate of the current
    phase (the whole K scan for stability, one tree node for exhaustive), so the estimate is
    an upper bound that falls as replicates converge early.

    ``tasks`` the replicates expected in the first phase (``None``: counted as they start).
    """

    def __init__(self, stream: TextIO, max_iter: int, tasks: Optional[int] = None,
                 bars: Optional[bool] = None, status_interval_s: float = 30.0):
        super().__init__(stream, bars)
        self.max_iter = int(max_iter)
        self.status_interval_s = status_interval_s
        self._bar: Optional[tqdm] = None
        self._phase = "replicates"
        self._start_phase(tasks)

    # ----- bookkeeping ---------------------------------------------------------------------
    def _start_phase(self, tasks: Optional[int], name: Optional[str] = None) -> None:
        self._done: Dict[Tuple[int, int], int] = {}     # (k, replicate) -> iterations credited
        self._expected = int(tasks or 0)
        self._t_phase = time.time()
        self._t_status = time.time()
        if name:
            self._phase = name
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _total(self) -> int:
        return max(self._expected, len(self._done)) * self.max_iter

    def _count(self) -> int:
        return sum(self._done.values())

    def _update(self, postfix: str) -> None:
        if self.bars:
            if self._bar is None:
                self._bar = self.new_bar(self._total(), self._phase, "it")
            self._bar.total = self._total()
            self._bar.n = min(self._count(), self._bar.total)
            self._bar.set_postfix_str(postfix, refresh=True)
        elif time.time() - self._t_status >= self.status_interval_s:
            self._t_status = time.time()
            self.line(self.status_line())

    def status_line(self) -> str:
        """``<phase>: 40/125 replicate iterations, 2 min 10 s elapsed, about 4 min left``."""
        done, total = self._count(), self._total()
        elapsed = time.time() - self._t_phase
        left = (f", at most {seconds_text(elapsed / done * (total - done))} left"
                if done else "")
        return (f"{self._phase}: {done}/{total} replicate iterations, "
                f"{seconds_text(elapsed)} elapsed{left}")

    # ----- events --------------------------------------------------------------------------
    def __call__(self, event: str, **info) -> None:
        if event == "batch":
            if "replicate" not in info:      # preprocessing; replicate batches are too many
                self.batch(info)
            return
        self.close_batch()
        key = (int(info.get("k", 0)), int(info.get("replicate", -1)))
        if event in ("explore_start", "explore_done") or info.get("phase") == "explore":
            return       # a replicate's exploration: counted once its refinement starts
        if event == "iteration" and "replicate" in info:
            self._done[key] = min(int(info["it"]), self.max_iter)
            self._update(f"{_task_name(info)} iteration {info['it']}: "
                         f"{float(info.get('changed_pct', 0)):.1f} % changed")
        elif event == "iteration":
            self.line(f"iteration {info['it']}/{info.get('max_iter', self.max_iter)}: "
                      f"{float(info.get('changed_pct', 0)):.2f} % changed")
        elif event == "replicate":
            iterations = self._done.get(key, 0)
            self._done[key] = self.max_iter
            self._update(f"K={info['k']} replicate {int(info['replicate']) + 1} done")
            self.line(f"  K={info['k']}: replicate {info['done']}/{info['total']} done "
                      f"({info['seconds']:.1f} s"
                      + (f", {iterations} iterations" if iterations else "") + ")"
                      + f" [{seconds_text(time.time() - self.t0)}]")
        elif event == "k_done":
            state = "all classes stable" if info["all_stable"] else "not all classes stable"
            self.line(f"K={info['k']}: {state} ({info['seconds']:.1f} s)")
        elif event == "node_start":
            self._start_phase(info.get("tasks"), f"node {info['id']}")
            self.line(f"node {info['id']} ({info['n_particles']} particles): replicate "
                      "classifications")
        elif event == "node":
            what = "split" if info["decision"] == "split" else f"leaf ({info['reason']})"
            self.line(f"node {info['id']} ({info['n_particles']} particles): {what} "
                      f"[{seconds_text(time.time() - self.t0)}]")
        elif event == "message":
            self.line(str(info.get("text", "")))

    def close(self) -> None:
        self.close_batch()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def print_class_table(stream: TextIO, stats: Sequence[dict], fractions, resolution_A, n: int,
                      resolution_status: Optional[Sequence[str]] = None,
                      labels: Optional[Sequence[int]] = None) -> None:
    """Class sizes and resolution (crop-limit values marked as bounds), and changes per
    iteration. ``labels`` (n,): particles are counted by most probable class (as in
    report.html and run_data.star); without them, ``fraction * n``."""
    status = list(resolution_status or [None] * len(fractions))
    cells = [resolution_text(r, s) for r, s in zip(resolution_A, status)]
    if labels is not None:
        lab = np.asarray(labels)
        counts = np.bincount(lab[lab >= 0], minlength=len(fractions))
    else:
        counts = [int(round(f * n)) for f in fractions]
    stream.write("\nclass  particles  fraction  resolution\n")
    for k, (f, c) in enumerate(zip(fractions, cells)):
        stream.write(f"{k + 1:5d}  {int(counts[k]):9d}  {f:8.3f}  {c}\n")
    if any(s == "crop_limit" for s in status):
        stream.write("(crop limit: the FSC stays above 0.143 up to the finest shell used, so "
                     "the class is at least this good; a finer --target-res measures it)\n")
    if stats:
        stream.write("\niteration  changed_%  log_likelihood\n")
        for s in stats:
            stream.write(f"{s['iteration']:9d}  {s['changed_pct']:9.2f}  {s['log_likelihood']:14.2f}\n")
