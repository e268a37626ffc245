"""Agreement scores between replicate classifications.

All functions take labelings in the convention of :mod:`hetclass.stability.matching`
(0-based classes, ``-1`` = particle absent) and compare replicates only on the particles
present in both. Every score is permutation-invariant.

* :func:`adjusted_rand_index`, :func:`normalized_mutual_info` -- pairwise agreement of two
  labelings (same definitions as scikit-learn's ``adjusted_rand_score`` and
  ``normalized_mutual_info_score`` with the arithmetic mean; written here so that
  scikit-learn is not a run-time dependency).
* :func:`jaccard_band` -- Jaccard bands: < 0.6 unstable, 0.6-0.75 doubtful, >= 0.75
  stable, >= 0.85 highly stable.
* :func:`score_replicates` -- everything for one K: per-class Jaccard to the matched class
  of every other replicate (mean and min over replicate pairs), the random-overlap test
  ``|A & B| > |A| |B| / N`` (SPHIRE's ``n_k^2 / N`` for equal sizes), pairwise ARI/NMI,
  per-particle stability (fraction of replicates agreeing with the consensus label) and
  PAC (proportion of ambiguous clustering) on sampled particle pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .matching import align_replicates, contingency

BANDS = ((0.85, "highly stable"), (0.75, "stable"), (0.6, "doubtful"), (-np.inf, "unstable"))
STABLE_JACCARD = 0.75


def jaccard_band(value: float) -> str:
    """Name of the Jaccard band of ``value`` ("unstable" for NaN)."""
    if value is None or not np.isfinite(value):
        return "unstable"
    for lower, name in BANDS:
        if value >= lower:
            return name
    return "unstable"  # pragma: no cover


def _compact(a: np.ndarray, b: np.ndarray):
    """Rows present in both, relabelled 0..k-1 by their distinct values."""
    a = np.asarray(a)
    b = np.asarray(b)
    ok = (a >= 0) & (b >= 0)
    ua, ia = np.unique(a[ok], return_inverse=True)
    ub, ib = np.unique(b[ok], return_inverse=True)
    return ia.ravel(), ib.ravel(), len(ua), len(ub)


def _comb2(x):
    x = np.asarray(x, dtype=np.float64)
    return x * (x - 1) / 2.0


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie), on rows present in both.

    1.0 for identical partitions up to renaming, about 0 for independent ones. Two
    labelings that are both a single class (or both all-singletons) score 1.0.
    """
    ia, ib, ka, kb = _compact(a, b)
    n = ia.size
    if n == 0:
        return float("nan")
    t = contingency(ia, ib, ka, kb)
    index = _comb2(t).sum()
    sum_a = _comb2(t.sum(axis=1)).sum()
    sum_b = _comb2(t.sum(axis=0)).sum()
    expected = sum_a * sum_b / _comb2(n) if n > 1 else 0.0
    maximum = 0.5 * (sum_a + sum_b)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information / arithmetic mean of the two entropies, on rows present in both.

    1.0 when both labelings are a single class; 0.0 when the mutual information is 0.
    """
    ia, ib, ka, kb = _compact(a, b)
    n = ia.size
    if n == 0:
        return float("nan")
    if ka == kb == 1:
        return 1.0
    t = contingency(ia, ib, ka, kb).astype(np.float64)
    nz = t > 0
    pa = t.sum(axis=1, keepdims=True)
    pb = t.sum(axis=0, keepdims=True)
    outer = (pa @ pb)[nz]
    mi = float((t[nz] / n * (np.log(t[nz] * n) - np.log(outer))).sum())
    if mi <= 0.0:
        return 0.0
    norm = 0.5 * (_entropy(pa.ravel()) + _entropy(pb.ravel()))
    return float(mi / norm)


def pac(labels: np.ndarray, n_pairs: int = 200_000, rng: Optional[np.random.Generator] = None,
        lower: float = 0.1, upper: float = 0.9) -> float:
    """Proportion of ambiguous clustering of a replicate set ``(R, n)``.

    For a particle pair, the consensus index is the fraction of replicates (among those
    containing both particles, at least 2) that put the two in the same class. PAC is the
    fraction of pairs whose index lies strictly inside ``(lower, upper)``: 0 for perfectly
    reproducible classes, larger when pairs are split inconsistently. When the number of
    distinct pairs is at most ``n_pairs`` every pair is used (exact); otherwise
    ``n_pairs`` pairs of distinct particles are drawn with ``rng``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[1]
    if n < 2:
        return float("nan")
    total = n * (n - 1) // 2
    if total <= n_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng() if rng is None else rng
        i = rng.integers(0, n, size=n_pairs)
        j = rng.integers(0, n - 1, size=n_pairs)
        j = j + (j >= i)                      # distinct from i
    li, lj = labels[:, i], labels[:, j]
    both = (li >= 0) & (lj >= 0)
    count = both.sum(axis=0)
    same = ((li == lj) & both).sum(axis=0)
    ok = count >= 2
    if not np.any(ok):
        return float("nan")
    index = same[ok] / count[ok]
    return float(np.mean((index > lower) & (index < upper)))


