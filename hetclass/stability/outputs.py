"""Files written by ``hetclass stability`` and ``hetclass exhaustive`` (names in one place).

stability (``out_dir``):

``consensus_data.star``          input columns + rlnClassNumber (consensus, 1-based; 0 for a
                                 particle no replicate contained) + rlnHetclassStability
                                 (fraction of replicates agreeing with the consensus) +
                                 rlnMaxValueProbDistribution (max posterior, mean over replicates)
``stable_core_classNNN.star``    the members of class NNN with stability >= core threshold
``consensus_classNNN.mrc``       class map reconstructed from the stable core, original box
                                 and pixel size (+ ``consensus_half{1,2}_classNNN_unfil.mrc``)
``continuous_particles.star``    ("continuous"/"mixed" only) the particles of the continuous
                                 part, for cryoDRGN / cryoSPARC 3DVA
``replicate_labels.npz``         per K an (R, n) int array ``k<K>`` of replicate labels in
                                 consensus numbering (-1 = left out by subsampling)
``summary.json``                 schema in docs/stability.md
``report.html``                  self-contained report

exhaustive (``out_dir``): ``tree.json``, ``leafNN_node<ID>.star`` / ``.mrc`` (+ half maps),
``report.html``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Dict, Optional

import numpy as np

from .. import __version__
from ..io.atomic import atomic_path, atomic_write_json
from ..io.mrc import write_map
from ..io.star import write_particles_star
from ..outputs import to_original_box
from ..reports.labels import resolution_text
from .report import format_key_tables, text_table, write_exhaustive_report, write_stability_report

SCHEMA = "hetclass.stability/1"
TREE_SCHEMA = "hetclass.exhaustive/1"
CONSENSUS_STAR = "consensus_data.star"
CONTINUOUS_STAR = "continuous_particles.star"
LABELS_NPZ = "replicate_labels.npz"
SUMMARY_JSON = "summary.json"
TREE_JSON = "tree.json"
REPORT_HTML = "report.html"
STABILITY_COLUMN = "rlnHetclassStability"


def core_star_name(c: int) -> str:
    return f"stable_core_class{c + 1:03d}.star"


def class_map_name(c: int, prefix: str = "consensus") -> str:
    return f"{prefix}_class{c + 1:03d}.mrc"


def half_map_name(h: int, c: int, prefix: str = "consensus") -> str:
    return f"{prefix}_half{h + 1}_class{c + 1:03d}_unfil.mrc"


def _r(x, d=4):
    if x is None:
        return None
    x = float(x)
    return round(x, d) if np.isfinite(x) else None


def _options_dict(options) -> dict:
    try:
        d = asdict(options)
    except TypeError:
        return {}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]   # numpy stubs: **arrays


def _write_maps(out_dir: str, rec, columns, names, big_box: int, big_psize: float,
                prefix: str = "consensus"):
    """Write full and half maps of ``rec`` columns at the original box (file names
    ``<prefix>_class<NNN>.mrc``, ``<prefix>_half<h>_class<NNN>_unfil.mrc``); returns
    ``{file name: path}``."""
    files = {}
    for col, c in zip(columns, names):
        name = class_map_name(c, prefix)
        path = os.path.join(out_dir, name)
        write_map(path, to_original_box(rec.maps[col], big_box), big_psize)
        files[name] = path
        for h in range(2):
            half = half_map_name(h, c, prefix)
            hp = os.path.join(out_dir, half)
            write_map(hp, to_original_box(rec.half_maps[h, col], big_box), big_psize)
            files[half] = hp
    return files


def write_stability_outputs(out_dir: str, particles, prepared, result, options, cores,
                            particles_path: Optional[str] = None, report: bool = True) -> dict:
    """Write every stability output into ``out_dir`` (created if needed); returns the summary.

    ``particles`` the full :class:`ParticleSet` the prepared data came from; ``result`` a
    :class:`hetclass.stability.analysis.StabilityResult` over ``result.rows`` of it;
    ``cores`` its :class:`hetclass.stability.analysis.StableCores` (the stable-core maps,
    reconstructed beforehand by :func:`hetclass.stability.analysis.stable_cores`).
    """
    os.makedirs(out_dir, exist_ok=True)
    rows = result.rows
    k = result.chosen_k
    scores = result.per_k[k]
    verdict = result.verdict
    files: Dict[str, str] = {}
    big_box = int(particles.box_px[0])
    big_psize = float(particles.pixel_size_A[0])

    columns = _consensus_columns(len(particles), rows, scores)
    path = os.path.join(out_dir, CONSENSUS_STAR)
    write_particles_star(path, particles, columns)
    files[CONSENSUS_STAR] = path
    class_info, class_fsc, class_maps = _write_cores(out_dir, particles, rows, columns, cores,
                                                     scores.to_dict()["classes"], k, big_box,
                                                     big_psize, files)
    cont = _write_continuous(out_dir, particles, rows, columns, verdict, files)

    labels_path = os.path.join(out_dir, LABELS_NPZ)
    _write_npz(labels_path, _replicate_labels(result.per_k)
               or {"k1": np.zeros((1, rows.size), np.int64)})
    files[LABELS_NPZ] = labels_path

    tests = getattr(result, "tests", None) or {}
    summary = {
        "schema": SCHEMA, "hetclass_version": __version__, "command": "stability",
        "input": {"particles": particles_path, "n_particles": int(rows.size)},
        "parameters": {"k_values": result.k_values, "replicates": result.n_replicates,
                       "subsample": result.subsample, "seed": result.seed,
                       "core_min_stability": scores.core_min_stability,
                       "classify_options": _options_dict(options)},
        "recommended_classes": int(verdict.recommended_k),
        "heterogeneity": verdict.heterogeneity,
        "reasons": list(verdict.reasons),
        "consensus_k": int(k),
        "classes": class_info,
        "per_k": _per_k_summary(result, tests),
        "p_values": p_value_table(tests),
        "suggestions": verdict.evidence.get("suggestions") or [],
        "scan": tests.get("scan"),
        "evidence": verdict.evidence,
        "continuous_particles": cont,
        "map_pixel_size_A": big_psize, "map_box_px": big_box,
        "timings_s": {key: _r(v, 2) for key, v in result.seconds.items()},
        "files": {name: os.path.relpath(p, out_dir) for name, p in files.items()},
    }
    if report:
        summary["files"][REPORT_HTML] = REPORT_HTML
        crop_box = int(class_maps[0].shape[0]) if class_maps else big_box
        write_stability_report(os.path.join(out_dir, REPORT_HTML), summary, result, class_maps,
                               class_fsc, crop_box, float(prepared.pixel_size_A))
    summary["files"][SUMMARY_JSON] = SUMMARY_JSON
    atomic_write_json(os.path.join(out_dir, SUMMARY_JSON), summary)
    return summary


def _consensus_columns(n_all: int, rows: np.ndarray, scores) -> Dict[str, np.ndarray]:
    """The per-particle STAR columns over the whole input (n_all,): consensus class (1-based;
    0 for rows outside ``rows``), stability and mean max posterior."""
    class_number = np.zeros(n_all, dtype=np.int64)
    stability = np.zeros(n_all)
    max_post = np.zeros(n_all)
    class_number[rows] = scores.consensus + 1
    stability[rows] = np.nan_to_num(scores.particle_stability, nan=0.0)
    max_post[rows] = np.nan_to_num(scores.max_posterior, nan=0.0)
    return {"rlnClassNumber": class_number, STABILITY_COLUMN: np.round(stability, 4),
            "rlnMaxValueProbDistribution": np.round(max_post, 6)}


def _write_cores(out_dir: str, particles, rows: np.ndarray, columns: Dict[str, np.ndarray], cores,
                 class_dicts: list, k: int, big_box: int, big_psize: float, files: Dict[str, str]):
    """Write the stable-core maps and STAR files (added to ``files``); returns the summary's
    per-class entries and, for the report, the core FSC curves and maps."""
    rec, have = cores.recon, cores.have
    if have:
        files.update(_write_maps(out_dir, rec, range(len(have)), have, big_box, big_psize))
    class_info, class_fsc, class_maps = [], {}, []
    for c in range(k):
        info = class_dicts[c]
        members = rows[cores.core[c]]
        if members.size:
            p = os.path.join(out_dir, core_star_name(c))
            sub = particles.take(members)
            write_particles_star(p, sub, {key: v[members] for key, v in columns.items()})
            files[core_star_name(c)] = p
            col = have.index(c)
            info["core_resolution_A"] = _r(rec.resolution_A[col], 2)
            if getattr(rec, "resolution_status", None):   # measured / crop_limit / unmeasured
                info["core_resolution_status"] = rec.resolution_status[col]
            info["core_star"] = core_star_name(c)
            info["map"] = class_map_name(c)
            info["half_maps"] = [half_map_name(0, c), half_map_name(1, c)]
            class_fsc[f"class {c + 1}"] = np.asarray(rec.fsc[col])
            class_maps.append(rec.maps[col])
        else:
            info.update({"core_resolution_A": None, "core_star": None, "map": None,
                         "half_maps": None})
        class_info.append(info)
    return class_info, class_fsc, class_maps


def _write_continuous(out_dir: str, particles, rows: np.ndarray, columns: Dict[str, np.ndarray],
                      verdict, files: Dict[str, str]) -> Optional[dict]:
    """For a continuous or mixed verdict, the particles of the continuous part as their own STAR
    file (added to ``files``); its summary entry, None otherwise."""
    if not (verdict.heterogeneity in ("continuous", "mixed") and verdict.affected.any()):
        return None
    members = rows[verdict.affected]
    p = os.path.join(out_dir, CONTINUOUS_STAR)
    write_particles_star(p, particles.take(members), {key: v[members] for key, v in columns.items()})
    files[CONTINUOUS_STAR] = p
    return {"star": CONTINUOUS_STAR, "n_particles": int(members.size),
            "note": "particles of the continuous part, with their poses and CTF, ready "
                    "for cryoDRGN or cryoSPARC 3D variability analysis"}


def _replicate_labels(per_k) -> Dict[str, np.ndarray]:
    """``replicate_labels.npz``: ``k<K>`` (R, n) the replicates' labels in consensus
    numbering; ``k<K>_set_aside`` (n,) those of a replicate left out of K's scores."""
    out = {}
    for kk, s in sorted(per_k.items()):
        if kk >= 2:
            out[f"k{kk}"] = s.aligned
            if s.set_aside_labels is not None:
                out[f"k{kk}_set_aside"] = s.set_aside_labels
    return out


