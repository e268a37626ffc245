"""The External job under MPI: ``mpi_ranks`` > 1 re-launches the run with an MPI launcher.

RELION's External job has no MPI field, so the job parameter ``mpi_ranks`` (and optionally
``mpi_launcher``) asks for it. This process stays the one RELION watches: it starts::

    <launcher with {n} = mpi_ranks> python -m hetclass_standalone.main <mode> --particles ...
        --out <JobDir> --overwrite|--continue --mpi on

(the ``hetclass`` command line, which shards the particles across the ranks and, for
stability / exhaustive, runs replicates on rank groups), passes the child's output on to
run.out / run.err, polls ``RELION_JOB_ABORT_NOW`` (an abort, SIGTERM or SIGINT terminates the
launcher, which stops every rank), and after success registers the output nodes and writes
the exit marker as for a single-process run. The child's one-line error becomes the job's
failure reason (exit code 2 for input errors).

Launcher: the ``mpi_launcher`` parameter, else ``$HETCLASS_MPI_LAUNCHER``, else ``srun -n {n}``
inside a SLURM allocation (``SLURM_JOB_ID`` set) and ``mpirun -n {n}`` otherwise; ``{n}`` is
replaced by the rank count (``-n N`` is appended when there is no ``{n}``). RELION splits
parameter values at ``--``, so launcher options in the job parameter take one dash (OpenMPI
accepts ``-oversubscribe``); use the environment variable for anything else.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from typing import List, Optional, TextIO

from hetclass.errors import HetclassError, InputError

from .nodes import Node, classify_nodes
from .options import JobConfig

LAUNCHER_ENV = "HETCLASS_MPI_LAUNCHER"


def launcher_words(cfg: JobConfig, environ=None) -> List[str]:
    """The launcher command for ``cfg.mpi_ranks`` ranks, as argv words."""
    environ = os.environ if environ is None else environ
    template = cfg.mpi_launcher or environ.get(LAUNCHER_ENV)
    if not template:
        template = "srun -n {n}" if environ.get("SLURM_JOB_ID") else "mpirun -n {n}"
    n = str(int(cfg.mpi_ranks or 1))
    words = shlex.split(template)
    if not words:
        raise InputError("empty MPI launcher", field="--mpi_launcher", value=template)
    if any("{n}" in w for w in words):
        return [w.replace("{n}", n) for w in words]
    return words + ["-n", n]


def _k_range(ks: List[int]) -> str:
    """``"KMIN-KMAX"`` (one K: ``"K"``), the ``hetclass`` spelling of a K list."""
    return f"{min(ks)}-{max(ks)}" if len(ks) > 1 else str(ks[0])


def hetclass_args(cfg: JobConfig, resume: bool = False) -> List[str]:
    """``hetclass <mode> ...`` arguments equivalent to the job's configuration."""
    mode = cfg.mode
    args = [mode, "--particles", cfg.in_parts, "--project-dir", os.getcwd(),
            "--out", cfg.job_dir, "--mpi", "on", "--threads", str(cfg.threads)]
    args += ["--continue"] if resume else ["--overwrite"]
    for ref in cfg.references:
        args += ["--ref", ref]
    if cfg.mask is not None:
        args += ["--focus-mask" if cfg.mask_is_focus else "--solvent-mask", cfg.mask]
    if mode == "classify":
        args += ["--classes", str(cfg.classes or 4)]
    elif mode == "stability":
        args += ["--classes", _k_range(cfg.k_values or [])]
    if mode != "classify":
        args += ["--jobs", str(cfg.threads), "--replicates", str(cfg.replicates or 5)]
    if cfg.hard:
        args.append("--hard")
    optional = [("--target-res", cfg.target_res_A), ("--max-iter", cfg.max_iter),
                ("--seed", cfg.seed), ("--tau2-fudge", cfg.tau2_fudge),
                ("--particle-diameter", cfg.particle_diameter_A),
                ("--convergence", cfg.convergence_pct), ("--max-memory", cfg.max_memory_GB),
                ("--device", cfg.device)]
    if mode == "classify":
        optional.append(("--starts", cfg.starts))
    else:
        optional += [("--subsample", cfg.subsample), ("--null-sets", cfg.null_sets)]
    if mode == "stability":
        optional.append(("--core-stability", cfg.core_stability))
    if mode == "exhaustive":
        if cfg.k_scan:
            args += ["--k-scan", _k_range(cfg.k_scan)]
        optional += [("--min-class-size", cfg.min_class_size), ("--max-depth", cfg.max_depth)]
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    return args


