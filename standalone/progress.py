"""Terminal progress output and the closing table of a classification."""

from __future__ import annotations

import time
from typing import Sequence, TextIO


class ProgressPrinter:
    """Progress callback: a one-line bar for batches, one line per EM iteration."""

    def __init__(self, stream: TextIO, max_iter: int, width: int = 30):
        self.stream = stream
        self.max_iter = max_iter
        self.width = width
        self.t0 = time.time()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._bar_open = False

    def __call__(self, event: str, **info) -> None:
        if event == "batch" and self.tty:
            done, total = info.get("done", 0), max(info.get("total", 1), 1)
            fill = int(self.width * done / total)
            self.stream.write(f"\r  {info.get('stage', ''):<10} [{'#' * fill}{'.' * (self.width - fill)}]"
                              f" {done}/{total}")
            self.stream.flush()
            self._bar_open = True
        elif event == "iteration":
            self._end_bar()
            fr = " ".join(f"{f:.3f}" for f in info.get("class_fractions", []))
            res = " ".join(f"{r:.1f}" for r in info.get("resolution_A", []))
            self.stream.write(f"iteration {info['it']:3d}/{self.max_iter}: "
                              f"{info['changed_pct']:6.2f} % changed | fractions {fr} | "
                              f"resolution {res} A | {time.time() - self.t0:7.1f} s\n")
            self.stream.flush()
        elif event == "message":
            self._end_bar()
            self.stream.write(str(info.get("text", "")) + "\n")
            self.stream.flush()

    def _end_bar(self):
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False

    def close(self):
        self._end_bar()


def print_class_table(stream: TextIO, stats: Sequence[dict], fractions, resolution_A, n: int):
    """Class sizes, resolution, and changes per iteration."""
    stream.write("\nclass  particles  fraction  resolution_A\n")
    for k, (f, r) in enumerate(zip(fractions, resolution_A)):
        stream.write(f"{k + 1:5d}  {int(round(f * n)):9d}  {f:8.3f}  {r:12.1f}\n")
    if stats:
        stream.write("\niteration  changed_%  log_likelihood\n")
        for s in stats:
            stream.write(f"{s['iteration']:9d}  {s['changed_pct']:9.2f}  {s['log_likelihood']:14.2f}\n")
