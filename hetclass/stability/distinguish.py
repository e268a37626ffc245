"""Do two classes differ beyond the null, and are their particles two groups or a spread?

**Map statistic.** For two class maps with half maps, ``log T`` with
``T = |x_a - x_b|^2 / (noise_a + noise_b)``: the squared distance of the maps, each made
zero-mean inside the solvent mask and divided by its norm, over the noise of that distance
estimated from the half maps (:func:`hetclass.stability.verdict.map_distances`); where
the STAR poses have measurable errors, after the best rigid motion of one map onto the
other (:mod:`.rigid_fit`, :mod:`.pose_spread`; ``NullModel.aligned``). Without
selection two maps of the same state give ``T`` about 1; classes carved by EM out of one
state give more, by an amount that depends on the number of particles. :class:`NullModel`
holds ``log T`` of K = 2 classifications of null data sets (:mod:`.null`) at several sizes
and predicts its distribution at any size: a straight line in ``log n`` whose scatter also
changes with ``log n`` (weighted least squares), with Student-t prediction intervals; a
statistic's p-value is the chance that the null gives a value at
least as large.

**Position along a split.** For a K = 2 classification, each particle's log-likelihood ratio
between the two class references (the engine's gold-standard references, noise spectrum and
likelihood shells) is ``LLR_i = D_i u_i + e_i``: ``D_i = sum |CTF (P r_1 - P r_2)|^2 /
sigma2`` is the separation of the two references for this particle (pose, CTF), ``u_i`` its
position (+1 at class 1's map, -1 at class 2's) and the noise ``e_i`` has variance
``2 D_i``. So ``u_i = LLR_i / D_i`` is the position measured with a known error
``sqrt(2 / D_i)``. :func:`shape_test` fits the distribution of the true positions under
three models by maximum likelihood, the known errors deconvolved: two point masses
(discrete states), a uniform interval and a Gaussian (a continuum), and compares them with
the Bayesian information criterion. Each model also fits one scale of the errors (within
``ERROR_SCALE_BOUNDS``): the references are estimates, so the errors are somewhat larger than
``sqrt(2 / D_i)``, and two groups blurred by underestimated errors must not pass for a
spread. The references are each half set's *other* half's class maps (the particle's own
noise is not in the map it is compared with: no selection bias towards two groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
from scipy import optimize, special, stats

from .rigid_fit import aligned_ratio
from .verdict import _r, map_distances

MIN_CLASS_FRACTION = 0.02    # a K = 2 split with a smaller class has no map statistic
SHAPE_BIC_MARGIN = 10.0      # BIC difference that decides between two and a spread
ERROR_SCALE_BOUNDS = (0.5, 3.0)  # the known position errors may be off by this factor


# ----- map statistic ------------------------------------------------------------------------
def log_ratio_matrix(maps: np.ndarray, half_maps: np.ndarray,
                     mask: Optional[np.ndarray] = None, aligned: bool = False) -> np.ndarray:
    """(K, K) ``log T`` of every class pair (NaN on the diagonal). ``maps`` (K, b, b, b),
    ``half_maps`` (2, K, b, b, b). ``aligned``: after the best rigid motion of one map onto
    the other (:func:`hetclass.stability.rigid_fit.aligned_ratio`; data with pose errors)."""
    if aligned:
        ratio = aligned_ratio(maps, half_maps, mask)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.log(np.where(ratio > 0, ratio, np.nan))
    else:
        _, raw2, noise2, _ = map_distances(maps, half_maps, mask)
        denom = noise2[:, None] + noise2[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.log(np.where(denom > 0, raw2 / np.where(denom > 0, denom, 1.0), np.nan))
    np.fill_diagonal(out, np.nan)
    return out


def split_log_ratio(res, mask: Optional[np.ndarray] = None, aligned: bool = False) -> float:
    """``log T`` of the two classes of a K = 2 result (NaN when a class holds less than
    :data:`MIN_CLASS_FRACTION` of the particles: a collapsed split has no statistic)."""
    labels = np.asarray(res.labels)
    labels = labels[labels >= 0]
    if labels.size == 0 or np.bincount(labels, minlength=2).min() < MIN_CLASS_FRACTION * labels.size:
        return float("nan")
    return float(log_ratio_matrix(res.maps, res.half_maps, mask, aligned)[0, 1])


def replicate_log_ratios(maps: np.ndarray, half_maps: np.ndarray, perms: np.ndarray,
                         mask: Optional[np.ndarray] = None, aligned: bool = False) -> np.ndarray:
    """(R, K, K) ``log T`` of every consensus class pair in every replicate. ``maps``
    (R, K, b, b, b), ``half_maps`` (R, 2, K, b, b, b); replicate class j is consensus class
    ``perms[r, j]``."""
    r_count, k = perms.shape
    out = np.full((r_count, k, k), np.nan)
    for r in range(r_count):
        m = log_ratio_matrix(maps[r], half_maps[r], mask, aligned)
        out[r][np.ix_(perms[r], perms[r])] = m
    return out


@dataclass
class NullModel:
    """``log T`` of null K = 2 classifications (``values``) at ``sizes`` particles;
    ``aligned``: the statistic is taken after the best rigid motion (the STAR poses have
    measurable errors; every statistic tested against this null is taken alike)."""

    sizes: np.ndarray
    values: np.ndarray
    aligned: bool = False

    def __post_init__(self):
        ok = np.isfinite(self.values) & (np.asarray(self.sizes) > 0)
        self.sizes = np.asarray(self.sizes, dtype=np.float64)[ok]
        self.values = np.asarray(self.values, dtype=np.float64)[ok]

    @property
    def usable(self) -> bool:
        return self.values.size >= 3

    def predict(self, n: float):
        """``(mean, prediction sd, degrees of freedom)`` of ``log T`` at ``n`` particles.

        The mean is a straight line in ``log n``. The scatter is not the same at every size
        (null classifications of a quarter of the particles scatter several times more than
        those of all of them), so with two or more sizes its variance is log-linear in
        ``log n`` too, fitted to the squared residuals by maximum likelihood
        (:func:`_variance_line`), and the line
        is fitted by weighted least squares; the variance line is not extrapolated beyond
        the sizes the null ran at. Degrees of freedom: values less the four parameters.
        Fewer than six values: one scatter for all sizes (:func:`_line_prediction`).
        """
        x, y = np.log(self.sizes), self.values
        m = y.size
        x0 = np.log(max(float(n), 1.0))
        if m < 6 or float(np.ptp(x)) < 1e-3:
            return _line_prediction(x, y, x0)
        design = np.stack([np.ones(m), x], axis=1)
        gamma = _variance_line(design, y - design @ _wls(design, y, np.ones(m)))
        for _ in range(3):
            beta = _wls(design, y, np.exp(-(design @ gamma)))
            gamma = _variance_line(design, y - design @ beta)
        weight = np.exp(-(design @ gamma))
        beta = _wls(design, y, weight)
        resid = y - design @ beta
        df = m - 4
        scale = float(np.sum(weight * resid ** 2) / max(m - 2, 1))
        cov = np.linalg.inv(design.T @ (design * weight[:, None]))
        at = np.array([1.0, x0])
        at_var = np.array([1.0, float(np.clip(x0, x.min(), x.max()))])
        var = scale * (float(np.exp(at_var @ gamma)) + float(at @ cov @ at))
        return float(at @ beta), float(max(np.sqrt(var), 1e-6)), int(max(df, 1))

    def p_value(self, observed: float, n: float) -> float:
        """Chance that a null classification of ``n`` particles gives ``log T`` at least
        ``observed`` (Student t prediction); NaN when there is no statistic or no null."""
        if not self.usable or observed is None or not np.isfinite(observed):
            return float("nan")
        mean, sd, df = self.predict(n)
        return float(stats.t.sf((observed - mean) / sd, df))

    def to_dict(self) -> dict:
        out: Dict[str, Any] = {"sizes": [int(s) for s in self.sizes],
               "log_ratio": [_r(v) for v in self.values],
               "statistic": "after the best rigid motion" if self.aligned else "plain"}
        if self.usable:
            n_all = float(self.sizes.max())
            mean, sd, df = self.predict(n_all)
            out.update({"at_n": int(n_all), "mean": _r(mean), "prediction_sd": _r(sd),
                        "df": df})
        return out


def _line_prediction(x: np.ndarray, y: np.ndarray, x0: float):
    """``(mean, prediction sd, df)`` at ``x0`` of an ordinary least-squares line in ``x``
    (the mean of ``y`` when there are fewer than four values or one ``x``), one scatter."""
    m = y.size
    xbar = x.mean()
    sxx = float(np.sum((x - xbar) ** 2))
    slope_ok = m >= 4 and sxx > 1e-6
    if slope_ok:
        slope = float(np.sum((x - xbar) * (y - y.mean())) / sxx)
        df = m - 2
    else:
        slope, df = 0.0, m - 1
    resid = y - (y.mean() + slope * (x - xbar))
    s = float(np.sqrt(np.sum(resid ** 2) / max(df, 1)))
    lever = (x0 - xbar) ** 2 / sxx if slope_ok else 0.0
    sd = s * np.sqrt(1.0 + 1.0 / m + lever)
    return float(y.mean() + slope * (x0 - xbar)), float(max(sd, 1e-6)), int(max(df, 1))


def _wls(design: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted least-squares coefficients of ``y`` on ``design``."""
    root = np.sqrt(weight)
    return np.linalg.lstsq(design * root[:, None], y * root, rcond=None)[0]