def _per_k_summary(result, tests: dict) -> Dict[str, dict]:
    """The summary's ``per_k`` entries: scores, timing, distinguishability and replicate
    resolutions per K."""
    per_k = {}
    for kk, s in sorted(result.per_k.items()):
        d = s.to_dict()
        d["seconds"] = _r(result.seconds.get(f"k{kk}"), 2)
        pw = (tests.get("distinguishability") or {}).get(str(kk))
        if pw and pw["pairs"]:
            ps = [p["p_value"] for p in pw["pairs"] if p["p_value"] is not None]
            d["distinguishable"] = pw["all_distinguishable"]
            d["largest_pair_p"] = max(ps) if ps else None
        if kk in result.runs:
            d["replicate_resolution_A"] = np.round(result.runs[kk].resolution_A, 2).tolist()
            d["replicate_iterations"] = [len(h) for h in result.runs[kk].histories]
        per_k[str(kk)] = d
    return per_k


def p_value_table(tests: dict) -> Optional[dict]:
    """Every p-value of the run in one place: the heterogeneity test (K = 2 maps against the
    null), the distinguishability of every class pair at every K, the within-class tests."""
    if not tests:
        return None
    het = tests.get("heterogeneity_test") or {}
    return {
        "alpha": het.get("alpha"),
        "heterogeneity": het.get("p_value"),
        "distinguishability": {k: [{"classes": p["classes"], "p_value": p["p_value"]}
                                   for p in v["pairs"]]
                               for k, v in (tests.get("distinguishability") or {}).items()},
        "within_class": {c: rec.get("p_value")
                         for c, rec in (tests.get("within_class") or {}).items()}}


