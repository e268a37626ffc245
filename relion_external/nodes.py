"""``RELION_OUTPUT_NODES.star``: how an External job tells RELION what it produced.

RELION reads this file from the job directory once the job has written
``RELION_JOB_EXIT_SUCCESS``. Which column it reads depends on the version:

======= ===========================================================================
3.1     ``_rlnPipeLineNodeName`` + ``_rlnPipeLineNodeType`` (integer)
4.0     ``_rlnPipeLineNodeName`` + ``_rlnPipeLineNodeTypeLabel`` (string, int ignored)
5.0     as 4.0, with 5.0's own labels (4.0 labels are not translated)
======= ===========================================================================

We always write both columns (3.1.3 warns about the extra label column and uses the
integer) and choose the label for the version found in ``JobDir/job.star``
(:func:`detect_relion_version`). Node names are paths relative to the RELION project
directory, e.g. ``External/job004/run_data.star``.

Example::

    nodes = [Node("External/job004/run_data.star", "particles"),
             Node("External/job004/run_class001.mrc", "map")]
    write_output_nodes("External/job004/", nodes)   # version read from job.star
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, List, Optional

OUTPUT_NODES_FILE = "RELION_OUTPUT_NODES.star"

# RELION 3.1 integer node types (src/pipeline_jobs.h, 3.1.3)
NODE_TYPE_INT = {
    "particles": 3,   # particle STAR file
    "map": 6,         # single 3D map
    "mask": 7,        # 3D mask
    "model": 8,       # model.star (class selection in 3.1)
    "optimiser": 9,   # optimiser.star
    "halfmap": 10,    # unfiltered half map
    "logfile": 13,    # PDF log file
}

# Version-specific type labels. ``{ext}`` is the file's extension (logfile only).
_LABELS = {
    4: {
        "particles": "ParticlesData.star.relion",
        "particles.class3d": "ParticlesData.star.relion.class3d",
        "map": "DensityMap.mrc",
        "map.class3d": "DensityMap.mrc.relion.class3d",
        "mask": "Mask3D.mrc",
        "model": "ProcessData.star.relion.class3d.model",
        "optimiser": "ProcessData.star.relion.optimiser",
        "optimiser.class3d": "ProcessData.star.relion.optimiser.class3d",
        "halfmap": "DensityMap.mrc.halfmap",
        "logfile": "LogFile.{ext}.relion",
    },
    5: {
        "particles": "ParticleGroupMetadata.star.relion",
        "particles.class3d": "ParticleGroupMetadata.star.relion.class3d",
        "map": "DensityMap.mrc",
        "map.class3d": "DensityMap.mrc.relion.class3d",
        "mask": "Mask3D.mrc",
        "model": "ProcessData.star.relion.class3d.model",
        "optimiser": "OptimiserData.star.relion",
        "optimiser.class3d": "OptimiserData.star.relion.class3d",
        "halfmap": "DensityMap.mrc.halfmap",
        "logfile": "LogFile.{ext}.relion",
    },
}
# 3.x ignores the label column; write the 4.0 labels there (harmless, and readable).
_LABELS[3] = _LABELS[4]

# ``# version`` number each RELION generation writes in its STAR headers
_STAR_VERSION = {3: 30001, 4: 30001, 5: 50001}


@dataclass(frozen=True)
class Node:
    """One output node.

    path : project-relative path of the file (no whitespace: RELION cannot store it).
    kind : one of :data:`NODE_TYPE_INT` keys.
    class3d : label it as a 3D-classification product (particles, maps, optimiser),
        like RELION's Class3D job does in 4.0/5.0; ignored for other kinds.
    """

    path: str
    kind: str
    class3d: bool = True

    def type_int(self) -> int:
        return NODE_TYPE_INT[self.kind]

    def type_label(self, version: int) -> str:
        table = _LABELS[version]
        key = f"{self.kind}.class3d"
        label = table[key] if (self.class3d and key in table) else table[self.kind]
        ext = os.path.splitext(self.path)[1].lstrip(".").lower() or "txt"
        return label.format(ext=ext)


def detect_relion_version(job_dir: str) -> int:
    """RELION generation (3, 4 or 5) that launched the job, read from ``job_dir/job.star``.

    RELION writes ``job.star`` before launching the job. 3.x writes no
    ``_rlnJobTypeLabel``; 4.x writes the label under ``# version 30001``; 5.x writes
    ``# version 50001``. A missing or unreadable file means 3 (the integer column is
    then the one that counts; the label column still carries 4.0 labels).
    """
    path = os.path.join(job_dir, "job.star")
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return 3
    versions = [int(v) for v in re.findall(r"^\s*#\s*version\s+(\d+)", text, flags=re.M)]
    if versions and max(versions) >= 50000:
        return 5
    if re.search(r"^\s*_rlnJobTypeLabel\b", text, flags=re.M):
        return 4
    return 3


def job_is_continue(job_dir: str) -> bool:
    """True when ``job_dir/job.star`` says RELION launched the job as a continuation
    (``_rlnJobIsContinue 1``: the GUI's "Continue!" on an existing job)."""
    try:
        with open(os.path.join(job_dir, "job.star"), "r", encoding="utf-8",
                  errors="replace") as fh:
            text = fh.read()
    except OSError:
        return False
    match = re.search(r"^\s*_rlnJobIsContinue\s+(\S+)", text, flags=re.M)
    return bool(match) and match.group(1).strip('"').lower() in ("1", "true", "yes")


def project_relative(path: str, project_dir: str = ".") -> str:
    """``path`` relative to the RELION project directory, with ``/`` separators.

    RELION gives and expects project-relative paths; an absolute path inside the
    project is converted, one outside it is kept absolute.
    """
    project_abs = os.path.abspath(project_dir)
    path_abs = os.path.abspath(os.path.join(project_abs, path))
    rel = os.path.relpath(path_abs, project_abs)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return path_abs.replace(os.sep, "/")
    return rel.replace(os.sep, "/")


def format_output_nodes(nodes: Iterable[Node], version: int) -> str:
    """Text of ``RELION_OUTPUT_NODES.star`` with name, integer type and ``version``'s label."""
    if version not in _LABELS:
        raise ValueError(f"unknown RELION version {version!r}; expected 3, 4 or 5")
    lines = ["", f"# version {_STAR_VERSION[version]}", "", "data_output_nodes", "", "loop_",
             "_rlnPipeLineNodeName #1", "_rlnPipeLineNodeType #2", "_rlnPipeLineNodeTypeLabel #3"]
    for node in nodes:
        if not node.path or any(ch.isspace() for ch in node.path):
            raise ValueError(f"RELION cannot register a node path with whitespace: {node.path!r}")
        lines.append(f"{node.path} {node.type_int()} {node.type_label(version)}")
    lines.append("")
    return "\n".join(lines) + "\n"


def write_output_nodes(job_dir: str, nodes: Iterable[Node], version: Optional[int] = None) -> str:
    """Write ``job_dir/RELION_OUTPUT_NODES.star`` atomically; return its path.

    ``version`` defaults to :func:`detect_relion_version` of ``job_dir``.
    """
    if version is None:
        version = detect_relion_version(job_dir)
    text = format_output_nodes(list(nodes), version)
    path = os.path.join(job_dir, OUTPUT_NODES_FILE)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def classify_nodes(job_dir: str, n_classes: int) -> List[Node]:
    """Class3D-like nodes: particles (3), model (8), one map per class (6)."""
    rel = project_relative(job_dir).rstrip("/")
    nodes = [Node(f"{rel}/run_data.star", "particles"), Node(f"{rel}/run_model.star", "model")]
    nodes += [Node(f"{rel}/run_class{k:03d}.mrc", "map") for k in range(1, n_classes + 1)]
    return nodes
