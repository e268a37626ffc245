"""``hetclass_relion``: hetclass as a RELION External job (RELION 3.1, 4.0, 5.0).

Set this executable as the External job's "External executable", pick the particles
(and optionally a 3D reference and a mask), and set hetclass options as "Param label /
value" pairs (``classes`` / ``3``, ``mode`` / ``stability``, ...; see
:data:`hetclass_relion.options.PARAMETERS`). RELION runs it from the project directory::

    hetclass_relion --o External/job004/ --in_parts Select/job003/particles.star \\
        --in_3dref Import/job001/ref.mrc --classes 3 --seed 7 --j 4

``mode=classify`` writes RELION Class3D names into the job directory (``run_data.star``,
``run_model.star``, ``run_classNNN.mrc`` ...); ``stability`` / ``exhaustive`` run the
corresponding ``hetclass`` commands with the job directory as output. Then the output nodes
are registered in ``RELION_OUTPUT_NODES.star`` and ``RELION_JOB_EXIT_SUCCESS`` is written;
every error writes ``RELION_JOB_EXIT_FAILURE`` with a one-line reason on stderr (run.err; exit
code 2 for bad input and operating-system errors such as a full or read-only disk); the job
directory's lock (:mod:`hetclass.io.lock`) is held while the job runs;
``RELION_JOB_ABORT_NOW``, SIGTERM or SIGINT give ``RELION_JOB_EXIT_ABORTED``. Progress
lines go to stdout (run.out). The parameter ``mpi_ranks`` N > 1 runs the work under MPI
(:mod:`hetclass_relion.mpi_launch`).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Callable, List, Optional, Sequence, TextIO

from hetclass import __version__
from hetclass.comm import launched_by_mpi
from hetclass.errors import output_error
from hetclass.io.lock import lock_output
from hetclass.reports.labels import resolution_text

from .markers import JobMarkers
from .mpi_launch import mpi_nodes, run_mpi_job
from .nodes import Node, classify_nodes, detect_relion_version, job_is_continue, write_output_nodes
from .options import (
    PARAMETERS,
    JobConfig,
    build_config,
    check_inputs_exist,
    classify_options,
    parameter_help,
    parse_argv,
)
from .replicate_modes import log_run_estimate, run_replicate_mode

PROG = "hetclass_relion"


# ----- progress ---------------------------------------------------------------------------
def _event_line(event: str, info: dict) -> str:
    """One readable line for a progress event of the engine or the stability code."""
    if event == "iteration":
        parts = [f"iteration {info.get('it')}/{info.get('max_iter')}"]
        if "replicate" in info:
            parts[0] = f"K={info.get('k')} replicate {info['replicate'] + 1}: " + parts[0]
        if info.get("changed_pct") is not None:
            parts.append(f"{float(info['changed_pct']):.2f}% changed class")
        if info.get("first_assigned"):
            parts.append(f"{int(info['first_assigned'])} assigned a class for the first time")
        if info.get("class_fractions") is not None:
            parts.append("class fractions " + " ".join(
                f"{float(f):.3f}" for f in info["class_fractions"]))
        if info.get("resolution_A") is not None:
            res = info["resolution_A"]
            status = info.get("resolution_status") or [None] * len(res)
            parts.append("resolution " + ", ".join(
                resolution_text(r, s) for r, s in zip(res, status)))
        return "; ".join(parts)
    if event == "batch":
        return f"{info.get('stage', 'batch')}: {info.get('done')}/{info.get('total')}"
    if event == "replicate" and "done" in info:
        return (f"K={info.get('k')}: replicate {info['done']}/{info.get('total')} done "
                f"({float(info.get('seconds', 0)):.1f} s)")
    if event == "k_done":
        state = "all classes stable" if info.get("all_stable") else "not all classes stable"
        return f"K={info.get('k')}: {state} ({float(info.get('seconds', 0)):.1f} s)"
    if event == "node":
        what = ("split" if info.get("decision") == "split"
                else f"leaf ({info.get('reason')})")
        return f"node {info.get('id')} ({info.get('n_particles')} particles): {what}"
    if event == "node_start":
        return f"node {info.get('id')} ({info.get('n_particles')} particles): replicates"
    if event == "message":
        return str(info.get("text", "")).strip()
    if event == "explore_start":
        return (f"exploring: start {int(info.get('start', 0)) + 1}/{info.get('n_starts')} "
                "from random references, hard assignments")
    if event == "explore_done":
        scores = ", ".join(f"{s:.2f}" for s in info.get("scores", []))
        return (f"start {int(info.get('selected', 0)) + 1} kept (highest held-out "
                f"log-evidence per particle: {scores}); refining it with soft assignments")
    return (f"{event} " + " ".join(f"{k}={v}" for k, v in info.items())).strip()


def make_progress(stream: TextIO, min_interval_s: float = 10.0) -> Callable[..., None]:
    """Engine progress callback printing one line per event to ``stream`` (run.out).

    Milestones (iterations of a single classification, finished replicates, K values and
    tree nodes) are always printed; frequent events (batches, iterations inside replicates)
    only when nothing was printed for ``min_interval_s`` seconds, so fast runs stay quiet
    and slow stages still show life.
    """
    last = [time.monotonic()]

    def progress(event: str, **info) -> None:
        now = time.monotonic()
        frequent = event == "batch" or (event == "iteration" and "replicate" in info)
        if frequent and now - last[0] < min_interval_s:
            return
        last[0] = now
        print(f"[{time.strftime('%H:%M:%S')}] {_event_line(event, info)}", file=stream,
              flush=True)

    return progress


# ----- classify ---------------------------------------------------------------------------
def _resumes(cfg: JobConfig) -> bool:
    """A job RELION launched as a continuation whose directory holds a checkpoint."""
    from hetclass.checkpoint import CHECKPOINT
    return job_is_continue(cfg.job_dir) and os.path.isfile(os.path.join(cfg.job_dir, CHECKPOINT))


def run_classify_mode(cfg: JobConfig, job: JobMarkers, progress, stdout: TextIO,
                      load_particles=None, run_classify=None) -> List[Node]:
    """Load the particles, classify into the job directory, return the output nodes.

    A job RELION launches as a continuation ("Continue!", e.g. after an abort) resumes from
    the checkpoint of the previous run when there is one; otherwise the directory's earlier
    outputs are overwritten.
    """
    if load_particles is None or run_classify is None:
        from hetclass import pipeline
        load_particles = load_particles or pipeline.load_particles
        run_classify = run_classify or pipeline.run_classify
    options = classify_options(cfg)
    particles = load_particles(cfg.in_parts, project_dir=os.getcwd())
    print(f"read {len(particles)} particles from {cfg.in_parts}", file=stdout, flush=True)
    log_run_estimate(cfg, particles, options, stdout)
    job.abort_check()
    resume = _resumes(cfg)
    if resume:
        print("continuing from the checkpoint of the previous run", file=stdout, flush=True)
    result = run_classify(particles, options, out_dir=cfg.job_dir, resume=resume,
                          overwrite=not resume, progress=progress, abort_check=job.abort_check)
    n_classes = len(result.class_fractions)
    fractions = " ".join(f"{f:.3f}" for f in result.class_fractions)
    print(f"done after {result.n_iter} iterations; class fractions {fractions}",
          file=stdout, flush=True)
    report = (getattr(result, "files", None) or {}).get("report.html")
    if report:
        print(f"report: {report}", file=stdout, flush=True)
    nodes = classify_nodes(cfg.job_dir, n_classes)
    missing = [n.path for n in nodes if not os.path.isfile(n.path)]
    if missing:
        raise RuntimeError(f"the classification did not write {', '.join(missing)}")
    return nodes


def _run_here(cfg: JobConfig, job: JobMarkers, progress, stdout: TextIO, load_particles,
              run_classify, replicate_jobs) -> List[Node]:
    if cfg.mode == "classify":
        return run_classify_mode(cfg, job, progress, stdout, load_particles, run_classify)
    return run_replicate_mode(cfg, job, progress, stdout, load_particles, jobs=replicate_jobs)


# ----- entry point ------------------------------------------------------------------------
def usage() -> str:
    rows = "\n".join(f"  --{name:<18} {parameter_help(name)}" for name in PARAMETERS)
    return (f"usage: {PROG} --o JobDir/ --in_parts particles.star [--in_3dref map.mrc] "
            f"[--in_mask mask.mrc] [--j N] [--<param> <value> ...]\n\n"
            f"hetclass {__version__} as a RELION External job. Parameters (job 'Param label' / "
            f"'Param value' pairs; an empty value means yes for switches, the default "
            f"otherwise):\n{rows}\n")


def _one_line_warning(stream: TextIO):
    """``warnings.showwarning`` replacement: one line per warning in run.err."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"{PROG}: warning: {category.__name__}: {text}", file=stream, flush=True)
    return show