def leaf_name(i: int, node_id: str) -> str:
    return f"leaf{i + 1:02d}_node{node_id}"


def write_exhaustive_outputs(out_dir: str, particles, prepared, root, options, parameters: dict,
                             particles_path: Optional[str] = None, report: bool = True,
                             reassigned=None) -> dict:
    """Write ``tree.json``, leaf STAR files and maps, and the report; returns the tree summary.

    ``root`` the :class:`hetclass.stability.exhaustive.Node` from ``explore``;
    ``reassigned`` the fit of :func:`hetclass.stability.reassign.reassign_leaves` (None:
    not run), written to ``leaves_reassigned_data.star`` and its class maps.
    """
    os.makedirs(out_dir, exist_ok=True)
    big_box = int(particles.box_px[0])
    big_psize = float(particles.pixel_size_A[0])
    leaves = []
    leaf_of = np.zeros(len(particles), dtype=np.int64)
    for i, leaf in enumerate(root.leaves()):
        leaf_of[leaf.rows] = i + 1
    for i, leaf in enumerate(root.leaves()):
        name = leaf_name(i, leaf.node_id)
        star = os.path.join(out_dir, name + ".star")
        write_particles_star(star, particles.take(leaf.rows),
                             {"rlnClassNumber": np.full(leaf.n_particles, i + 1)})
        entry = {"id": leaf.node_id, "n_particles": leaf.n_particles, "reason": leaf.reason,
                 "note": getattr(leaf, "note", None),
                 "resolution_A": _r(leaf.resolution_A, 2),
                 "resolution_status": leaf.resolution_status, "star": name + ".star"}
        if leaf.map is not None:
            write_map(os.path.join(out_dir, name + ".mrc"), to_original_box(leaf.map, big_box), big_psize)
            entry["map"] = name + ".mrc"
            for h in range(2):
                hn = f"{name}_half{h + 1}_unfil.mrc"
                write_map(os.path.join(out_dir, hn), to_original_box(leaf.half_maps[h], big_box),
                          big_psize)
            entry["half_maps"] = [f"{name}_half1_unfil.mrc", f"{name}_half2_unfil.mrc"]
        leaves.append(entry)
    all_star = os.path.join(out_dir, "leaves_data.star")
    write_particles_star(all_star, particles, {"rlnClassNumber": leaf_of})
    moved = _write_reassigned(out_dir, particles, leaf_of, reassigned, big_box, big_psize)
    null = getattr(root, "null", None)
    summary = {"schema": TREE_SCHEMA, "hetclass_version": __version__, "command": "exhaustive",
               "input": {"particles": particles_path, "n_particles": int(root.n_particles)},
               "parameters": {**parameters, "classify_options": _options_dict(options)},
               "leaves": leaves, "leaves_star": "leaves_data.star", "reassigned": moved,
               "null": None if null is None else null.to_dict(), "tree": root.to_dict()}
    if report:
        maps = [lf.map for lf in root.leaves() if lf.map is not None]
        names = [f"leaf {i + 1} ({lf.node_id})" for i, lf in enumerate(root.leaves())
                 if lf.map is not None]
        tests = {n.node_id: n.map_test for n in root.walk() if n.map_test}
        write_exhaustive_report(os.path.join(out_dir, REPORT_HTML), summary, maps, names, tests)
    atomic_write_json(os.path.join(out_dir, TREE_JSON), summary)
    return summary