def _variance_line(design: np.ndarray, resid: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Coefficients of ``log variance`` linear in the design (log n): the maximum-likelihood
    fit to the squared residuals (``r_i^2 ~ sigma_i^2 chi2_1``, a gamma model with log link,
    iteratively reweighted least squares, whose weights are constant for this model).

    Until 2026-12-07 the line was a least-squares fit to ``log r_i^2`` (less the mean of a
    log chi2_1). One residual near zero (a null value on its size's mean) has a log far below
    the others and pulled its size's variance down several-fold; the weighted fit then put a
    large scale on every size: on the six-state case the prediction sd at 1500 particles was
    0.46 where that size's four values scatter by 0.16, and real pairs lost significance. The
    likelihood is not moved by a small residual that way.
    """
    r2 = resid ** 2 + 1e-12 + 1e-9 * float(np.mean(resid ** 2))
    gamma = np.linalg.lstsq(design, np.full(r2.size, np.log(float(np.mean(r2)))),
                            rcond=None)[0]
    for _ in range(iterations):
        eta = design @ gamma
        new = np.linalg.lstsq(design, eta + r2 / np.exp(eta) - 1.0, rcond=None)[0]
        if float(np.max(np.abs(new - gamma))) < 1e-10:
            return new
        gamma = new
    return gamma


# ----- position along a split ----------------------------------------------------------------
def _half_map_references(state, solvent_mask):
    """``(refs (2, K, b, b, b), noise (K, b, b, b) or None)``, masked. ``refs[h]`` scores
    half set h: the other half's class maps (the state's scoring references when it has no
    half maps). ``noise``: one realisation of a half map's noise per class,
    ``(h1 - h2) / sqrt 2``; projected with a particle's pose and CTF, its power over the
    noise is the variance the references' own noise adds to the log-likelihood ratio."""
    halves = getattr(state, "half_maps", None)
    if halves is None:
        return np.asarray(state.refs), None
    mask = 1.0 if solvent_mask is None else solvent_mask
    refs = (np.stack([halves[1], halves[0]]) * mask).astype(np.float32)
    noise = (np.asarray(halves[0], np.float64) - halves[1]) / np.sqrt(2.0) * mask
    return refs, noise.astype(np.float32)




def split_positions(prepared, state, rows=None):
    """``(u, D_eff)`` (n_rows,) of every particle of ``rows`` (default all, in ``rows`` order)
    for a K = 2 EM ``state``: position along the split and effective separation (module
    docstring): ``D_eff = D^2 / (D + R)`` so that ``sqrt(2 / D_eff)`` is the position's error
    including the references' noise ``R`` (the error of ``u`` is ``sqrt(2 (D + R)) / D``)."""
    from ..em_step import class_log_likelihoods, likelihood_shell_range, shell_onehot
    from ..projector import project
    from ..reconstruct import volume_grids
    data, ws = prepared.data, prepared.workspace
    n_total = data.n_total
    rows = np.arange(n_total) if rows is None else np.asarray(rows, dtype=np.int64)
    active = np.zeros(n_total, bool)
    active[rows] = True
    active = active[data.rows]
    like = int(state.like_shells or ws.like_shells)
    onehot = shell_onehot(data.coeffs.shell, ws.n_shells)
    sigma2 = np.asarray(state.sigma2)
    shell = np.minimum(data.coeffs.shell, sigma2.shape[1] - 1)
    refs, noise = _half_map_references(state, prepared.solvent_mask)
    grids = [volume_grids(refs[h], ws.pad) for h in range(2)]
    noise_grid = None if noise is None else volume_grids(noise, ws.pad)
    used = likelihood_shell_range(like)                      # the likelihood's shells
    counts = np.maximum(onehot[:, used].sum(0), 1.0)      # coefficients per shell
    llr, sep, ref = np.zeros(len(data)), np.zeros(len(data)), np.zeros(len(data))
    for bi, (batch, half) in enumerate(ws.batches):
        use = active[batch]
        if not use.any():
            continue
        x, c, g = ws.batch_arrays(bi)
        x, c, g = x[use], c[use], g[use]
        slices = project(ws.operator(bi), grids[half], batch.size, data.coeffs.size)[use]
        sig = sigma2[g][:, shell].astype(np.float32)
        loglik, _ = class_log_likelihoods(x, c, slices, sig, onehot, like)
        llr[batch[use]] = loglik[:, 0] - loglik[:, 1]
        diff = c * (slices[:, :, 0] - slices[:, :, 1])
        power = (diff.real ** 2 + diff.imag ** 2) @ onehot[:, used]
        sig_shell = (sig @ onehot[:, used]) / counts
        sep[batch[use]] = np.sum(power / sig_shell, axis=1)
        if noise_grid is not None:
            ns = c[:, :, None] * project(ws.operator(bi), noise_grid, batch.size,
                                         data.coeffs.size)[use]
            npow = (ns.real ** 2 + ns.imag ** 2).sum(-1) @ onehot[:, used]
            ref[batch[use]] = np.sum(npow / sig_shell, axis=1)
    comm = ws.comm
    llr = comm.gather_rows(llr, data.rows, n_total)[rows]
    sep = comm.gather_rows(sep, data.rows, n_total)[rows]
    ref = comm.gather_rows(ref, data.rows, n_total)[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(sep > 0, llr / np.where(sep > 0, sep, 1.0), 0.0)
        effective = np.where(sep > 0, sep ** 2 / np.where(sep > 0, sep + ref, 1.0), 0.0)
    return u.astype(np.float64), effective.astype(np.float64)


def _error_scale(log_kappa: float) -> float:
    """The fitted scale of the known position errors, kept within ``ERROR_SCALE_BOUNDS``."""
    lo, hi = ERROR_SCALE_BOUNDS
    return float(np.exp(np.clip(log_kappa, np.log(lo), np.log(hi))))


def _loglik_two_points(theta, u, s):
    mu1, mu2, logit = theta[:3]
    s = s * _error_scale(theta[3])
    w = special.expit(logit)
    a = np.log(w) + stats.norm.logpdf(u, mu1, s)
    b = np.log1p(-w) + stats.norm.logpdf(u, mu2, s)
    return float(np.sum(np.logaddexp(a, b)))


def log_ndtr_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``log(Phi(a) - Phi(b))`` for ``a > b``, accurate in both tails."""
    upper = b > 0                   # both in the upper tail: Phi(-b) - Phi(-a)
    hi = np.where(upper, -b, a)
    lo = np.where(upper, -a, b)
    first, second = special.log_ndtr(hi), special.log_ndtr(lo)
    return first + np.log(-np.expm1(np.minimum(second - first, -1e-300)))


def _loglik_uniform(theta, u, s):
    lo, width = theta[0], np.exp(theta[1])
    s = s * _error_scale(theta[2])
    # t uniform on [lo, lo + width], u = t + e: P(u) = (Phi((u-lo)/s) - Phi((u-lo-width)/s)) / width
    mass = log_ndtr_difference((u - lo) / s, (u - lo - width) / s)
    return float(np.sum(mass - np.log(width)))


def _loglik_gauss(theta, u, s):
    mu, tau = theta[0], np.exp(theta[1])
    s = s * _error_scale(theta[2])
    return float(np.sum(stats.norm.logpdf(u, mu, np.sqrt(s ** 2 + tau ** 2))))


def _fit(fn, starts, u, s):
    best = None
    for x0 in starts:
        r = optimize.minimize(lambda th: -fn(th, u, s), np.asarray(tuple(x0) + (0.0,), float),
                              method="Nelder-Mead",
                              options={"xatol": 1e-4, "fatol": 1e-3, "maxiter": 3000})
        if best is None or r.fun < best.fun:
            best = r
    return -float(best.fun), best.x


def shape_test(u: np.ndarray, separation: np.ndarray, margin: float = SHAPE_BIC_MARGIN) -> dict:
    """Two groups or a spread? ``u`` positions along a split, ``separation`` (D) their
    separations (module docstring). Returns the fitted models, BIC values and ``shape``:
    "two groups" (two point masses beat both spreads by ``margin``), "spread" (a uniform or
    Gaussian spread beats two point masses by ``margin``) or "undetermined". Particles whose
    separation is below 0.5 carry no information and are left out."""
    u = np.asarray(u, dtype=np.float64)
    d = np.asarray(separation, dtype=np.float64)
    ok = np.isfinite(u) & np.isfinite(d) & (d > 0.5)
    u, s = u[ok], np.sqrt(2.0 / d[ok])
    n = int(u.size)
    out = {"particles": n, "median_separation": _r(np.median(d[ok]) if n else np.nan, 2),
           "median_position_error": _r(np.median(s) if n else np.nan), "shape": "undetermined"}
    if n < 50:
        return out
    q = np.quantile(u, [0.1, 0.25, 0.5, 0.75, 0.9])
    spread = max(q[4] - q[0], 1e-3)
    ll2, th2 = _fit(_loglik_two_points, [(q[1], q[3], 0.0), (q[0], q[4], 0.0), (-1.0, 1.0, 0.0)], u, s)
    llu, thu = _fit(_loglik_uniform, [(q[0], np.log(spread)), (-1.5, np.log(3.0))], u, s)
    llg, thg = _fit(_loglik_gauss, [(q[2], np.log(spread / 2.56))], u, s)
    bic = {"two groups": -2 * ll2 + 4 * np.log(n), "uniform spread": -2 * llu + 3 * np.log(n),
           "gaussian spread": -2 * llg + 3 * np.log(n)}
    best_spread = min(bic["uniform spread"], bic["gaussian spread"])
    if bic["two groups"] < best_spread - margin:
        shape = "two groups"
    elif best_spread < bic["two groups"] - margin:
        shape = "spread"
    else:
        shape = "undetermined"
    out.update({
        "shape": shape, "bic": {k: _r(v, 1) for k, v in bic.items()},
        "bic_margin": margin,
        "two_groups": {"positions": [_r(th2[0]), _r(th2[1])],
                       "fraction_first": _r(special.expit(th2[2])),
                       "error_scale": _r(_error_scale(th2[3]))},
        "uniform_spread": {"from": _r(thu[0]), "to": _r(thu[0] + np.exp(thu[1])),
                           "error_scale": _r(_error_scale(thu[2]))},
        "gaussian_spread": {"mean": _r(thg[0]), "sd": _r(np.exp(thg[1]))}})
    return out