def _apply_gpu_ids(cfg: JobConfig, environ) -> None:
    if cfg.gpu_ids and "CUDA_VISIBLE_DEVICES" not in environ:
        environ["CUDA_VISIBLE_DEVICES"] = cfg.gpu_ids


def main(argv: Optional[Sequence[str]] = None, *, load_particles=None, run_classify=None,
         replicate_jobs=None, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None,
         environ=None, abort_grace_s: Optional[float] = 10.0) -> int:
    """Run one External job; returns the exit code (the markers are what RELION reads).

    ``load_particles`` / ``run_classify`` / ``replicate_jobs`` (mode -> function like
    ``stability_job``) replace the engine functions (tests); ``environ`` (default
    ``os.environ``) receives CUDA_VISIBLE_DEVICES when ``--gpu`` names GPUs.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    opts, notes = parse_argv(argv)
    if "o" not in opts or not opts["o"]:
        if "help" in opts or "h" in opts or not argv:
            print(usage(), file=stdout)
            return 0
        if "version" in opts:
            print(f"{PROG} (hetclass) {__version__}", file=stdout)
            return 0
        print(f"{PROG}: error: --o JobDir/ is required (RELION passes it); nothing was run",
              file=stderr)
        return 2

    try:
        os.makedirs(opts["o"][0], exist_ok=True)
    except OSError as exc:
        why = output_error(exc, opts["o"][0], "cannot create the job directory")
        print(f"{PROG}: error: {why.one_line()}", file=stderr)
        return 2
    job = JobMarkers(opts["o"][0], prog=PROG, stderr=stderr, abort_grace_s=abort_grace_s)
    with job, warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _one_line_warning(stderr)
        print(f"{PROG} (hetclass {__version__}) started in {os.getcwd()}: {' '.join(argv)}",
              file=stdout, flush=True)
        cfg, more = build_config(opts)
        for note in notes + more:
            print(f"{PROG}: warning: {note}", file=stderr, flush=True)
        check_inputs_exist(cfg)
        _apply_gpu_ids(cfg, os.environ if environ is None else environ)
        version = detect_relion_version(cfg.job_dir)
        progress = make_progress(stdout)
        if (cfg.mpi_ranks or 1) > 1 and not launched_by_mpi():   # the child holds the lock
            resume = cfg.mode == "classify" and _resumes(cfg)
            run_mpi_job(cfg, job, stdout, stderr, resume=resume, environ=environ)
            nodes = mpi_nodes(cfg)
        else:
            with lock_output(cfg.job_dir, command=f"{PROG} {cfg.mode}"):
                nodes = _run_here(cfg, job, progress, stdout, load_particles, run_classify,
                                  replicate_jobs)
        job.abort_check()  # an abort asked for while finishing still ends as ABORTED
        write_output_nodes(cfg.job_dir, nodes, version)
        print(f"registered {len(nodes)} output nodes (RELION {version}.x labels); finished",
              file=stdout, flush=True)
    return job.exit_code()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