REASSIGNED_STAR = "leaves_reassigned_data.star"
REASSIGNED_PREFIX = "leaves_reassigned"


def _write_reassigned(out_dir: str, particles, leaf_of: np.ndarray, reassigned,
                      big_box: int, big_psize: float) -> Optional[dict]:
    """``leaves_reassigned_data.star`` (every particle: ``rlnClassNumber`` the leaf it was
    reassigned to, ``rlnHetclassTreeLeaf`` its leaf in the tree, the max posterior), the
    refined class maps and half maps (``leaves_reassigned_class<NNN>.mrc``, ...) and the
    summary entry; None when no reassignment ran."""
    if reassigned is None:
        return None
    labels = np.asarray(reassigned.labels, np.int64) + 1
    post = np.asarray(reassigned.posteriors)
    write_particles_star(os.path.join(out_dir, REASSIGNED_STAR), particles,
                         {"rlnClassNumber": labels, "rlnHetclassTreeLeaf": leaf_of,
                          "rlnMaxValueProbDistribution": post.max(axis=1)})
    k = post.shape[1]
    _write_maps(out_dir, reassigned, range(k), range(k), big_box, big_psize, REASSIGNED_PREFIX)
    moved = labels != leaf_of
    return {"star": REASSIGNED_STAR, "classes": int(k),
            "maps": [class_map_name(c, REASSIGNED_PREFIX) for c in range(k)],
            "half_maps": [[half_map_name(h, c, REASSIGNED_PREFIX) for h in range(2)]
                          for c in range(k)],
            "resolution_A": [_r(v, 2) for v in np.asarray(reassigned.resolution_A, float)],
            "resolution_status": reassigned.resolution_status,
            "particles_moved": int(moved.sum()), "fraction_moved": _r(float(moved.mean()), 4),
            "class_sizes": np.bincount(labels - 1, minlength=k).tolist(),
            "iterations": len(reassigned.stats),
            "note": "every particle classified once more among the leaves (one EM refinement "
                    "at K = number of leaves, started from the leaves): a particle put on the "
                    "wrong side of an early split joins the leaf whose map explains it best"}


def stability_key_tables(summary: dict) -> str:
    """Text tables for the CLI (same content as the report's)."""
    return format_key_tables(summary)


def exhaustive_key_table(summary: dict) -> str:
    rows = [[str(i + 1), lf["id"], str(lf["n_particles"]), lf["reason"] or "-",
             resolution_text(lf["resolution_A"], lf.get("resolution_status")), lf["star"]]
            for i, lf in enumerate(summary["leaves"])]
    text = "leaves:\n" + text_table(["leaf", "node", "particles", "reason", "resolution", "star"],
                                    rows)
    moved = summary.get("reassigned")
    if moved:
        text += (f"\nreassigned among the leaves: {moved['particles_moved']} particles "
                 f"({100 * moved['fraction_moved']:.1f} %) changed leaf; sizes "
                 f"{', '.join(str(n) for n in moved['class_sizes'])} in {moved['star']}")
    return text
