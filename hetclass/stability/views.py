"""Prepared data restricted to some particles, or with other coefficients, without re-reading.

The engine's passes visit every batch of the prepared data and mask the particles a fit does
not use, so ``engine.fit(prepared, rows=small_subset)`` costs as much as a fit of all
particles. Stability classifies subsets often (a class's particles, a tree node, part of a
null set): :func:`subset_view` builds a :class:`hetclass.engine.PreparedData` holding only
those particles (copied from the prepared store, in their global order; the view's particle
``j`` is ``rows[j]``), so a fit costs in proportion to its particles.
:func:`with_coefficients` keeps the particles and replaces their coefficients (null data).

Under MPI each rank keeps its own members of the subset (the view is sharded like the data).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Optional

import numpy as np


def _finish(prepared, data, workspace, device: str):
    from ..prepare import _data_power
    if prepared.workspace.device_pass is not None and device != "cpu":
        from ..gpu import attach
        workspace.device_pass = attach(workspace, device)
    power, ctf_power = _data_power(workspace, workspace.comm)
    return dataclasses.replace(prepared, data=data, workspace=workspace, data_power=power,
                               ctf_power=ctf_power)


def subset_view(prepared, rows, device: str = "cpu"):
    """``prepared`` restricted to the global particle indices ``rows`` (sorted, unique);
    particle ``j`` of the view is ``rows[j]``. Held in memory."""
    from ..fourier_store import MemoryStore
    from ..workspace import Workspace
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    data, ws = prepared.data, prepared.workspace
    pos = np.searchsorted(rows, data.rows)
    inside = pos < rows.size
    inside[inside] = rows[pos[inside]] == data.rows[inside]
    local = np.flatnonzero(inside)
    x, c = data.store.read(local)
    new = dataclasses.replace(
        data, store=MemoryStore(np.ascontiguousarray(x), np.ascontiguousarray(c)),
        rotations=data.rotations[local], group=data.group[local], subset=data.subset[local],
        rows=pos[local].astype(np.int64), n_total=int(rows.size), cache_info={"cache": "subset"})
    workspace = Workspace(new, 2, pad=ws.pad, batch_size=ws.batch_size, comm=ws.comm,
                          threads=ws.threads)
    return _finish(prepared, new, workspace, device)


def with_coefficients(prepared, coefficients: np.ndarray, ctf: Optional[np.ndarray] = None,
                      device: str = "cpu"):
    """``prepared`` with its (local) coefficients replaced: same particles, poses, CTFs,
    batches and slice operators (shared). Held in memory."""
    from ..fourier_store import MemoryStore
    data, ws = prepared.data, prepared.workspace
    if ctf is None:
        ctf = data.ctf
    new = dataclasses.replace(data, store=MemoryStore(coefficients, ctf),
                              cache_info={"cache": "simulated"})
    workspace = copy.copy(ws)          # same batches; operators (same poses) are shared
    workspace.data = new
    workspace.device_pass = None
    return _finish(prepared, new, workspace, device)
