"""Read-only and full disks (issue 13): one line, exit 2, nothing half-written, resumable.

Real file systems: a small or read-only tmpfs mounted inside a user + mount namespace
(``unshare -rm``, so no privileges are needed and nothing leaks out of the test), and a
per-process file size limit (RLIMIT_FSIZE, "File too large") for an error in the middle of
writing the outputs. The tiny simulated set (40 particles, box 32) is the input.
"""

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap

import pytest

RUN = ["--classes", "2", "--target-res", "25", "--quiet"]


def _cli(*argv):
    return [sys.executable, "-m", "hetclass_standalone.main", *[str(a) for a in argv]]


def _classify(ds, out, *extra):
    return _cli("classify", "--particles", ds.star_path, "--project-dir", ds.out_dir,
                "--out", out, *RUN, *extra)


def _hash_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = hashlib.sha256(
                    fh.read()).hexdigest()
    return out


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    """Runs a Python scenario as root of a new user + mount namespace; skips where the
    kernel or the container does not allow one."""
    unshare = shutil.which("unshare")
    probe = tmp_path_factory.mktemp("probe")
    if unshare is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux) to make small or read-only disks")
    res = subprocess.run([unshare, "--map-root-user", "--mount", "sh", "-c",
                          f"mount -t tmpfs -o size=64k tmpfs '{probe}'"], capture_output=True)
    if res.returncode != 0:
        pytest.skip("user and mount namespaces are not allowed here: "
                    + res.stderr.decode(errors="replace").strip())

    def run(scenario: str, **args) -> dict:
        script = textwrap.dedent(PRELUDE) + textwrap.dedent(scenario)
        res = subprocess.run([unshare, "--map-root-user", "--mount", sys.executable, "-c",
                              script, json.dumps({k: str(v) for k, v in args.items()})],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])
    return run


PRELUDE = """
    import json, os, signal, subprocess, sys, time
    A = json.loads(sys.argv[1])
    CLI = [sys.executable, "-m", "hetclass_standalone.main", "classify", "--particles",
           A["star"], "--project-dir", A["project"], "--classes", "2", "--target-res", "25",
           "--quiet"]

    def sh(*cmd):
        subprocess.run(cmd, check=True)

    def classify(out, *extra):
        r = subprocess.run(CLI + ["--out", out, *extra], capture_output=True, text=True)
        return {"rc": r.returncode, "err": r.stderr}
"""


def test_read_only_output_refused_before_reading_anything(namespace, tiny_dataset, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    ro = tmp_path / "ro"
    ro.mkdir()
    got = namespace("""
        sh("mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", A["ro"])
        sh("mount", "--bind", A["existing"], A["existing"])
        sh("mount", "-o", "remount,bind,ro", A["existing"])
        res = {"new": classify(A["ro"] + "/run"), "existing": classify(A["existing"])}
        CLI[CLI.index("--particles") + 1] = "missing.star"      # the folder is checked first
        res["first"] = classify(A["ro"] + "/run")
        print(json.dumps(res))
    """, star=tiny_dataset.star_path, project=tiny_dataset.out_dir, ro=ro, existing=existing)
    for case in ("new", "existing", "first"):
        assert got[case]["rc"] == 2, got[case]
        line = _one_error_line(got[case]["err"])
        assert "Read-only file system (EROFS)" in line and "--out" in line, line
    assert os.listdir(existing) == []


def test_too_small_disk_refused_before_preprocessing(namespace, tiny_dataset, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    got = namespace("""
        sh("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", A["small"])
        res = classify(A["small"] + "/run", "--max-iter", "2")
        res["left"] = os.listdir(A["small"])
        print(json.dumps(res))
    """, star=tiny_dataset.star_path, project=tiny_dataset.out_dir, small=small)
    assert got["rc"] == 2
    line = _one_error_line(got["err"])
    assert "not enough free space" in line and "MB free" in line, line
    assert got["left"] == []


def test_disk_full_mid_run_then_resume_to_the_same_result(namespace, tiny_dataset, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_classify(tiny_dataset, ref, "--max-iter", "40", "--convergence", "0"),
                   check=True, capture_output=True, timeout=600)
    disk, keep = tmp_path / "disk", tmp_path / "keep"
    disk.mkdir()
    keep.mkdir()
    got = namespace("""
        import numpy as np
        sh("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", A["disk"])
        out = A["disk"] + "/run"
        extra = ["--max-iter", "40", "--convergence", "0"]
        p = subprocess.Popen(CLI + ["--out", out, *extra], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        while not os.path.exists(out + "/run_checkpoint.npz"):
            assert p.poll() is None, p.stderr.read()
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGSTOP)                 # hold it while the disk fills up
        with open(A["disk"] + "/filler", "wb") as fh:
            try:
                while True:
                    fh.write(b"\\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        os.kill(p.pid, signal.SIGCONT)
        res = {"rc": p.wait(), "err": p.stderr.read(), "left": sorted(os.listdir(out))}
        with np.load(out + "/run_checkpoint.npz") as z:
            res["iteration"] = json.loads(bytes(z["_meta"]).decode())["iteration"]
        os.remove(A["disk"] + "/filler")
        res["resume"] = classify(out, *extra, "--continue")
        res["resumed_from"] = json.load(open(out + "/run.json"))["resumed_from_iteration"]
        os.system(f"cp '{out}/run_posteriors.npy' '{out}/run_class001.mrc' '{A['keep']}/'")
        print(json.dumps(res))
    """, star=tiny_dataset.star_path, project=tiny_dataset.out_dir, disk=disk, keep=keep)
    assert got["rc"] == 2, got
    line = _one_error_line(got["err"])
    assert "No space left on device (ENOSPC)" in line and "--continue" in line, line
    assert got["left"] == ["run_checkpoint.npz"], got["left"]  # no temporaries, no outputs
    assert 0 <= got["iteration"] < 40  # 0: saved after exploration and got["resumed_from"] == got["iteration"]
    assert got["resume"]["rc"] == 0, got["resume"]
    for name in ("run_posteriors.npy", "run_class001.mrc"):
        assert (keep / name).read_bytes() == (ref / name).read_bytes(), name


def _limit_file_size(limit_bytes):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_error_while_writing_outputs_leaves_the_previous_ones_whole(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    subprocess.run(_classify(tiny_dataset, out, "--max-iter", "2"), check=True,
                   capture_output=True, timeout=600)
    before = _hash_tree(out)
    # a class map (128 kB) is larger than this limit; the lock file is not
    res = subprocess.run(_classify(tiny_dataset, out, "--max-iter", "2", "--continue"),
                         capture_output=True, text=True, timeout=600,
                         preexec_fn=_limit_file_size(64 * 1024))
    assert res.returncode == 2, res.stderr
    line = _one_error_line(res.stderr)
    assert "File too large (EFBIG)" in line and "run_class001.mrc" in line, line
    assert _hash_tree(out) == before                  # old outputs whole, nothing half-new
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    again = subprocess.run(_classify(tiny_dataset, out, "--max-iter", "2", "--continue"),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    after = _hash_tree(out)                           # the same result once it can be written
    for name in ("run_posteriors.npy", "run_class001.mrc", "run_class002.mrc",
                 "run_data.star"):
        assert after[name] == before[name], name
