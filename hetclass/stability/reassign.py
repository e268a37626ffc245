"""Every particle of an exhaustive tree classified once more among the tree's leaves.

The tree splits a node's particles once and never revisits them: a particle put on the
wrong side of the first split stays in that branch, whatever its leaf maps say later.
Measured on bench_stability's ``hierarchy`` (three states, 4000 particles): the leaves
agree with the truth at ARI 0.820, a flat ``hetclass classify --classes 3`` of the same
data at 0.872, and one refinement started from the leaf maps at 0.872.

:func:`reassign_leaves`: with L >= 2 leaves, one soft EM refinement at K = L over every
particle of the tree, started from the leaf partition (references reconstructed from the
leaves, :func:`hetclass.engine.labelled_state`; no exploration, no moves), with the tree's
classification options. Class j of the result is leaf j + 1 (it starts as that leaf and is
refined from there); the leaves' own files stay those of the tree. The classes' maps are
then rebuilt from the reassigned particles as the leaves' maps are (the EM's own maps stop at
the resolution its likelihood used; on ``hierarchy`` they correlated 0.78 with the true maps
against 0.80 rebuilt). The fit is one task of
:func:`.tasks.run_tasks` (key :data:`TASK_KEY`), so it is kept for ``--continue`` and runs
on an MPI rank group like any node's replicate. Seed: the named stream ``("reassign",)`` of
the run's seed (used only to re-seed a class that empties).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Optional

import numpy as np

from .. import seeds

TASK_KEY = "reassign"


def leaf_labels(leaf_rows: List[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """(len(rows),) 0-based leaf of each of ``rows`` (ascending); every row in one leaf."""
    labels = np.full(rows.size, -1, np.int64)
    for j, members in enumerate(leaf_rows):
        labels[np.searchsorted(rows, members)] = j
    if labels.min(initial=0) < 0:
        raise ValueError("every particle of the tree belongs to exactly one leaf")
    return labels


def reassign_leaves(prepared, options, leaf_rows: List[np.ndarray], seed, run: Callable,
                    fit: Optional[Callable] = None):
    """The tree's particles refined at K = number of leaves from the leaf partition.

    ``leaf_rows`` the prepared-particle indices of each leaf, in leaf order; ``run(keys,
    one)`` runs tasks (:func:`.tasks.run_tasks`); ``fit`` replaces the engine's (tests).
    Returns the compact fit (:class:`.tasks.FitSummary`; ``labels`` are
    0-based leaves of the ascending rows) or None with fewer than two leaves. Its maps, half
    maps and FSC are rebuilt from the reassigned particles as the leaves' are (each class's
    particles with weight one, :func:`hetclass.engine.reconstruct`): the fit's own maps are
    the EM's, limited to the resolution its likelihood used.
    """
    if len(leaf_rows) < 2:
        return None
    from ..engine import labelled_state, reconstruct
    from .tasks import compact
    from .views import subset_view
    if fit is None:
        from ..engine import fit
    rows = np.sort(np.concatenate([np.asarray(r, np.int64) for r in leaf_rows]))
    labels = leaf_labels(leaf_rows, rows)
    opts = replace(options, classes=len(leaf_rows))
    every = rows.size == prepared.data.n_total and np.array_equal(rows, np.arange(rows.size))

    def one(key, check):
        view = prepared if every else subset_view(prepared, rows, device=options.device)
        res = fit(view, opts, seed=seeds.stream(seed, "reassign"), abort_check=check,
                  state=labelled_state(view, opts, labels))
        return compact(res)

    res = run([TASK_KEY], one)[TASK_KEY][0]
    rec = reconstruct(prepared, np.eye(len(leaf_rows))[res.labels], rows=rows)
    return replace(res, maps=np.asarray(rec.maps, np.float32),
                   half_maps=np.asarray(rec.half_maps, np.float32), fsc=np.asarray(rec.fsc),
                   resolution_A=np.asarray(rec.resolution_A, np.float64),
                   resolution_status=rec.resolution_status)
