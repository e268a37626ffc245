"""The sbatch recipe of docs/scaling.md on a real single-node SLURM cluster started by this test.

The test (as root, as CI runs) starts its own ``munged`` (a fresh key and socket), ``slurmctld``
and ``slurmd`` from a private ``slurm.conf`` in a temporary directory (own ports, own state;
nothing system-wide is touched, and every daemon is stopped at the end), then submits the
the recipe -- ``srun --kill-on-bad-exit=1 hetclass classify ...`` -- as a 2-task batch job:

* the 2-task job gives the labels (and maps) of one process with the same seed;
* a task killed with SIGKILL mid-run ends the job step: the job finishes, failed, well
  within the timeout instead of hanging in a collective.

Needs Debian's ``slurm-wlm``, ``munge`` and ``libpmix-dev`` (``.ci/run`` installs them) and
mpi4py on an MPI with PMIx (Debian's OpenMPI). Skipped, with the reason, when they are
missing, when not running as root, or when the daemons cannot start here (the reason quotes
the daemon's last log line).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import starfile

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "scontrol")
RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "scaling.md")       # the README links its SLURM section
JOB_TIMEOUT_S = 240
START_TIMEOUT_S = 40


def _missing():
    found = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
             for name in DAEMONS + CLIENTS}
    return [name for name, path in found.items() if path is None], found


MISSING, PATHS = _missing()
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"SLURM not installed ({', '.join(MISSING)} "
                       "missing: apt-get install slurm-wlm munge libpmix-dev)"),
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py not installed (pip install 'hetclass[mpi]')"),
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="starting slurmd needs root (CI runs as root)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(d, host: str, cpus: int) -> str:
    return "\n".join([
        "ClusterName=hetclasstest", f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={d}/munge/socket",
        f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool",
        f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd.pid",
        f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/builtin", "MpiDefault=pmix", "ReturnToService=2",
        "SlurmdParameters=config_overrides", "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP "
        "OverSubscribe=FORCE:2", ""])


def _last_line(path) -> str:
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
        return lines[-1] if lines else "(empty log)"
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster: yields the environment for its client commands."""
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool"):
        (d / sub).mkdir(mode=0o700)
    key = d / "munge" / "key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(_slurm_conf(d, host, max(2, os.cpu_count() or 1)))
    env = dict(os.environ, SLURM_CONF=str(conf))
    for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        if var != "SLURM_CONF":
            del env[var]
    procs = []

    def start(argv, log):
        procs.append(subprocess.Popen(argv, env=env, stdout=open(log, "w"),
                                      stderr=subprocess.STDOUT))
    try:
        start([PATHS["munged"], "--foreground", "--force", f"--key-file={key}",
               f"--socket={d}/munge/socket", f"--pid-file={d}/munge/pid",
               f"--log-file={d}/munge/log", f"--seed-file={d}/munge/seed"], d / "munged.out")
        time.sleep(0.5)
        start([PATHS["slurmctld"], "-D", "-f", str(conf)], d / "slurmctld.out")
        start([PATHS["slurmd"], "-D", "-f", str(conf), "-N", host], d / "slurmd.out")
        deadline = time.time() + START_TIMEOUT_S
        state = ""
        while time.time() < deadline:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                break
            state = subprocess.run([PATHS["sinfo"], "-h", "-o", "%T"], env=env,
                                   capture_output=True, text=True).stdout.strip()
            if state in ("idle", "mixed"):
                break
            time.sleep(0.5)
        if state not in ("idle", "mixed"):
            logs = "; ".join(f"{name}: {_last_line(d / f'{name}.log')} / "
                             f"{_last_line(d / f'{name}.out')}"
                             for name in ("slurmctld", "slurmd"))
            pytest.skip(f"SLURM daemons could not start here (node state {state!r}): {logs}")
        yield env
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def ds(hinge_300):
    return hinge_300


def readme_srun_prefix() -> str:
    """The launcher part of the sbatch recipe (docs/scaling.md) (``srun <options>``), checked to run
    ``hetclass classify``."""
    text = open(RECIPE, encoding="utf-8").read()
    block = re.search(r"```bash\n(#!/bin/bash\n#SBATCH.*?)```", text, re.S)
    assert block, "docs/scaling.md lost its sbatch recipe"
    script = block.group(1).replace("\\\n", " ")
    line = next(ln for ln in script.splitlines() if ln.strip().startswith("srun "))
    prefix, sep, _ = line.partition(" hetclass classify ")
    assert sep and "--kill-on-bad-exit=1" in prefix, line
    return prefix.strip()


def _hetclass_exe() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "hetclass")
    return exe if os.path.exists(exe) else f"{sys.executable} -m hetclass_standalone.main"


def _args(ds, out) -> str:
    return (f"--particles {ds.star_path} --project-dir {ds.out_dir} --classes 2 --max-iter 6 "
            f"--convergence 0 --seed 3 --threads 1 --out {out} --quiet")


def _submit(slurm, tmp_path, ds, out, extra_env=None):
    """sbatch --wait the recipe with 2 tasks; (CompletedProcess, seconds, job output)."""
    script = tmp_path / "job.sh"
    exports = "".join(f"export {k}={v}\n" for k, v in (extra_env or {}).items())
    script.write_text("#!/bin/bash\n#SBATCH --job-name=hetclass\n#SBATCH --nodes=1\n"
                      "#SBATCH --ntasks=2\n#SBATCH --cpus-per-task=1\n"
                      f"#SBATCH --output={tmp_path}/job.out\n"
                      f"#SBATCH --time=00:{JOB_TIMEOUT_S // 60 + 1:02d}:00\n"
                      f"export OMP_NUM_THREADS=1\n{exports}"
                      f"{readme_srun_prefix()} {_hetclass_exe()} classify {_args(ds, out)}\n")
    t0 = time.time()
    proc = subprocess.run([PATHS["sbatch"], "--wait", str(script)], env=slurm,
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 60,
                          cwd=str(tmp_path))
    log = (tmp_path / "job.out").read_text(errors="replace") if (tmp_path / "job.out").exists() else ""
    return proc, time.time() - t0, log


def _labels(star):
    return starfile.read(star, always_dict=True)["particles"]["rlnClassNumber"].to_numpy()


def test_recipe_with_two_tasks_gives_single_process_labels(slurm, ds, tmp_path):
    single = tmp_path / "single"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_hetclass_exe().split() + ["classify"] + _args(ds, single).split(),
                   check=True, env=env, timeout=JOB_TIMEOUT_S)
    out = tmp_path / "slurm"
    proc, _, log = _submit(slurm, tmp_path, ds, out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr + log)[-3000:]
    import json
    assert json.loads((out / "run.json").read_text())["mpi_ranks"] == 2
    labels = _labels(out / "run_data.star")
    np.testing.assert_array_equal(labels, _labels(single / "run_data.star"))
    truth = np.asarray(ds.labels)
    agree = max(np.mean((labels - 1) == truth), np.mean((labels - 1) == 1 - truth))
    assert agree > 0.9          # the states are separated: equal labels are not trivial


def test_killed_task_ends_the_job_step(slurm, ds, tmp_path):
    proc, seconds, log = _submit(slurm, tmp_path, ds, tmp_path / "killed",
                                 {"HETCLASS_TESTING_KILL": "1:2"})
    assert proc.returncode != 0, log[-3000:]
    assert seconds < JOB_TIMEOUT_S
    assert not (tmp_path / "killed" / "run_data.star").exists()
    assert re.search(r"task 1|Killed|killed|terminated|Terminated", log), log[-3000:]
