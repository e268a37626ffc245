"""Matching classes across replicate classifications, and consensus labels.

Class numbers of independent classifications are arbitrary, so replicates are compared
only after a permutation that maximises their agreement: the Hungarian assignment
(:func:`scipy.optimize.linear_sum_assignment`) on the contingency table of two labelings.

Conventions used throughout :mod:`hetclass.stability`:

* a labeling is an int array ``(n_particles,)`` of 0-based class indices; ``-1`` marks a
  particle absent from that replicate (sub-sampled replicates, clusterboot-style);
* a replicate set is an int array ``(n_replicates, n_particles)`` of such labelings;
* counts and comparisons use only the particles present in both labelings compared.

Example::

    >>> import numpy as np
    >>> a = np.array([0, 0, 1, 1, 2]); b = np.array([2, 2, 0, 0, 1])
    >>> match_to_reference(a, b, 3)      # class j of b is class perm[j] of a
    array([1, 2, 0])
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment


def contingency(a: np.ndarray, b: np.ndarray, k_a: int, k_b: int) -> np.ndarray:
    """(k_a, k_b) int64 table: ``t[i, j]`` = particles with class i in ``a`` and j in ``b``.

    Particles with ``-1`` in either labeling are left out.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.shape} vs {b.shape}")
    ok = (a >= 0) & (b >= 0)
    if np.any(a[ok] >= k_a) or np.any(b[ok] >= k_b):
        raise ValueError("a label is out of range for the number of classes given")
    flat = np.bincount(a[ok] * k_b + b[ok], minlength=k_a * k_b)
    return flat.reshape(k_a, k_b)


def match_to_reference(reference: np.ndarray, other: np.ndarray, k: int) -> np.ndarray:
    """Permutation ``perm`` (k,) so that ``perm[other]`` agrees best with ``reference``.

    Both labelings use classes ``0..k-1``; the assignment maximises the number of shared
    particles (Hungarian algorithm on the contingency table).
    """
    table = contingency(other, reference, k, k)          # rows: other's classes
    rows, cols = linear_sum_assignment(table, maximize=True)
    perm = np.empty(k, dtype=np.int64)
    perm[rows] = cols
    return perm


def relabel(labels: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Apply ``perm`` to a labeling, keeping ``-1`` (absent) as is."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full_like(labels, -1)
    ok = labels >= 0
    out[ok] = np.asarray(perm)[labels[ok]]
    return out


def majority_vote(aligned: np.ndarray, k: int,
                  tie_break: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Consensus of aligned labelings ``(R, n)``.

    Returns ``(consensus (n,), votes (n, k))`` where ``votes[i, c]`` counts the replicates
    giving particle i class c. A tie goes to ``tie_break[i]`` when it is among the tied
    classes (typically the reference replicate's label), else to the lowest class index.
    Particles absent from every replicate get ``-1``.
    """
    aligned = np.asarray(aligned, dtype=np.int64)
    n = aligned.shape[1]
    votes = np.zeros((n, k), dtype=np.int64)
    for row in aligned:
        ok = row >= 0
        np.add.at(votes, (np.flatnonzero(ok), row[ok]), 1)
    consensus = np.argmax(votes, axis=1).astype(np.int64)
    if tie_break is not None:
        tie_break = np.asarray(tie_break, dtype=np.int64)
        top = votes.max(axis=1)
        idx = np.flatnonzero(tie_break >= 0)
        tied = votes[idx, tie_break[idx]] == top[idx]
        consensus[idx[tied]] = tie_break[idx[tied]]
    consensus[votes.sum(axis=1) == 0] = -1
    return consensus, votes


def _medoid(labels: np.ndarray, k: int) -> int:
    """Index of the replicate agreeing best (summed matched overlap) with all others."""
    r = labels.shape[0]
    agree = np.zeros(r)
    for i in range(r):
        for j in range(i + 1, r):
            t = contingency(labels[i], labels[j], k, k)
            rows, cols = linear_sum_assignment(t, maximize=True)
            s = t[rows, cols].sum() / max(t.sum(), 1)
            agree[i] += s
            agree[j] += s
    return int(np.argmax(agree))


def align_replicates(labels: np.ndarray, k: int, max_rounds: int = 10):
    """Align every replicate to a common class numbering and build consensus labels.

    Parameters
    ----------
    labels : (R, n) int, 0-based classes, ``-1`` = particle absent from that replicate.
    k : number of classes of every replicate.

    Returns
    -------
    aligned : (R, n) int, every replicate renumbered into consensus classes.
    consensus : (n,) int, majority vote of ``aligned`` (``-1`` when never present).
    perms : (R, k) int, ``aligned[r] = perms[r][labels[r]]``.

    The replicate agreeing best with the others (medoid) seeds the numbering; every
    replicate is then re-matched to the current consensus until nothing changes. Consensus
    classes are finally renumbered by decreasing size (class 0 = largest).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (R, n), got shape {labels.shape}")
    r = labels.shape[0]
    ref = _medoid(labels, k) if r > 2 else 0
    target = labels[ref]
    perms = np.tile(np.arange(k), (r, 1))
    consensus = target
    for _ in range(max_rounds):
        new_perms = np.stack([match_to_reference(target, labels[i], k) for i in range(r)])
        aligned = np.stack([relabel(labels[i], new_perms[i]) for i in range(r)])
        consensus, _ = majority_vote(aligned, k, tie_break=aligned[ref])
        if np.array_equal(new_perms, perms) and np.array_equal(consensus, target):
            break
        perms, target = new_perms, consensus
    perms = new_perms
    # renumber consensus classes by decreasing size (stable for equal sizes)
    sizes = np.bincount(consensus[consensus >= 0], minlength=k)
    order = np.argsort(-sizes, kind="stable")          # order[new] = old
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)                          # rank[old] = new
    perms = rank[perms]
    aligned = np.stack([relabel(labels[i], perms[i]) for i in range(r)])
    consensus = relabel(consensus, rank)
    return aligned, consensus, perms


def parent_of_classes(child_labels: np.ndarray, k_child: int, parent_labels: np.ndarray,
                      k_parent: int) -> np.ndarray:
    """(k_child,) index of the parent class holding most particles of each child class.

    Used to place the classes of a larger K under the classes of a smaller K (``-1`` for an
    empty child class).
    """
    t = contingency(child_labels, parent_labels, k_child, k_parent)
    parent = np.argmax(t, axis=1)
    parent[t.sum(axis=1) == 0] = -1
    return parent
