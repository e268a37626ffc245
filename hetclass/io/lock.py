"""One run at a time per output folder: a lock file naming its owner (pid, host).

Every command that writes into ``--out`` holds the folder's lock for the whole run::

    with lock_output("hc_run1", comm) as lock:     # rank 0 holds it under MPI
        ...                                         # check, read, classify, write

The lock is the file ``<out>/.hetclass.lock``, created exclusively (``O_CREAT | O_EXCL``,
atomic on local file systems and NFS v3 and later). It holds a JSON record: pid, host, the
machine's boot id, the process's start time, the command and the time it was taken. The
owner refreshes the file's modification time every :data:`HEARTBEAT_S` seconds.

A second run is refused with one line (:class:`~hetclass.errors.OutputError`) naming the
owner. A lock whose owner is gone (a run killed with SIGKILL, a crashed machine) is stale
and is taken over by the next run:

* owner on this host: its pid no longer runs, or runs a different process (another start
  time), or the machine rebooted since (another boot id);
* owner on another host: its file was not refreshed for :data:`STALE_AFTER_S` seconds.

Taking the lock also creates the folder (and its missing parents) and removes the
temporaries a killed run left there (:func:`hetclass.io.atomic.remove_temporaries`); the
lock is the write probe of the folder, so a read-only or full disk is reported before any
work. Releasing it removes the file, and the folders it created if they are still empty.
The same process asking again (the command line, then the pipeline inside it) gets a nested
handle that leaves the lock to the outer one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from typing import List, Optional

from ..errors import OutputError, output_error
from .atomic import remove_temporaries

LOCK_NAME = ".hetclass.lock"
HEARTBEAT_S = 60.0       # the owner touches the lock file this often
STALE_AFTER_S = 600.0    # a lock from another host not touched for this long is stale
_EMPTY_GRACE_S = 10.0    # an empty lock file younger than this is being written right now


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _start_time(pid: int) -> Optional[str]:
    """Start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie, killed but not yet reaped
    by its parent, has ended)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # a process of another user
        pass
    except (OSError, ValueError, OverflowError):
        return False
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X", "x")


def _record(command: str) -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "start": _start_time(pid), "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": secrets.token_hex(8)}


def _read(path: str) -> Optional[dict]:
    """The lock's record; None when the file is empty or not a record."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.loads(fh.read())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and "pid" in record else None


def _is_this_process(record: dict) -> bool:
    return (record.get("host") == socket.gethostname() and record.get("pid") == os.getpid()
            and record.get("start") == _start_time(os.getpid()))


def _owner_gone(record: Optional[dict], path: str) -> bool:
    """Whether the run that wrote ``record`` (the content of ``path``) has ended."""
    try:
        age_s = time.time() - os.path.getmtime(path)
    except OSError:
        return True
    if record is None:                          # empty or damaged: a crash while writing it
        return age_s > _EMPTY_GRACE_S
    if record.get("host") != socket.gethostname():
        return age_s > STALE_AFTER_S
    if record.get("boot_id") and _boot_id() and record["boot_id"] != _boot_id():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or not _running(pid):
        return True
    start = record.get("start")
    return start is not None and _start_time(pid) not in (None, start)


def _busy(directory: str, path: str, record: Optional[dict]) -> OutputError:
    if record is None:
        who = "another hetclass run"
    else:
        who = (f"another hetclass run ({record.get('command') or 'hetclass'}, pid "
               f"{record.get('pid')} on host {record.get('host')}, since {record.get('since')})")
    return OutputError(f"{who} is using this output folder; wait for it to end or choose "
                       f"another --out (if that run is gone, delete {path})",
                       file=directory, field="--out")


def _missing_parents(directory: str) -> List[str]:
    """``directory`` and its ancestors that do not exist, deepest first."""
    missing, d = [], directory
    while not os.path.exists(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return missing


class OutputLock:
    """A held (or nested, or absent) lock on one output folder; see the module docstring.

    Attributes: ``directory`` (absolute), ``path`` (the lock file), ``owned`` (this handle
    releases it), ``removed_temporaries`` (temporaries of a killed run cleared on taking it).
    """

    def __init__(self, directory: str, owned: bool, record: Optional[dict] = None,
                 created: Optional[List[str]] = None, removed_temporaries: int = 0):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.owned = owned
        self.record = record
        self.created = created or []
        self.removed_temporaries = removed_temporaries
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None
        if owned:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                          name="hetclass-lock-heartbeat")
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Remove the lock file (if still ours) and the folders it created, when empty."""
        if not self.owned:
            return
        self.owned = False
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        current = _read(self.path)
        if current is not None and current.get("token") == (self.record or {}).get("token"):
            with contextlib.suppress(OSError):
                os.remove(self.path)
        for d in self.created:                  # deepest first; only if nothing was written
            with contextlib.suppress(OSError):
                os.rmdir(d)

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: str, record: dict) -> bool:
    """Create the lock file holding ``record``; False if it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise
    return True


def _take_over(path: str, stale: Optional[dict]) -> bool:
    """Move a stale lock aside; False (and the lock left in place) if it changed meanwhile."""
    aside = f"{path}.stale-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True                              # someone else moved it: try again
    if _read(aside) != stale:                    # a new owner came in between: give it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
        with contextlib.suppress(OSError):
            os.remove(aside)
        return False
    with contextlib.suppress(OSError):
        os.remove(aside)
    return True


def acquire(directory, command: str = "") -> OutputLock:
    """Take the lock of ``directory`` (created if missing); see the module docstring.

    Raises :class:`~hetclass.errors.OutputError` (one line) when another live run holds
    it, when the path is not a folder, or when the folder cannot be created or written.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise OutputError("output path exists and is not a directory", file=directory,
                          field="--out")
    created = _missing_parents(directory)
    path = os.path.join(directory, LOCK_NAME)
    record = _record(command or " ".join(os.path.basename(a) for a in sys.argv[:2]))
    try:
        os.makedirs(directory, exist_ok=True)
        for _ in range(5):
            if _create(path, record):
                removed = remove_temporaries(directory)
                return OutputLock(directory, True, record, created, removed)
            holder = _read(path)
            if holder is not None and _is_this_process(holder):
                return OutputLock(directory, False)
            if not _owner_gone(holder, path) or not _take_over(path, holder):
                raise _busy(directory, path, holder)
        raise _busy(directory, path, _read(path))
    except OSError as exc:
        for d in created:
            with contextlib.suppress(OSError):
                os.rmdir(d)
        doing = ("cannot write in the output folder" if os.path.isdir(directory)
                 else "cannot create the output folder")
        raise output_error(exc, directory, doing) from None
    except OutputError:
        for d in created:
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise


def lock_output(directory, comm=None, command: str = "") -> OutputLock:
    """:func:`acquire` on rank 0 of ``comm`` (every rank otherwise; serial without a comm).

    Collective under MPI: an error on rank 0 is raised on every rank; the other ranks get a
    handle that holds nothing.
    """
    if comm is None or not getattr(comm, "is_mpi", False):
        return acquire(directory, command)
    lock = comm.checked(lambda: acquire(directory, command) if comm.is_root else None)
    return lock if lock is not None else OutputLock(os.path.abspath(os.fspath(directory)), False)
