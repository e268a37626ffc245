"""``mode=stability`` / ``mode=exhaustive``: replicate classifications inside a RELION job.

Calls the same library functions as ``hetclass stability`` / ``hetclass exhaustive``
(:func:`hetclass.stability.analysis.stability_job`,
:func:`hetclass.stability.exhaustive.exhaustive_job`) with the job directory as output
directory, then returns the output nodes for what they wrote:

* stability: ``consensus_data.star``, ``stable_core_classNNN.star`` and
  ``continuous_particles.star`` (particles), ``consensus_classNNN.mrc`` (maps), the first
  unfiltered half map of each class (half map, so PostProcess can use the pair);
* exhaustive: ``leaves_data.star``, ``leaves_reassigned_data.star`` (every particle
  reassigned among the leaves) and ``leafNN_node<ID>.star`` (particles), the leaf maps and
  the reassigned classes' maps (``leaves_reassigned_classNNN.mrc``), each with its first
  half map.

``summary.json`` and ``report.html`` stay in the job directory (RELION registers only PDF
logs).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, TextIO

from .nodes import Node, project_relative
from .options import JobConfig, classify_options, replicate_values


def _default_jobs() -> Dict[str, Callable]:
    from hetclass.stability.analysis import stability_job
    from hetclass.stability.exhaustive import exhaustive_job
    return {"stability": stability_job, "exhaustive": exhaustive_job}


def nodes_for_files(job_dir: str, names: Iterable[str]) -> List[Node]:
    """Nodes for files (paths relative to ``job_dir``) by name: STAR -> particles, maps ->
    maps, ``*half1*unfil.mrc`` -> half map, other half maps and other files -> none."""
    rel = project_relative(job_dir).rstrip("/")
    nodes: List[Node] = []
    for name in dict.fromkeys(n.replace(os.sep, "/") for n in names):  # unique, in order
        base = os.path.basename(name)
        if base.endswith(".star"):
            kind = "particles"
        elif base.endswith(".mrc") and "half" in base and "unfil" in base:
            if "half1" not in base:
                continue
            kind = "halfmap"
        elif base.endswith(".mrc"):
            kind = "mask" if "mask" in base else "map"
        elif base.endswith(".pdf"):
            kind = "logfile"
        else:
            continue
        nodes.append(Node(f"{rel}/{name}", kind))
    return nodes


def _stability_files(summary: dict) -> List[str]:
    return list((summary.get("files") or {}).values())


def _exhaustive_files(summary: dict) -> List[str]:
    files = [summary["leaves_star"]] if summary.get("leaves_star") else []
    again = summary.get("reassigned") or {}
    if again.get("star"):
        files.append(again["star"])
        files += list(again.get("maps") or [])
        files += [name for pair in again.get("half_maps") or [] for name in pair]
    for leaf in summary.get("leaves") or []:
        files += [leaf[key] for key in ("star", "map") if leaf.get(key)]
        files += list(leaf.get("half_maps") or [])
    return files


def log_run_estimate(cfg: JobConfig, particles, options, stdout: TextIO) -> None:
    """Log the expected time and memory of this job (:func:`hetclass.plan_report.log_estimate`;
    under MPI only rank 0 does)."""
    from hetclass.comm import launched_by_mpi, world_comm
    from hetclass.plan_report import PlanRequest, log_estimate
    if launched_by_mpi() and world_comm().rank != 0:
        return
    mode = cfg.mode if cfg.mode in ("stability", "exhaustive") else "classify"
    ks = cfg.k_values or [options.classes]
    values = replicate_values(cfg)
    request = PlanRequest(mode, ks if mode != "exhaustive" else [2], values["replicates"],
                          values["max_depth"], values["jobs"], values["subsample"])
    log_estimate(particles, options, request, lambda text: print(text, file=stdout, flush=True),
                 ranks=cfg.mpi_ranks or 1)


def run_replicate_mode(cfg: JobConfig, job, progress, stdout: TextIO, load_particles=None,
                       jobs: Optional[Dict[str, Callable]] = None) -> List[Node]:
    """Run ``cfg.mode`` (stability | exhaustive) into ``cfg.job_dir``; return output nodes.

    ``jobs`` maps the mode to a function with the signature of ``stability_job`` /
    ``exhaustive_job`` (tests pass fakes); ``load_particles`` likewise.
    """
    if load_particles is None:
        from hetclass.pipeline import load_particles
    jobs = _default_jobs() if jobs is None else jobs
    options = classify_options(cfg)
    particles = load_particles(cfg.in_parts, project_dir=os.getcwd())
    print(f"read {len(particles)} particles from {cfg.in_parts}", file=stdout, flush=True)
    log_run_estimate(cfg, particles, options, stdout)
    job.abort_check()
    values = replicate_values(cfg)
    common = dict(n_replicates=values["replicates"], subsample=values["subsample"],
                  workers=values["jobs"], particles_path=cfg.in_parts, progress=progress,
                  abort_check=job.abort_check, null_sets=values["null_sets"])
    if cfg.mode == "stability":
        summary, _ = jobs["stability"](particles, options, cfg.job_dir, cfg.k_values,
                                       core_min_stability=values["core_stability"], **common)
        files = _stability_files(summary)
    else:
        summary, _ = jobs["exhaustive"](
            particles, options, cfg.job_dir, min_class_size=values["min_class_size"],
            max_depth=values["max_depth"], k_scan=values["k_scan"], **common)
        files = _exhaustive_files(summary)
    nodes = nodes_for_files(cfg.job_dir, files)
    missing = [n.path for n in nodes if not os.path.isfile(n.path)]
    if missing:
        raise RuntimeError(f"hetclass {cfg.mode} did not write {', '.join(missing)}")
    if not any(n.kind == "particles" for n in nodes):
        raise RuntimeError(f"hetclass {cfg.mode} wrote no particle STAR file in {cfg.job_dir}")
    print(f"{cfg.mode} finished: {len(nodes)} outputs to register", file=stdout, flush=True)
    from hetclass.stability.outputs import REPORT_HTML
    if os.path.isfile(os.path.join(cfg.job_dir, REPORT_HTML)):
        print(f"report: {os.path.join(cfg.job_dir, REPORT_HTML)}", file=stdout, flush=True)
    return nodes
