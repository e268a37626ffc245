"""The lock on an output folder (issue 13): one run at a time, stale locks taken over.

Real processes throughout: a live holder is another Python process, a dead one is a process
that has exited, a race is several processes started at the same moment.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from hetclass.errors import OutputError
from hetclass.io.lock import LOCK_NAME, STALE_AFTER_S, acquire

HOLD = textwrap.dedent("""
    import sys, time
    from hetclass.io.lock import acquire
    go, out, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    while go != "-" and not __import__("os").path.exists(go):
        time.sleep(0.005)
    try:
        lock = acquire(out, "test holder")
    except Exception as exc:
        print("lost", type(exc).__name__, exc, flush=True)
        sys.exit(0)
    print("won", flush=True)
    time.sleep(hold)
    lock.release()
""")


def _holder(out, hold_s, go="-"):
    return subprocess.Popen([sys.executable, "-c", HOLD, str(go), str(out), str(hold_s)],
                            stdout=subprocess.PIPE, text=True)


def _wait_for_lock(out, timeout_s=30):
    deadline = time.time() + timeout_s
    while not (out / LOCK_NAME).exists():
        assert time.time() < deadline
        time.sleep(0.01)


def _record(**kw):
    rec = {"pid": 1, "host": socket.gethostname(), "boot_id": None, "start": None,
           "command": "hetclass classify", "since": "2020-01-01 00:00:00", "token": "x"}
    rec.update(kw)
    return json.dumps(rec)


def test_acquire_creates_the_folder_and_release_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with acquire(out) as lock:
        assert lock.owned and (out / LOCK_NAME).exists()
        record = json.loads((out / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert not (tmp_path / "a").exists()           # created for nothing: removed again
    with acquire(out):
        (out / "run.json").write_text("{}")
    assert sorted(os.listdir(out)) == ["run.json"]  # a folder with results stays


def test_a_live_holder_refuses_a_second_run(tmp_path):
    out = tmp_path / "run"
    proc = _holder(out, 30)
    try:
        _wait_for_lock(out)
        with pytest.raises(OutputError) as e:
            acquire(out)
        line = e.value.one_line()
        assert f"pid {proc.pid}" in line and socket.gethostname() in line
        assert "--out" in line and LOCK_NAME in line and "\n" not in line
    finally:
        proc.kill()
        proc.wait()


def test_simultaneous_runs_exactly_one_wins(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    procs = [_holder(out, 3, go) for _ in range(6)]
    time.sleep(1.0)                                 # every process is waiting for "go"
    go.write_text("")
    results = [p.communicate(timeout=60)[0].split()[0] for p in procs]
    assert results.count("won") == 1, results
    assert not (out / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_its_temporaries(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(_record(pid=dead.pid))
    (out / f".tmp-{dead.pid}-0123abcd-run_class001.mrc").write_bytes(b"half")
    (out / f".tmp-{dead.pid}-0123abcd-staged").mkdir()
    (out / "run_checkpoint.npz").write_bytes(b"kept")
    with acquire(out) as lock:
        assert lock.owned and lock.removed_temporaries == 2
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert sorted(os.listdir(out)) == [LOCK_NAME, "run_checkpoint.npz"]


def test_killed_but_unreaped_owner_counts_as_gone(tmp_path):
    """A rank killed under mpirun can stay a zombie (a container's init never reaps it)."""
    out = tmp_path / "run"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while open(f"/proc/{child.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
        assert time.time() < deadline
        time.sleep(0.01)
    (out / LOCK_NAME).write_text(_record(pid=child.pid))
    try:
        with acquire(out) as lock:
            assert lock.owned
    finally:
        child.wait()


def test_reused_pid_is_recognised_by_its_start_time(tmp_path):
    out = tmp_path / "run"
    out.mkdir()   # a record naming this very pid, but another process (another start time)
    (out / LOCK_NAME).write_text(_record(pid=os.getpid(), start="1"))
    with acquire(out) as lock:
        assert lock.owned


def test_other_host_lock_is_refused_until_it_is_old(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(_record(pid=12345, host="elsewhere.cluster"))
    with pytest.raises(OutputError) as e:
        acquire(out)
    assert "elsewhere.cluster" in e.value.one_line()
    old = time.time() - STALE_AFTER_S - 60          # its owner stopped refreshing it
    os.utime(out / LOCK_NAME, (old, old))
    with acquire(out) as lock:
        assert lock.owned


def test_empty_lock_file_is_young_or_stale(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("")                # being written right now
    with pytest.raises(OutputError):
        acquire(out)
    old = time.time() - 3600
    os.utime(out / LOCK_NAME, (old, old))           # a crash while writing it
    with acquire(out) as lock:
        assert lock.owned


def test_nested_acquire_in_one_process_leaves_the_lock_to_the_outer(tmp_path):
    out = tmp_path / "run"
    with acquire(out) as outer:
        with acquire(out) as inner:
            assert not inner.owned
        assert (out / LOCK_NAME).exists()
        assert outer.owned
    assert not (out / LOCK_NAME).exists()


def test_released_when_the_block_raises(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with acquire(out):
            (out / "x").write_text("")
            raise RuntimeError("boom")
    assert os.listdir(out) == ["x"]


def test_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError) as e:
        acquire(tmp_path / "f")
    assert "not a directory" in e.value.one_line()
