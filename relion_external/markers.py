"""RELION job markers: the only way an External job reports how it ended.

RELION never looks at the exit code. While a job runs it polls the job directory for
``RELION_JOB_EXIT_SUCCESS`` / ``RELION_JOB_EXIT_FAILURE`` / ``RELION_JOB_EXIT_ABORTED``;
without one the job stays "running" forever and ``relion_pipeliner --RunJobs`` never
returns. The GUI asks for an abort by creating ``RELION_JOB_ABORT_NOW``.

:class:`JobMarkers` is a context manager that guarantees exactly one marker::

    with JobMarkers("External/job004/") as job:
        ...                       # pass job.abort_check to the engine
        write_output_nodes(...)   # inside the block: nodes are read on SUCCESS
    # SUCCESS if the block finished; ABORTED on ABORT_NOW / SIGTERM / SIGINT;
    # FAILURE on any other exception (one-line reason on stderr = RELION's run.err)

Abort requests are honoured two ways: cleanly, when the engine calls :meth:`abort_check`
between batches/iterations; and, as a backstop for code that never calls it, by a watcher
thread that interrupts the main thread when ``RELION_JOB_ABORT_NOW`` has been there for
``abort_grace_s`` seconds.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from typing import Optional, TextIO

from hetclass.errors import AbortRequested, InputError, output_error

SUCCESS = "RELION_JOB_EXIT_SUCCESS"
FAILURE = "RELION_JOB_EXIT_FAILURE"
ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
EXIT_MARKERS = (SUCCESS, FAILURE, ABORTED)


class JobInterrupted(KeyboardInterrupt):
    """Raised asynchronously in the main thread (SIGTERM, SIGINT, the abort watcher).

    A ``KeyboardInterrupt`` so that ``except Exception`` blocks in the engine do not eat it.
    """


def one_line_reason(exc: BaseException) -> str:
    """A single-line, traceback-free description of ``exc`` for run.err."""
    if isinstance(exc, OSError):
        exc = output_error(exc, doing="operating-system error")
    if isinstance(exc, InputError):
        return exc.one_line()
    text = " ".join(str(exc).split())
    if isinstance(exc, (AbortRequested, KeyboardInterrupt, InputError)):
        return text or "interrupted"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def write_marker(job_dir: str, marker: str) -> str:
    """Create the (empty) marker file ``job_dir/marker``; return its path."""
    if marker not in EXIT_MARKERS:
        raise ValueError(f"not a RELION exit marker: {marker!r}")
    os.makedirs(job_dir, exist_ok=True)
    path = os.path.join(job_dir, marker)
    with open(path, "w", encoding="utf-8"):
        pass
    return path


class JobMarkers:
    """Context manager writing exactly one RELION exit marker in ``job_dir``.

    Parameters
    ----------
    job_dir : the job directory (RELION's ``--o``), created if missing.
    prog : program name used as prefix of messages on ``stderr``.
    stderr : where the one-line reason goes (default ``sys.stderr``; RELION's run.err).
    handle_signals : while inside the block, SIGTERM and SIGINT end the job as ABORTED
        (main thread only; the previous handlers are restored on exit).
    abort_grace_s : seconds ``RELION_JOB_ABORT_NOW`` may exist before the watcher thread
        interrupts the main thread; None disables the watcher.
    poll_s : watcher polling interval in seconds.

    Attributes after exit: ``status`` ("success" | "failure" | "aborted"), ``reason`` (the
    line written to stderr, None on success) and ``exception`` (None on success). Every
    exception is swallowed after the marker is written; use :meth:`exit_code`.
    """

    def __init__(self, job_dir: str, prog: str = "hetclass_relion",
                 stderr: Optional[TextIO] = None, handle_signals: bool = True,
                 abort_grace_s: Optional[float] = 10.0, poll_s: float = 1.0):
        self.job_dir = job_dir
        self.prog = prog
        self.stderr = stderr
        self.handle_signals = handle_signals
        self.abort_grace_s = abort_grace_s
        self.poll_s = poll_s
        self.status: Optional[str] = None
        self.reason: Optional[str] = None
        self.exception: Optional[BaseException] = None
        self._old_handlers = {}
        self._finishing = False
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._watcher_fired = False

    # -- abort polling -------------------------------------------------------------------
    @property
    def abort_now_path(self) -> str:
        return os.path.join(self.job_dir, ABORT_NOW)

    def abort_requested(self) -> bool:
        return os.path.exists(self.abort_now_path)

    def abort_check(self) -> None:
        """Raise :class:`AbortRequested` if RELION asked for an abort (the engine callback)."""
        if self.abort_requested():
            raise AbortRequested(f"{ABORT_NOW} found in {self.job_dir}")

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> "JobMarkers":
        os.makedirs(self.job_dir, exist_ok=True)
        for name in EXIT_MARKERS:  # stale markers of an earlier run (RELION also removes them)
            try:
                os.remove(os.path.join(self.job_dir, name))
            except FileNotFoundError:
                pass
        in_main = threading.current_thread() is threading.main_thread()
        if self.handle_signals and in_main:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        if self.abort_grace_s is not None and in_main and self.handle_signals:
            self._watcher = threading.Thread(target=self._watch, name="relion-abort-watcher",
                                             daemon=True)
            self._watcher.start()
        return self

    def _on_signal(self, signum, frame):
        if self._finishing:  # the marker is being written: let it finish
            return
        if self._watcher_fired and signum == signal.SIGINT:
            raise JobInterrupted(f"{ABORT_NOW} found in {self.job_dir} "
                                 "(the job did not stop by itself)")
        raise JobInterrupted(f"terminated by {signal.Signals(signum).name}")

    def _watch(self) -> None:
        seen_for = 0.0
        while not self._stop.wait(self.poll_s):
            seen_for = seen_for + self.poll_s if self.abort_requested() else 0.0
            if seen_for >= self.abort_grace_s and not self._finishing:
                self._watcher_fired = True
                _thread.interrupt_main()  # runs _on_signal(SIGINT) in the main thread
                return

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._finishing = True
        self._stop.set()
        try:
            self.exception = exc
            if exc is None or (isinstance(exc, SystemExit) and not exc.code):
                self._finish(SUCCESS, "success", None)
            elif isinstance(exc, (AbortRequested, KeyboardInterrupt)):
                self._finish(ABORTED, "aborted", "aborted: " + one_line_reason(exc))
            else:
                self._finish(FAILURE, "failure", "error: " + one_line_reason(exc))
        finally:
            if self._watcher is not None:
                self._watcher.join(timeout=5 * self.poll_s)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            self._old_handlers = {}
        return True  # swallowed: the marker tells RELION, exit_code() tells the shell

    def _finish(self, marker: str, status: str, reason: Optional[str]) -> None:
        self.status, self.reason = status, reason
        stream = self.stderr if self.stderr is not None else sys.stderr
        line = reason
        try:
            write_marker(self.job_dir, marker)
        except OSError as exc:   # a read-only or vanished job directory: said on the same line
            why = output_error(exc, doing=f"cannot write {marker}").one_line()
            line = f"{reason}; {why}" if reason else f"error: {why}"
            if self.status == "success":
                self.status, self.exception = "failure", exc
        if line:
            print(f"{self.prog}: {line}", file=stream, flush=True)

    def exit_code(self) -> int:
        """Exit code of the finished job (RELION ignores it; shells and CI do not):
        0 success, 2 bad input (:class:`InputError`) or an operating-system error (full or
        read-only disk), 130 aborted, 1 other failures."""
        if self.status == "success":
            return 0
        if self.status == "aborted":
            return 130
        if isinstance(self.exception, SystemExit) and isinstance(self.exception.code, int):
            return self.exception.code
        return 2 if isinstance(self.exception, (InputError, OSError)) else 1
