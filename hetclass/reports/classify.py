"""``report.html`` of one classification (``hetclass classify``, ``demo``, the RELION
External job and the Scipion protocol all get it through
:func:`hetclass.outputs.write_classify_outputs`).

What it shows: the run in one table; the class table (size, fraction, confidence, resolution:
``≤ X Å (crop limit)`` when the FSC never fell below 0.143 inside the cropped data, ``not
resolved`` when nothing was); class sizes and changes per EM iteration; the histogram of each
particle's largest class probability; the half-map FSC of every class; central slices and
projections of every class map. With a ``truth`` (the demo) it adds the recovered-versus-true
table, the confusion matrix and the adjusted Rand index.

The report is driven by two inputs: the engine's :class:`hetclass.engine.EMResult` (arrays)
and the ``run.json`` dict (everything else), so it can be rewritten later from a finished run.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import HetclassWarning
from .figures import MAX_MAP_ROWS, fig_confusion, fig_fsc, fig_iterations, fig_map_views, fig_posterior_hist
from .labels import CROP_LIMIT, UNMEASURED, resolution_text
from .page import REPORT_HTML, Page, failure_line, fmt_value, html_table


@dataclass
class Truth:
    """Known truth of simulated data: ``labels`` (n,) 0-based true state of each particle (in
    the classification's particle order) and ``state_names`` (S,)."""

    labels: np.ndarray
    state_names: Sequence[str]
    ari: float


def write_classify_report(path: str, result, run: dict, truth: Optional[Truth] = None) -> List[str]:
    """Write the report of ``result`` (an ``EMResult``) and ``run`` (the run.json dict) to
    ``path`` atomically; returns the figures that could not be drawn ("name: reason")."""
    page = Page("hetclass classification report")
    k = int(result.maps.shape[0])
    labels = np.asarray(result.labels)
    counts = np.bincount(labels[labels >= 0], minlength=k)
    _summary_section(page, run, k, counts)
    if truth is not None:
        _truth_section(page, truth, labels, k)
    _class_section(page, result, run, counts)
    page.heading("Convergence")
    page.paragraph("Left: the fraction of particles in each class after every EM iteration; "
                   "flat lines at the end mean the class sizes settled. Right: the percentage "
                   "of particles that changed class (the run stops below "
                   f"{fmt_value(_option(run, 'convergence_pct'))} %).")
    if result.stats:
        page.figure(lambda: fig_iterations(result.stats,
                                           convergence_pct=_option(run, "convergence_pct")),
                    "class sizes per iteration")
    page.heading("Assignment confidence")
    page.paragraph("Each particle's largest class probability. A peak near 1 means the classes "
                   "are well separated; mass near 1/K means many particles fit several classes "
                   "(overlapping or continuous states, or too much noise).")
    post = np.asarray(result.posteriors)
    if post.size:
        page.figure(lambda: fig_posterior_hist(post.max(1), labels, k), "posterior histogram")
    _fsc_section(page, result, run)
    page.heading("Class maps")
    page.paragraph("Central slices and projections (sums) along z, y and x of each class map, "
                   "at the cropped box used for classification; the full-size maps are "
                   "run_classNNN.mrc." + (f" The first {MAX_MAP_ROWS} classes are shown."
                                          if k > MAX_MAP_ROWS else ""))
    page.figure(lambda: fig_map_views(result.maps, [f"class {j + 1}" for j in range(k)]),
                "class map slices and projections")
    _files_section(page, run)
    page.write(path)
    return page.failures


def _option(run: dict, name: str):
    return (run.get("options") or {}).get(name)


def _summary_section(page: Page, run: dict, k: int, counts: np.ndarray) -> None:
    n = int(run.get("n_particles", int(counts.sum())))
    iters = run.get("iterations") or []
    converged = bool(run.get("converged"))
    page.raw(f"<p class=\"verdict\"><b>{n}</b> particles in <b>{k}</b> classes after "
             f"<b>{len(iters)}</b> EM iterations ("
             f"{'converged' if converged else 'stopped at the iteration limit, not converged'})"
             "</p>")
    timings = run.get("timings_s") or {}
    facts = [
        ("input", run.get("input")),
        ("particles", n), ("classes (K)", k),
        ("target resolution (crop limit)", _angstrom(run.get("target_resolution_A"))),
        ("cropped box", f"{run.get('crop_box_px')} px" if run.get("crop_box_px") else None),
        ("particle mask diameter", _angstrom(run.get("particle_diameter_A"))),
        ("regularisation T", _option(run, "tau2_fudge")),
        ("assignment", "hard" if _option(run, "hard") else "soft (posterior-weighted)"),
        ("seed", _option(run, "seed")),
        ("device", run.get("device")),
        ("MPI ranks", run.get("mpi_ranks")),
        ("resumed from iteration", run.get("resumed_from_iteration") or None),
        ("time", None if "total" not in timings else
         f"{timings['total']:.1f} s (preprocessing {timings.get('preprocess', 0):.1f} s, "
         f"EM {timings.get('em', 0):.1f} s)"),
        ("hetclass version", run.get("hetclass_version")),
    ]
    page.table([], [[name, fmt_value(v, ".4g")] for name, v in facts if v is not None],
               css_class="kv")
    starts = run.get("starts") or []
    if len(starts) > 1:
        kept = next((s for s in starts if s.get("selected")), starts[0])
        scores = ", ".join(f"{s.get('score', float('nan')):.2f}" for s in starts)
        page.paragraph(f"Explored {len(starts)} starts from random references with hard "
                       f"assignments and kept start {int(kept['start']) + 1}, the one with the "
                       f"highest held-out log-evidence per particle ({scores}); the iterations "
                       "shown are its soft refinement.", "note")
    for s in starts:
        for m in s.get("moves") or []:
            a, b = (int(x) + 1 for x in m["merged"])
            verdict = "kept" if m.get("accepted") else "not kept: the start was better"
            what = (f"the particles of classes {a} and {b} split anew" if m["split"] is None
                    else f"classes {a} and {b} merged, class {int(m['split']) + 1} split in two")
            page.paragraph(f"Merge-and-split move on start {int(s['start']) + 1}: {what}; "
                           f"held-out log-evidence {float(m['score']):+.2f} per particle "
                           f"({verdict}).", "note")


def _angstrom(value) -> Optional[str]:
    return None if value is None else f"{float(value):.1f} Å"


def _class_section(page: Page, result, run: dict, counts: np.ndarray) -> None:
    k = len(counts)
    status = list(run.get("resolution_status") or result.resolution_status or [None] * k)
    res = np.asarray(result.resolution_A, dtype=float)
    post = np.asarray(result.posteriors)
    labels = np.asarray(result.labels)
    fractions = np.asarray(result.class_fractions, dtype=float)
    page.heading("Classes")
    rows = []
    for j in range(k):
        mine = post[labels == j, j] if post.size else np.zeros(0)
        cell = resolution_text(res[j], status[j], html=True)
        css = ("limit" if status[j] == CROP_LIMIT else
               "unresolved" if cell == "not resolved" else "")
        rows.append([str(j + 1), str(int(counts[j])), f"{fractions[j]:.3f}",
                     fmt_value(float(mine.mean()) if mine.size else None, ".2f"),
                     f'<span class="{css}">{cell}</span>' if css else cell,
                     f"run_class{j + 1:03d}.mrc"])
    page.raw(html_table(["class", "particles", "fraction", "mean probability",
                         "resolution (FSC 0.143)", "map"], rows, raw_cells=True))
    page.paragraph("particles: particles whose most probable class it is; fraction: the "
                   "posterior-weighted share (rlnClassDistribution); mean probability: the "
                   "average class probability of its particles.", "small")
    if CROP_LIMIT in status:
        limit = max(res[j] for j in range(k) if status[j] == CROP_LIMIT)
        page.paragraph(f"'≤ {limit:.1f} Å (crop limit)': the half-map FSC stays above 0.143 up "
                       f"to the finest shell the classification used ({limit:.1f} Å), so the "
                       "class is at least that good but its resolution was not measured. "
                       "Rerun with a finer --target-res to measure it (slower; classes "
                       "usually differ at low resolution anyway).", "note")
    if UNMEASURED in status:
        page.paragraph("'not resolved': the half-map FSC is below 0.143 from the first shell "
                       "(an empty or very small class).", "note")


def _fsc_section(page: Page, result, run: dict) -> None:
    fsc = np.asarray(result.fsc, dtype=float)
    if fsc.ndim != 2 or not fsc.size:
        return
    b = int(result.maps.shape[-1])
    page.heading("Half-map FSC per class")
    page.paragraph("Fourier shell correlation between the two half-set maps of each class "
                   "(gold standard); the class resolution is where it falls below 0.143 "
                   "(dashed line). The dotted line is the crop limit: the data were cut there, "
                   "so nothing finer is measured.")
    curves = {f"class {j + 1}": fsc[j] for j in range(fsc.shape[0])}
    page.figure(lambda: fig_fsc(curves, b, float(result.pixel_size_A), "half-map FSC",
                                limit_A=run.get("target_resolution_A")), "FSC curves")


def _truth_section(page: Page, truth: Truth, labels: np.ndarray, k: int) -> None:
    names = list(truth.state_names)
    table = np.zeros((len(names), k), dtype=np.int64)
    ok = (labels >= 0) & (truth.labels >= 0)
    np.add.at(table, (np.asarray(truth.labels)[ok], labels[ok]), 1)
    page.heading("Recovered classes versus the truth")
    page.raw(f"<p class=\"verdict\">Adjusted Rand index versus the truth: "
             f"<b>{truth.ari:.3f}</b> (1 = every particle in the right class, 0 = chance)</p>")
    header = ["true state \\ class"] + [f"class {j + 1}" for j in range(k)] + ["total"]
    rows = [[name] + [str(int(v)) for v in table[i]] + [str(int(table[i].sum()))]
            for i, name in enumerate(names)]
    page.table(header, rows)
    notes = []
    for j in range(k):
        col = table[:, j]
        if col.sum() == 0:
            notes.append(f"class {j + 1}: empty")
            continue
        best = int(np.argmax(col))
        notes.append(f"class {j + 1} = {names[best]} ({col[best] / col.sum():.0%} of its "
                     f"particles)")
    page.paragraph("; ".join(notes) + ".")
    page.figure(lambda: fig_confusion(table, names, [f"class {j + 1}" for j in range(k)],
                                      "recovered versus true classes"), "confusion matrix")


_FILES = {
    "run_data.star": "particles with rlnClassNumber and rlnMaxValueProbDistribution "
                     "(every input column kept)",
    "run_model.star": "class fractions, resolutions, FSC and noise spectra (RELION names)",
    "run_class*.mrc": "class map at the original box and pixel size",
    "run_half*_class*_unfil.mrc": "half-set map of a class (for FSC / post-processing)",
    "run_posteriors.npy": "(particles x K) class probabilities, input order",
    "run.json": "parameters, versions, per-iteration statistics, timings",
    "run_particles.cs": "CryoSPARC particles with the classes (for .cs input)",
    "run_class*_particles.cs": "CryoSPARC particles of one class",
    "*.csg": "CryoSPARC group file (Import Result Group)",
    "report.html": "this report",
}


def _files_section(page: Page, run: dict) -> None:
    from .page import describe
    names = sorted(set((run.get("files") or {}).values()) | {REPORT_HTML, "run.json"})
    page.heading("Files")
    page.table(["file", "what it is"], [[n, describe(n, _FILES)] for n in names],
               css_class="kv")


def write_report_or_warn(out_dir: str, result, run: dict, truth: Optional[Truth] = None
                         ) -> Dict[str, str]:
    """Write ``out_dir/report.html``; returns ``{"report.html": path}``, or ``{}`` with one
    warning line when it could not be written. Never raises (a report never fails a run)."""
    path = os.path.join(out_dir, REPORT_HTML)
    try:
        failures = write_classify_report(path, result, run, truth)
    except Exception as exc:  # noqa: BLE001 -- the run's results are already written
        warnings.warn(f"report.html not written: {' '.join(f'{type(exc).__name__}: {exc}'.split())}",
                      HetclassWarning, stacklevel=2)
        return {}
    if failures:
        warnings.warn(failure_line("report.html", failures), HetclassWarning, stacklevel=2)
    return {REPORT_HTML: path}
