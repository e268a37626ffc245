"""How far the STAR poses are from the true ones: the pose-error spread, measured on the data.

Classification with fixed poses takes the STAR poses as true. Refined poses are off by a
few degrees and about an Angstrom; EM can then split *one* state by the direction of its
particles' pose errors (class maps that are the same structure turned by a few degrees),
reproducibly and beyond a null simulated at the STAR poses. The calibrated null
(:mod:`hetclass.stability.null`) therefore simulates pose errors of the data's own size,
measured here.

Model: particle ``i``'s true pose is its STAR pose composed with a small rotation
``exp([w]x)`` (axis-angle ``w`` in radians, a map-frame vector: ``A_true = A_star @
exp([w]x)``) and its image moved by ``A_star[:2] @ v`` (a map-frame translation ``v`` in
pixels of the cropped box); ``u = (w, v) ~ N(0, C)``. Around the STAR pose the
log-likelihood of particle ``i`` under the one-state model (consensus map ``V0``, noise
``sigma2``: ``-|x - CTF P(V0)|^2 / sigma2`` per coefficient of the likelihood's resolution)
is quadratic in the particle-frame error ``d = (w, t)``: ``l_i(d) = l_i(0) + g_i.d -
d.H_i.d / 2``, Gauss-Newton ``g_i = 2 Re sum conj(J) r / sigma2``, ``H_i = 2 Re sum conj(J)
J / sigma2`` (``J``: derivatives of the model image; rotations by central differences of
:data:`STEP_DEG`, shifts analytic). So ``y_i = H_i^-1 g_i ~ N(T_i u_i, kappa H_i^-1)`` and
``C`` is fitted by marginal likelihood (a random-effects covariance). ``kappa`` (:func:`noise_inflation`) is
measured on the same particles simulated from ``V0`` at their STAR poses: the particle mask
correlates neighbouring frequencies' noise, so ``g`` varies about 1.45 times more than
independent coefficients would make it; without it every data set would seem to have
pose errors.

Pose errors and heterogeneity. A conformational change the consensus map lacks also pulls
the particles' poses, but always the same way in the map frame (a domain turn is partly a
whole-map turn about one axis): it adds an *anisotropic* part to ``C``. Refinement errors
are isotropic. The spread used by the null is therefore the isotropic part: the smallest
eigenvalue of the rotation block and of the translation block, bias-corrected. Measured
(``benchmarks/bench_stability.py`` data, box 48 at 3.3 A, SNR 0.05-0.15, 3000 particles):
one state without errors 0 deg / 0 A; one state with errors of median 3 deg, 1 A (per-axis
2.6 deg, 0.85 A) 1.97 deg / 0.79 A; four states (domain motions, no errors) 0 / 0, while
their largest rotation sd is 1.9 deg.

Statistics are computed per particle on a random subsample (:data:`SUBSAMPLE`, named stream
``pose_spread``) and gathered in global particle order before summing: the estimate does
not depend on MPI sharding or threads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import seeds
from ..geometry import rotvec_to_matrix

SUBSAMPLE = 3000           # particles used for the estimate (at most)
STEP_DEG = 0.5             # rotation step of the central differences
MAX_EVALUATIONS = 500      # of the marginal likelihood, fitting the covariance
START_DEG = 3.0            # the fit's starting rotation sd per axis
START_PX = 1.0             # and translation sd
MIN_DISPLACEMENT = 0.05    # of the likelihood's resolution: smaller errors are not simulated
BIAS_ROUNDS = 1            # simulation rounds correcting the isotropic spread's bias
MAX_CORRECTION = 1.5       # the largest factor of one round
MAXWELL_MEDIAN = 1.5381722                        # median |w| / s_rot for w ~ N(0, s^2 I3)
RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))   # median |t| / s_shift in 2D


@dataclass(frozen=True)
class PoseSpread:
    """Pose errors of the STAR file: ``rot_deg`` and ``shift_px`` (pixels of the cropped box,
    ``pixel_size_A`` each) are the per-axis standard deviations the null simulates (the
    isotropic part, bias-corrected; 0 when the rms displacement they cause at the map's
    mass radius is below :data:`MIN_DISPLACEMENT` of the likelihood's resolution);
    ``rot_axes_deg`` and ``shift_axes_px`` the standard deviations along the principal axes
    of the fitted covariance (ascending, as measured)."""

    rot_deg: float
    shift_px: float
    pixel_size_A: float
    rot_axes_deg: tuple = (0.0, 0.0, 0.0)
    shift_axes_px: tuple = (0.0, 0.0, 0.0)
    n_particles: int = 0
    noise_inflation: float = 1.0
    evaluations: int = 0            # of the marginal likelihood, fitting the covariance
    displacement_A: float = 0.0     # rms displacement the isotropic errors cause (mass radius)
    resolution_A: float = 0.0       # the likelihood's resolution it is compared with

    @property
    def simulated(self) -> bool:
        """Whether the null moves the poses (False: too small to matter, STAR poses)."""
        return self.rot_deg > 0 or self.shift_px > 0

    def to_dict(self) -> dict:
        px = self.pixel_size_A
        return {"rotation_sd_deg": round(self.rot_deg, 3),
                "median_rotation_error_deg": round(MAXWELL_MEDIAN * self.rot_deg, 3),
                "shift_sd_A": round(self.shift_px * px, 3),
                "median_shift_error_A": round(RAYLEIGH_MEDIAN * self.shift_px * px, 3),
                "rotation_sd_principal_deg": [round(float(x), 3) for x in self.rot_axes_deg],
                "translation_sd_principal_A": [round(float(x) * px, 3)
                                               for x in self.shift_axes_px],
                "rms_displacement_A": round(float(self.displacement_A), 3),
                "likelihood_resolution_A": round(float(self.resolution_A), 2),
                "simulated_in_null": bool(self.simulated),
                "particles": int(self.n_particles),
                "noise_inflation": round(float(self.noise_inflation), 3),
                "fit_evaluations": int(self.evaluations),
                "method": "random-effects covariance of the pose errors about the STAR poses "
                          "under the one-state model; the null simulates its isotropic part"}


def axis_rotations(axis: int, angle_rad: float) -> np.ndarray:
    """(3, 3) rotation by ``angle_rad`` about coordinate ``axis`` (0 x, 1 y, 2 z)."""
    w = np.zeros(3)
    w[axis] = angle_rad
    return rotvec_to_matrix(w[None])[0]


def shift_phase(coeffs, shifts_px: np.ndarray, m: int) -> np.ndarray:
    """(n, m) complex64 ``exp(-2 pi i (kx tx + ky ty) / b)``: the transform of an image moved
    by ``shifts_px`` (n, 2: x, y) pixels, for the first ``m`` coefficients."""
    b = coeffs.box_px
    arg = (np.outer(shifts_px[:, 0], coeffs.kx[:m]) + np.outer(shifts_px[:, 1], coeffs.ky[:m]))
    return np.exp(-2j * np.pi * arg / b).astype(np.complex64)


def particle_terms(prepared, model_map: np.ndarray, sigma2: np.ndarray):
    """``(global_rows, rotations (n, 3, 3), g (n, 5), H (n, 5, 5))`` of this rank's
    particles: the gradient and Gauss-Newton curvature of each one's log-likelihood in the
    pose error ``(w_x, w_y, w_z [rad], t_x, t_y [px])`` at its STAR pose."""
    from ..projector import project, slice_operator, stack_grids
    from ..reconstruct import volume_to_grid

    data, ws = prepared.data, prepared.workspace
    m = data.coeffs.count_below(ws.like_shells)
    coeffs = data.coeffs.prefix(m)
    shell = np.minimum(coeffs.shell, sigma2.shape[1] - 1)
    grids = stack_grids(volume_to_grid(np.asarray(model_map, np.float32), ws.pad)[None])
    h = np.deg2rad(STEP_DEG)
    steps = [(axis_rotations(a, h), axis_rotations(a, -h)) for a in range(3)]
    two_pi_k = (-2j * np.pi / coeffs.box_px) * np.stack([coeffs.kx, coeffs.ky]).astype(np.float32)
    local_all, g_all, h_all = [], [], []
    for bi, (rows, _) in enumerate(ws.batches):
        x, c, grp = ws.batch_arrays(bi)
        x, c = x[:, :m], c[:, :m]
        rot = data.rotations[rows]
        n = rows.size
        images = [c * project(slice_operator(r, coeffs, ws.pad), grids, n, m)[:, :, 0]
                  for r in [rot] + [rot @ d for pair in steps for d in pair]]
        m0 = images[0]
        jac = np.stack([(images[1 + 2 * a] - images[2 + 2 * a]) / np.float32(2.0 * h)
                        for a in range(3)] + [m0 * two_pi_k[0][None], m0 * two_pi_k[1][None]],
                       axis=1)                                       # (n, 5, m)
        w = (1.0 / sigma2[grp][:, shell]).astype(np.float32)         # (n, m)
        r = (x - m0) * w
        g_all.append(2.0 * np.real(np.einsum("nam,nm->na", np.conj(jac), r)))
        h_all.append(2.0 * np.real(np.einsum("nam,nbm,nm->nab", np.conj(jac), jac, w)))
        local_all.append(rows)
    local = np.concatenate(local_all) if local_all else np.zeros(0, np.int64)
    if not local_all:
        return local, np.zeros((0, 3, 3)), np.zeros((0, 5)), np.zeros((0, 5, 5))
    return (data.rows[local], data.rotations[local], np.concatenate(g_all).astype(np.float64),
            np.concatenate(h_all).astype(np.float64))


def noise_inflation(g: np.ndarray, hess: np.ndarray) -> float:
    """``mean(g_i' H_i^-1 g_i) / 5`` of particles without pose error: how much more the
    gradients vary than independent coefficients would make them (the particle mask
    correlates the noise of neighbouring frequencies; 1 for white noise)."""
    q = np.einsum("na,na->n", g, np.linalg.solve(hess, g[:, :, None])[:, :, 0])
    return float(np.mean(q) / g.shape[1]) if q.size else 1.0


def error_covariance(g: np.ndarray, hess: np.ndarray, rotations: np.ndarray, kappa: float):
    """``(cov (6, 6), evaluations)``: the map-frame covariance of the pose errors, rotation
    ``w`` (rad^2, ``[:3, :3]``) and translation ``v`` (px^2, ``[3:, 3:]``; the image shift is
    ``A[:2] @ v``) of largest marginal likelihood for the particles' pseudo-observations
    ``y_i = H_i^-1 g_i ~ N(T_i u_i, kappa H_i^-1)``, ``u_i = (w_i, v_i) ~ N(0, cov)``:
    ``sum_i -(y_i' S_i^-1 y_i + log det S_i) / 2`` with ``S_i = T_i cov T_i' + kappa H_i^-1``,
    maximised over the Cholesky factors of the two blocks (L-BFGS, analytic gradient;
    rotations in degrees inside, so that both blocks have similar scales). A variance that
    vanishes is an interior point of the factors, so it converges as fast as the others."""
    from scipy.optimize import minimize
    n = g.shape[0]
    deg = np.deg2rad(1.0)
    t = np.zeros((n, 5, 6))
    t[:, :3, :3] = np.eye(3) * deg
    t[:, 3:, 3:] = rotations[:, :2, :]
    hess = hess + 1e-9 * np.trace(hess, axis1=1, axis2=2)[:, None, None] * np.eye(5)
    y = np.linalg.solve(hess, g[:, :, None])[:, :, 0]
    noise = kappa * np.linalg.inv(hess)
    tril = np.tril_indices(3)

    def unpack(x):
        lw, lv = np.zeros((3, 3)), np.zeros((3, 3))
        lw[tril], lv[tril] = x[:6], x[6:]
        return lw, lv

    def cost(x):
        lw, lv = unpack(x)
        cov = np.zeros((6, 6))
        cov[:3, :3], cov[3:, 3:] = lw @ lw.T, lv @ lv.T
        s = t @ cov @ t.transpose(0, 2, 1) + noise
        _, logdet = np.linalg.slogdet(s)
        sy = np.linalg.solve(s, y[:, :, None])[:, :, 0]
        value = 0.5 * (np.sum(sy * y) + np.sum(logdet))
        inner = np.linalg.inv(s) - sy[:, :, None] * sy[:, None, :]
        grad_cov = 0.5 * np.einsum("nai,nab,nbj->ij", t, inner, t)
        gw, gv = 2.0 * grad_cov[:3, :3] @ lw, 2.0 * grad_cov[3:, 3:] @ lv
        return value / n, np.concatenate([gw[tril], gv[tril]]) / n

    start = np.zeros(12)
    start[[0, 2, 5]] = START_DEG
    start[[6, 8, 11]] = START_PX
    res = minimize(cost, start, jac=True, method="L-BFGS-B",
                   options={"maxiter": MAX_EVALUATIONS, "gtol": 1e-9, "ftol": 1e-13})
    lw, lv = unpack(res.x)
    cov = np.zeros((6, 6))
    cov[:3, :3], cov[3:, 3:] = lw @ lw.T * deg ** 2, lv @ lv.T
    return cov, int(res.nfev)


def _gathered(comm, rows, rotations, g, hess):
    """``(rotations, g, hess)`` of every rank's particles in global particle order."""
    parts = [(rows, rotations, g, hess)]
    if comm.size > 1:
        parts = comm.allgather_obj(parts[0])
    order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
    return tuple(np.concatenate([p[j] for p in parts])[order] for j in (1, 2, 3))


def _principal_sd(sub, model, kappa: float):
    """``(rotation sd (3,) deg, translation sd (3,) px, likelihood evaluations)`` of ``sub``'s
    particles: the principal standard deviations of the fitted covariance, ascending."""
    sigma2 = np.asarray(model.sigma2, np.float64)
    rot, g, hess = _gathered(sub.workspace.comm, *particle_terms(sub, model.map, sigma2))
    cov, evaluations = error_covariance(g, hess, rot, kappa)
    rot_sd = np.rad2deg(np.sqrt(np.maximum(np.linalg.eigvalsh(cov[:3, :3]), 0.0)))
    return rot_sd, np.sqrt(np.maximum(np.linalg.eigvalsh(cov[3:, 3:]), 0.0)), evaluations


def estimate_pose_spread(prepared, model, base: np.ndarray, seed, simulate) -> PoseSpread:
    """The pose errors of the particles ``base`` (global indices) under the one-state
    ``model`` (:class:`hetclass.stability.null.OneStateModel`), from at most
    :data:`SUBSAMPLE` of them.

    The quadratic model saturates for errors that are large at the likelihood's resolution,
    and the smallest of three noisy eigenvalues is biased low: the isotropic spread is
    corrected by simulation (:data:`BIAS_ROUNDS` rounds of ``s <- s * s_data / s_sim(s)``,
    ``s_sim(s)``: the estimate on the same particles simulated from the model with errors
    ``s``; see :func:`_factor`). ``simulate(prepared, model, seed, index)`` makes null data
    (:func:`hetclass.stability.null.null_dataset`; passed in, so that this module does not
    import the null that uses it)."""
    from .views import subset_view
    base = np.asarray(base, dtype=np.int64)
    rows = base
    if base.size > SUBSAMPLE:
        rows = np.sort(seeds.rng(seed, "pose_spread", 0).choice(base, SUBSAMPLE, replace=False))
    sub = subset_view(prepared, rows)
    comm = prepared.workspace.comm
    sigma2 = np.asarray(model.sigma2, np.float64)
    _, g0, hess0 = _gathered(comm, *particle_terms(simulate(sub, model, seed, 0),
                                                    model.map, sigma2))
    kappa = noise_inflation(g0, hess0)
    rot_sd, shift_sd, evaluations = _principal_sd(sub, model, kappa)
    px = float(prepared.pixel_size_A)
    spread = PoseSpread(float(rot_sd[0]), float(shift_sd[0]), px)
    for _ in range(BIAS_ROUNDS):
        if not spread.simulated:
            break
        sim = simulate(sub, replace(model, pose_spread=spread), seed, 0)
        sim_rot, sim_shift, _ = _principal_sd(sim, model, kappa)
        spread = replace(spread,
                         rot_deg=spread.rot_deg * _factor(rot_sd[0], sim_rot[0], spread.rot_deg),
                         shift_px=spread.shift_px * _factor(shift_sd[0], sim_shift[0],
                                                            spread.shift_px))
    radius_px = mass_radius_px(model.map, prepared.solvent_mask)
    moved_A = px * np.sqrt((np.deg2rad(spread.rot_deg) * radius_px) ** 2 + spread.shift_px ** 2)
    resolution_A = float(prepared.data.plan.target_res_A)
    simulated = bool(moved_A >= MIN_DISPLACEMENT * resolution_A)
    return PoseSpread(spread.rot_deg if simulated else 0.0,
                      spread.shift_px if simulated else 0.0, px,
                      tuple(float(x) for x in rot_sd), tuple(float(x) for x in shift_sd),
                      int(rows.size), kappa, evaluations, float(moved_A), resolution_A)


def mass_radius_px(volume: np.ndarray, mask: np.ndarray) -> float:
    """Root-mean-square distance from the box centre (index ``b // 2``) of the map's positive
    density inside ``mask``: the radius at which a rotation error's displacement is typical."""
    b = volume.shape[0]
    c = np.arange(b) - b // 2
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    rho = np.maximum(np.asarray(volume, np.float64), 0.0) * np.asarray(mask, np.float64)
    total = rho.sum()
    return float(np.sqrt((rho * r2).sum() / total)) if total > 0 else 0.0


def _factor(data_sd: float, sim_sd: float, simulated_sd: float) -> float:
    """The bias correction ``data / sim``, at most :data:`MAX_CORRECTION`; none (1) where the
    simulation recovers less than half the spread it was made with (errors too small for
    the data's resolution and noise: the estimate is then noise, not a biased signal)."""
    if sim_sd < 0.5 * simulated_sd or data_sd <= 0:
        return 1.0
    return float(min(data_sd / sim_sd, MAX_CORRECTION))


def perturbed_poses(spread: PoseSpread, rotations: np.ndarray, global_rows: np.ndarray, seed,
                    index: int, block: int):
    """``(rotations, shifts_px)`` of null set ``index``: ``rotations`` (n, 3, 3) composed with
    errors drawn from ``spread``, per block of ``block`` global indices from the named stream
    ``("null", index, 3, block)`` (independent of the sharding)."""
    n = global_rows.size
    w = np.zeros((n, 3))
    t = np.zeros((n, 2))
    blocks = global_rows // block
    for b in np.unique(blocks):
        sel = np.flatnonzero(blocks == b)
        z = seeds.rng(seed, "null", index, 3, int(b)).standard_normal((block, 5))
        z = z[global_rows[sel] % block]
        w[sel] = z[:, :3] * np.deg2rad(spread.rot_deg)
        t[sel] = z[:, 3:] * spread.shift_px
    return rotations @ rotvec_to_matrix(w), t