def pairwise_matrix(labels: np.ndarray, metric) -> np.ndarray:
    """(R, R) symmetric matrix of ``metric(labels[r], labels[s])``, 1 on the diagonal."""
    r = labels.shape[0]
    out = np.eye(r)
    for i in range(r):
        for j in range(i + 1, r):
            out[i, j] = out[j, i] = metric(labels[i], labels[j])
    return out


def jaccard_matrix(a: np.ndarray, b: np.ndarray, k_a: int, k_b: int) -> np.ndarray:
    """(k_a, k_b) Jaccard index ``|A & B| / |A | B|`` of every class pair (rows in both)."""
    t = contingency(a, b, k_a, k_b).astype(np.float64)
    union = t.sum(axis=1)[:, None] + t.sum(axis=0)[None, :] - t
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, t / np.where(union > 0, union, 1), np.nan)


@dataclass
class ClassScore:
    """Scores of one consensus class (0-based ``index``)."""

    index: int
    size: int                       # particles with this consensus label
    fraction: float                 # size / particles with a consensus label
    jaccard_mean: float             # over replicate pairs
    jaccard_min: float
    overlap_pass_fraction: float    # pairs with |A & B| > |A||B|/N
    band: str
    core_size: int                  # members with particle stability >= core threshold
    mean_particle_stability: float
    mean_max_posterior: float       # NaN when posteriors were not given

    @property
    def stable(self) -> bool:
        return bool(np.isfinite(self.jaccard_mean) and self.jaccard_mean >= STABLE_JACCARD)