def mpi_command(cfg: JobConfig, resume: bool = False, environ=None) -> List[str]:
    """The full argv: launcher + this Python running the ``hetclass`` command line."""
    return (launcher_words(cfg, environ) + [sys.executable, "-m", "hetclass_standalone.main"]
            + hetclass_args(cfg, resume))


def _pump(source, out: TextIO, err: TextIO, errors: Optional[List[str]], prefix: str) -> None:
    """Copy lines from the child: its error lines (``prefix``) to ``errors``, warnings and
    tracebacks to ``err`` (run.err), the rest -- progress included -- to ``out`` (run.out)."""
    in_traceback = False
    for line in iter(source.readline, ""):
        if errors is not None and line.startswith(prefix):
            errors.append(line.strip())
            continue
        in_traceback = in_traceback or line.startswith("Traceback")
        sink = err if (in_traceback or "warning" in line.lower() or "error" in line.lower()
                       or line.startswith("-----")) else out
        sink.write(line)
        sink.flush()
    source.close()


def run_mpi_job(cfg: JobConfig, job, stdout: TextIO, stderr: TextIO, resume: bool = False,
                environ=None, poll_s: float = 0.5, stop_grace_s: float = 10.0) -> None:
    """Run the MPI child to its end (see the module docstring); raises on failure/abort."""
    cmd = mpi_command(cfg, resume, environ)
    print(f"running under MPI with {cfg.mpi_ranks} ranks: {shlex.join(cmd)}", file=stdout,
          flush=True)
    env = dict(os.environ if environ is None else environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    errors: List[str] = []
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, stdout, stderr, None, ""),
                              daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, stdout, stderr, errors,
                                                  f"hetclass {cfg.mode}: error"), daemon=True)]
    for t in pumps:
        t.start()
    try:
        while proc.poll() is None:
            job.abort_check()
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:        # aborted / interrupted: stop the launcher and its ranks
            proc.terminate()
            try:
                proc.wait(timeout=stop_grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in pumps:
            t.join(timeout=5)
    if proc.returncode != 0:
        reason = errors[0].split("error", 1)[1].lstrip(": ") if errors else (
            f"the MPI run ({cmd[0]}) exited with status {proc.returncode}; see run.err")
        if proc.returncode == 2 and errors:
            raise InputError(reason)
        raise HetclassError(reason)


def mpi_nodes(cfg: JobConfig) -> List[Node]:
    """Output nodes of a finished MPI run, read from the files it wrote."""
    from hetclass.stability.outputs import SUMMARY_JSON, TREE_JSON

    from .replicate_modes import _exhaustive_files, _stability_files, nodes_for_files
    if cfg.mode == "classify":
        with open(os.path.join(cfg.job_dir, "run.json")) as fh:
            k = int(json.load(fh)["classes"])
        nodes = classify_nodes(cfg.job_dir, k)
    else:
        name = SUMMARY_JSON if cfg.mode == "stability" else TREE_JSON
        with open(os.path.join(cfg.job_dir, name)) as fh:
            summary = json.load(fh)
        files = _stability_files(summary) if cfg.mode == "stability" else _exhaustive_files(summary)
        nodes = nodes_for_files(cfg.job_dir, files)
    missing = [n.path for n in nodes if not os.path.isfile(n.path)]
    if missing or not nodes:
        raise RuntimeError(f"the MPI run did not write {', '.join(missing) or 'its outputs'}")
    return nodes