@dataclass
class KScores:
    """Stability scores of R replicate classifications with the same K.

    Arrays: ``aligned`` (R, n) replicate labels in consensus numbering (-1 = absent);
    ``consensus`` (n,); ``particle_stability`` (n,) in [0, 1] (NaN when never present);
    ``max_posterior`` (n,) mean over replicates of the max posterior (NaN without
    posteriors); ``ari``/``nmi`` (R, R); ``pair_jaccard`` (k, n_pairs) Jaccard of each
    class for each replicate pair (r < s, row-major); ``perms`` (R, k).
    ``set_aside_labels`` (n,) the labels, in consensus numbering, of a replicate left out of
    every score above (:mod:`hetclass.stability.set_aside`), else None.
    """

    k: int
    aligned: np.ndarray
    consensus: np.ndarray
    perms: np.ndarray
    particle_stability: np.ndarray
    max_posterior: np.ndarray
    classes: List[ClassScore]
    ari: np.ndarray
    nmi: np.ndarray
    pair_jaccard: np.ndarray
    pair_overlap_pass: np.ndarray
    pac: float
    core_min_stability: float
    extra: Dict[str, object] = field(default_factory=dict)
    set_aside_labels: Optional[np.ndarray] = None   # (n,) see :mod:`.set_aside`

    @property
    def n_replicates(self) -> int:
        return int(self.aligned.shape[0])

    @property
    def empty_classes(self) -> List[int]:
        """1-based classes that no particle holds in the consensus: the replicates do not
        agree on any particle of theirs, so the K is not supported (a K = 6 whose class 6
        is empty is a K = 5 partition)."""
        return [c.index + 1 for c in self.classes if c.size == 0]

    @property
    def all_stable(self) -> bool:
        """Every class holds particles in the consensus, is stable (mean Jaccard >= 0.75)
        and passes every pair's random-overlap test."""
        return bool(self.classes) and not self.empty_classes and all(
            c.stable and c.overlap_pass_fraction >= 1.0 for c in self.classes)

    def _jaccards(self) -> List[float]:
        """Each class's mean Jaccard; an empty class reproduces nothing (0)."""
        return [0.0 if c.size == 0 else c.jaccard_mean for c in self.classes]

    @property
    def min_class_jaccard(self) -> float:
        vals = self._jaccards()
        return float(np.nanmin(vals)) if vals and np.any(np.isfinite(vals)) else float("nan")

    @property
    def mean_class_jaccard(self) -> float:
        vals = self._jaccards()
        return float(np.nanmean(vals)) if vals and np.any(np.isfinite(vals)) else float("nan")

    def off_diagonal(self, values: np.ndarray) -> float:
        r = values.shape[0]
        if r < 2:
            return float("nan")
        return float(values[~np.eye(r, dtype=bool)].mean())

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-particle arrays); schema in docs/stability.md."""
        def f(x):
            return None if x is None or not np.isfinite(x) else round(float(x), 4)
        ps = self.particle_stability[np.isfinite(self.particle_stability)]
        return {
            "k": self.k,
            "replicates": self.n_replicates,
            "all_stable": self.all_stable,
            "empty_classes": self.empty_classes,
            "min_class_jaccard": f(self.min_class_jaccard),
            "mean_class_jaccard": f(self.mean_class_jaccard),
            "mean_ari": f(self.off_diagonal(self.ari)),
            "mean_nmi": f(self.off_diagonal(self.nmi)),
            "pac": f(self.pac),
            "mean_particle_stability": f(ps.mean() if ps.size else np.nan),
            "core_min_stability": self.core_min_stability,
            "ari_matrix": np.round(self.ari, 4).tolist(),
            "nmi_matrix": np.round(self.nmi, 4).tolist(),
            "classes": [{
                "class_number": c.index + 1, "size": c.size, "fraction": f(c.fraction),
                "jaccard_mean": f(c.jaccard_mean), "jaccard_min": f(c.jaccard_min),
                "band": c.band, "random_overlap_pass_fraction": f(c.overlap_pass_fraction),
                "core_size": c.core_size, "mean_particle_stability": f(c.mean_particle_stability),
                "mean_max_posterior": f(c.mean_max_posterior)} for c in self.classes],
            **{key: value for key, value in self.extra.items()},
        }


def _pair_class_scores(aligned: np.ndarray, k: int):
    """Per class and replicate pair: Jaccard to the Hungarian-matched class, and the
    random-overlap test. ``aligned`` gives each replicate class its consensus identity."""
    r = aligned.shape[0]
    pairs = [(i, j) for i in range(r) for j in range(i + 1, r)]
    jac = np.full((k, len(pairs)), np.nan)
    passed = np.full((k, len(pairs)), np.nan)
    for p, (i, j) in enumerate(pairs):
        t = contingency(aligned[i], aligned[j], k, k)
        n_common = t.sum()
        rows, cols = linear_sum_assignment(t, maximize=True)
        size_i, size_j = t.sum(axis=1), t.sum(axis=0)
        for a, b in zip(rows, cols):
            inter = t[a, b]
            union = size_i[a] + size_j[b] - inter
            if union == 0:
                continue                                   # class empty in both
            jac[a, p] = inter / union
            passed[a, p] = float(n_common > 0 and inter > size_i[a] * size_j[b] / n_common)
    return jac, passed, pairs


def score_replicates(labels: np.ndarray, k: int, posteriors: Optional[Sequence] = None,
                     rng: Optional[np.random.Generator] = None, core_min_stability: float = 0.8,
                     n_pac_pairs: int = 200_000) -> KScores:
    """All stability scores of a replicate set.

    Parameters
    ----------
    labels : (R, n) int, 0-based classes, -1 = particle absent from a replicate. R >= 2.
    k : classes per replicate.
    posteriors : optional R arrays (n, k) (rows of absent particles ignored), giving the
        per-particle mean max posterior.
    rng : generator for PAC pair sampling.
    core_min_stability : a particle belongs to its class's stable core when at least this
        fraction of the replicates containing it agree with its consensus label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    r, n = labels.shape
    if r < 2:
        raise ValueError("stability needs at least 2 replicates")
    aligned, consensus, perms = align_replicates(labels, k)
    present = aligned >= 0
    n_present = present.sum(axis=0)
    agree = ((aligned == consensus[None, :]) & present).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        stability = np.where(n_present > 0, agree / np.maximum(n_present, 1), np.nan)

    max_post = np.full(n, np.nan)
    if posteriors is not None:
        acc = np.zeros(n)
        for rep, post in enumerate(posteriors):
            post = np.asarray(post)
            m = post.max(axis=1)
            ok = present[rep]
            acc[ok] += m[ok]
        with np.errstate(invalid="ignore", divide="ignore"):
            max_post = np.where(n_present > 0, acc / np.maximum(n_present, 1), np.nan)

    jac, passed, _ = _pair_class_scores(aligned, k)
    labelled = consensus >= 0
    sizes = np.bincount(consensus[labelled], minlength=k)
    classes = []
    for c in range(k):
        members = consensus == c
        if sizes[c] > 0:
            # a pair where the class vanished in both replicates counts as a failed match
            jac_c = np.where(np.isfinite(jac[c]), jac[c], 0.0)
            jm, jn = (float(jac_c.mean()), float(jac_c.min())) if jac_c.size else (np.nan, np.nan)
            ov = float(np.where(np.isfinite(passed[c]), passed[c], 0.0).mean()) \
                if jac_c.size else float("nan")
        else:
            jm = jn = ov = float("nan")
        classes.append(ClassScore(
            index=c, size=int(sizes[c]), fraction=float(sizes[c] / max(labelled.sum(), 1)),
            jaccard_mean=jm, jaccard_min=jn, overlap_pass_fraction=ov, band=jaccard_band(jm),
            core_size=int(np.sum(members & (stability >= core_min_stability))),
            mean_particle_stability=float(stability[members].mean()) if sizes[c] else float("nan"),
            mean_max_posterior=float(np.nanmean(max_post[members]))
            if sizes[c] and np.any(np.isfinite(max_post[members])) else float("nan")))

    return KScores(
        k=k, aligned=aligned, consensus=consensus, perms=perms, particle_stability=stability,
        max_posterior=max_post, classes=classes,
        ari=pairwise_matrix(labels, adjusted_rand_index),
        nmi=pairwise_matrix(labels, normalized_mutual_info),
        pair_jaccard=jac, pair_overlap_pass=passed,
        pac=pac(labels, n_pairs=n_pac_pairs, rng=rng), core_min_stability=core_min_stability)


def single_class_scores(n: int, n_replicates: int = 1) -> KScores:
    """The trivial K = 1 entry of a K scan (every particle in class 0, everything 1.0)."""
    aligned = np.zeros((n_replicates, n), dtype=np.int64)
    c = ClassScore(index=0, size=n, fraction=1.0, jaccard_mean=1.0, jaccard_min=1.0,
                   overlap_pass_fraction=1.0, band="highly stable", core_size=n,
                   mean_particle_stability=1.0, mean_max_posterior=1.0)
    one = np.ones((n_replicates, n_replicates))
    return KScores(k=1, aligned=aligned, consensus=np.zeros(n, dtype=np.int64),
                   perms=np.zeros((n_replicates, 1), dtype=np.int64),
                   particle_stability=np.ones(n), max_posterior=np.ones(n), classes=[c],
                   ari=one, nmi=one, pair_jaccard=np.ones((1, 0)),
                   pair_overlap_pass=np.ones((1, 0)), pac=0.0, core_min_stability=1.0,
                   extra={"trivial": True})
