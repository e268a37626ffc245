"""Procedural pseudo-atomic phantoms (gemmi structures) and their Gaussian density maps.

The phantom is a two-domain molecule, about 130 A across, built from idealised alpha-helix
bundles with one pseudo-atom (a "CA") per residue -- roughly 750 pseudo-atoms, nothing
downloaded:

* a **body** of four helix-bundle subunits (chains ``A``-``D``, different sizes, arranged
  around the z axis) plus a linker helix (chain ``L``) rising from its top;
* a **domain** (chain ``H``, a 7-helix bundle lying along +x) attached to the linker's end by a
  **hinge** about the y axis. ``hinge_deg > 0`` swings the domain's far end down towards the
  body (the far end moves by ~0.9 A per degree).

All states share one frame: the centre of mass of the open, complete molecule is at the
origin, so the same pose means the same body orientation in every state. States of
:func:`phantom_states` (``kind="demo"``): ``open`` (hinge 0 deg), ``closed`` (hinge 30 deg) and
``no_subunit`` (hinge 0 deg, subunit ``D`` -- 11 % of the mass, on the side opposite the
domain -- removed). At 15-20 A these differ clearly but not trivially.

Gaussian density: pseudo-atom ``k`` at ``xyz_A[k]`` contributes
``amplitude[k] / ((2 pi)^1.5 sigma^3) * exp(-|r - xyz|^2 / (2 sigma^2))`` (mass per A^3), with
``amplitude = occupancy * atomic number`` and ``sigma_A = sqrt(B / (8 pi^2))`` from the atom's
isotropic B-factor (phantom atoms carry ``B = 8 pi^2 (3 A)^2``). Maps are indexed ``[z, y, x]``
and the coordinate origin sits at voxel ``box_px // 2`` on every axis (RELION's convention).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import gemmi
import numpy as np

from hetclass.errors import InputError

PSEUDO_ATOM_SIGMA_A = 3.0          # Gaussian width of one residue-level pseudo-atom
HINGE_INFO_KEY = "_hetclass.hinge_deg"   # stored in Structure.info
DOMAIN_CHAIN = "H"
REMOVABLE_SUBUNIT = "D"
STATE_HINGE_DEG = {"open": 0.0, "closed": 30.0, "no_subunit": 0.0, "full": 0.0}
# body subunits: chain -> (ring angle deg, n_helices, residues per helix, tilt deg)
_SUBUNITS = {"A": (20.0, 7, 22, 8.0), "B": (110.0, 7, 18, -6.0),
             "C": (200.0, 6, 26, 10.0), "D": (290.0, 5, 16, 0.0)}
_RING_RADIUS_A = 23.0
_HINGE_POINT_A = np.array([26.0, 0.0, 38.0])   # before centring

Gaussians = Tuple[np.ndarray, np.ndarray, np.ndarray]


# ----- geometry helpers ----------------------------------------------------------------------
def _axis_rotation(axis, angle_deg) -> np.ndarray:
    """Active right-handed rotation by ``angle_deg`` about unit ``axis`` (3, 3)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    t = np.deg2rad(angle_deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * (kx @ kx)


def _helix(n_res: int, phase_deg: float) -> np.ndarray:
    """CA trace of an ideal alpha helix along z, centred on the origin, (n_res, 3) in A."""
    j = np.arange(n_res, dtype=np.float64)
    ang = np.deg2rad(100.0 * j + phase_deg)
    return np.stack([2.3 * np.cos(ang), 2.3 * np.sin(ang), 1.5 * (j - (n_res - 1) / 2)], -1)


def _bundle(n_helices: int, n_res: int) -> List[np.ndarray]:
    """Helices on a hexagonal lattice (10 A apart), axes along z; list of (n_res, 3) arrays."""
    sites = [(0.0, 0.0)] + [(10.0 * np.cos(np.deg2rad(60 * i)), 10.0 * np.sin(np.deg2rad(60 * i)))
                            for i in range(6)]
    out = []
    for h in range(n_helices):
        xyz = _helix(n_res, 37.0 * h)
        if h % 2:
            xyz = xyz[::-1]
        out.append(xyz + np.array([sites[h][0], sites[h][1], 0.0]))
    return out


def _raw_chains() -> Dict[str, List[np.ndarray]]:
    """Chain id -> list of helix CA traces, molecule open (hinge 0), before centring."""
    chains: Dict[str, List[np.ndarray]] = {}
    for cid, (ring_deg, n_hel, n_res, tilt_deg) in _SUBUNITS.items():
        r = _axis_rotation([0, 0, 1], ring_deg)
        tilt = _axis_rotation([0, 1, 0], tilt_deg)
        centre = r @ np.array([_RING_RADIUS_A, 0.0, 0.0])
        chains[cid] = [(r @ tilt @ h.T).T + centre for h in _bundle(n_hel, n_res)]
    # linker: one helix from the body top up to the hinge point
    linker = _helix(10, 0.0)
    linker[:, 2] += _HINGE_POINT_A[2] - 4.0 - linker[-1, 2]
    linker[:, :2] += _HINGE_POINT_A[:2]
    chains["L"] = [linker]
    # domain: 7-helix bundle whose axis lies along +x, starting 4 A beyond the hinge point
    to_x = _axis_rotation([0, 1, 0], 90.0)
    dom_centre = _HINGE_POINT_A + np.array([4.0 + 1.5 * 32 / 2, 0.0, 4.0])
    chains[DOMAIN_CHAIN] = [(to_x @ h.T).T + dom_centre for h in _bundle(7, 32)]
    return chains


def _frame_origin() -> np.ndarray:
    """Centre of mass of the complete open molecule (every pseudo-atom weighs the same)."""
    return np.concatenate([np.concatenate(v) for v in _raw_chains().values()]).mean(axis=0)


def hinge_transform(hinge_deg, origin_A: Optional[np.ndarray] = None):
    """(R, t) moving domain coordinates (centred frame, A): ``x' = R x + t``.

    Rotation by ``hinge_deg`` about the hinge axis (y) through the hinge point; positive
    angles swing the domain's far end towards the body (-z). A scalar angle gives
    R (3, 3), t (3,); an array of n angles gives R (n, 3, 3), t (n, 3).
    """
    p = _HINGE_POINT_A - (_frame_origin() if origin_A is None else origin_A)
    angle = np.deg2rad(np.asarray(hinge_deg, dtype=np.float64))
    c, s = np.cos(angle), np.sin(angle)
    r = np.zeros(angle.shape + (3, 3))
    r[..., 0, 0] = c          # rotation about +y (right-handed): z -> x
    r[..., 0, 2] = s
    r[..., 1, 1] = 1.0
    r[..., 2, 0] = -s
    r[..., 2, 2] = c
    return r, p - r @ p


# ----- structures ----------------------------------------------------------------------------
def phantom_model(state: str = "open", hinge_deg: Optional[float] = None,
                  sigma_A: float = PSEUDO_ATOM_SIGMA_A) -> gemmi.Structure:
    """The phantom in ``state`` as a gemmi Structure (one model, CA pseudo-atoms, A).

    ``state``: ``"open"``/``"full"`` (complete), ``"closed"`` (complete, hinge 30 deg) or
    ``"no_subunit"`` (chain ``D`` removed). ``hinge_deg`` overrides the state's hinge angle
    (None: the state's default). ``sigma_A`` sets every atom's B-factor to 8 pi^2 sigma^2.
    The hinge angle is recorded in ``structure.info["_hetclass.hinge_deg"]``.
    """
    if state not in STATE_HINGE_DEG:
        raise InputError(f"unknown phantom state {state!r} (choose from {sorted(STATE_HINGE_DEG)})",
                         field="state", value=state)
    if not (sigma_A > 0):
        raise InputError("sigma_A must be > 0", field="sigma_A", value=sigma_A)
    angle = STATE_HINGE_DEG[state] if hinge_deg is None else float(hinge_deg)
    origin = _frame_origin()
    rot, shift = hinge_transform(angle)
    b_iso = 8 * np.pi ** 2 * sigma_A ** 2

    st = gemmi.Structure()
    st.name = f"hetclass_phantom_{state}"
    st.cell = gemmi.UnitCell(1, 1, 1, 90, 90, 90)  # no crystal cell: placeholder
    model = gemmi.Model("1")  # type: ignore[arg-type]   # a name in gemmi < 0.7, a number after
    for cid, helices in _raw_chains().items():
        if state == "no_subunit" and cid == REMOVABLE_SUBUNIT:
            continue
        chain = gemmi.Chain(cid)
        seq = 1
        for helix in helices:
            xyz = helix - origin
            if cid == DOMAIN_CHAIN:
                xyz = xyz @ rot.T + shift
            for p in xyz:
                res = gemmi.Residue()
                res.name = "ALA"
                res.seqid = gemmi.SeqId(seq, " ")
                atom = gemmi.Atom()
                atom.name = "CA"
                atom.element = gemmi.Element("C")
                atom.pos = gemmi.Position(*map(float, p))
                atom.occ = 1.0
                atom.b_iso = float(b_iso)
                res.add_atom(atom)
                chain.add_residue(res)
                seq += 1
        model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    st.info[HINGE_INFO_KEY] = repr(angle)
    return st


def phantom_states(kind: str = "demo") -> Dict[str, gemmi.Structure]:
    """Named sets of states.

    ``"demo"``: open / closed (30 deg) / no_subunit. ``"two"``: open / closed.
    ``"subtle"``: open / ajar (hinge 12 deg) -- a hard pair at 20 A.
    """
    if kind == "demo":
        return {s: phantom_model(s) for s in ("open", "closed", "no_subunit")}
    if kind == "two":
        return {s: phantom_model(s) for s in ("open", "closed")}
    if kind == "subtle":
        return {"open": phantom_model("open"), "ajar": phantom_model("open", hinge_deg=12.0)}
    raise InputError(f"unknown phantom kind {kind!r} (demo, two, subtle)", field="kind", value=kind)


def hinge_series(angles_deg: Iterable[float]) -> List[gemmi.Structure]:
    """Complete phantoms at each hinge angle (deg), e.g. for a continuum of conformations."""
    return [phantom_model("open", hinge_deg=float(a)) for a in angles_deg]


def structure_hinge_deg(structure: gemmi.Structure) -> float:
    """Hinge angle recorded by :func:`phantom_model`, NaN for other structures."""
    try:
        return float(structure.info[HINGE_INFO_KEY])
    except (KeyError, IndexError, ValueError):
        return float("nan")


# ----- Gaussians and maps --------------------------------------------------------------------
def _atom_table(structure: gemmi.Structure, blur_A: float = 0.0):
    """xyz (m,3), amplitude (m,), sigma (m,), chain ids (m,) of the first model."""
    if len(structure) == 0:
        raise InputError("structure has no model", field="structure", value=structure.name)
    xyz, amp, b, chains = [], [], [], []
    for chain in structure[0]:
        for res in chain:
            for atom in res:
                xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                amp.append(atom.occ * atom.element.atomic_number)
                b.append(atom.b_iso)
                chains.append(chain.name)
    if not xyz:
        raise InputError("structure has no atoms", field="structure", value=structure.name)
    sigma = np.sqrt(np.maximum(np.asarray(b, dtype=np.float64), 0.0) / (8 * np.pi ** 2))
    sigma = np.sqrt(sigma ** 2 + blur_A ** 2)
    if np.any(sigma <= 0):
        raise InputError("atoms with zero B-factor need blur_A > 0", field="b_iso", value=0.0)
    return (np.asarray(xyz, dtype=np.float64), np.asarray(amp, dtype=np.float64), sigma,
            np.asarray(chains))


def model_to_gaussians(structure: gemmi.Structure, blur_A: float = 0.0) -> Gaussians:
    """Isotropic Gaussians of the first model: ``(xyz_A (m,3), amplitude (m,), sigma_A (m,))``.

    ``amplitude = occupancy * atomic number`` (the Gaussian's integral);
    ``sigma_A = sqrt(B / (8 pi^2) + blur_A^2)``. float64 arrays.
    """
    xyz, amp, sigma, _ = _atom_table(structure, blur_A)
    return xyz, amp, sigma


def hinged_gaussians(hinge_deg: np.ndarray, sigma_A: float = PSEUDO_ATOM_SIGMA_A):
    """Per-conformation Gaussians of the complete phantom at many hinge angles.

    Returns ``(xyz_A (n, m, 3) float32, amplitude (m,), sigma_A (m,))``; row ``i`` equals
    ``model_to_gaussians(phantom_model("open", hinge_deg[i]))`` (up to float32 rounding).
    """
    xyz, amp, sigma, chains = _atom_table(phantom_model("open", 0.0, sigma_A))
    hinge = np.atleast_1d(np.asarray(hinge_deg, dtype=np.float64))
    out = np.broadcast_to(xyz, (hinge.size,) + xyz.shape).astype(np.float32)
    dom = chains == DOMAIN_CHAIN
    r, t = hinge_transform(hinge)
    out[:, dom] = xyz[dom] @ r.transpose(0, 2, 1) + t[:, None, :]
    return out, amp, sigma


def domain_moved_gaussians(motions: Sequence[Tuple[Sequence[float], float]] = (),
                           remove_chains: Sequence[str] = (), extra_atoms=None,
                           sigma_A: float = PSEUDO_ATOM_SIGMA_A) -> Gaussians:
    """Gaussians of the complete open phantom with its domain (chain ``H``) moved rigidly.

    ``motions``: ``(axis, angle_deg)`` rotations about axes through the hinge point, applied
    in order (e.g. ``[((0, 1, 0), 4.0), ((0, 0, 1), -3.0)]``: a 4 deg hinge closure, then a
    3 deg sideways swing). ``remove_chains``: chains left out (compositional states).
    ``extra_atoms``: ``(xyz_A (m, 3), amplitude (m,))`` pseudo-atoms added (e.g. a bound
    ligand), with ``sigma_A``. Returns ``(xyz_A, amplitude, sigma_A)`` float64.
    """
    xyz, amp, sigma, chains = _atom_table(phantom_model("open", 0.0, sigma_A))
    keep = ~np.isin(chains, list(remove_chains))
    dom = chains == DOMAIN_CHAIN
    pivot = _HINGE_POINT_A - _frame_origin()
    moved = xyz[dom]
    for axis, angle in motions:
        r = _axis_rotation(axis, angle)
        moved = (moved - pivot) @ r.T + pivot
    xyz = xyz.copy()
    xyz[dom] = moved
    xyz, amp, sigma = xyz[keep], amp[keep], sigma[keep]
    if extra_atoms is not None:
        e_xyz, e_amp = (np.asarray(v, dtype=np.float64) for v in extra_atoms)
        xyz = np.concatenate([xyz, e_xyz.reshape(-1, 3)])
        amp = np.concatenate([amp, e_amp.reshape(-1)])
        sigma = np.concatenate([sigma, np.full(e_amp.size, sigma_A)])
    return xyz, amp, sigma


def domain_rmsd_A(a: Gaussians, b: Gaussians) -> float:
    """RMS displacement (A) between two conformations of the same atoms (same order)."""
    return float(np.sqrt(np.mean(np.sum((np.asarray(a[0]) - np.asarray(b[0])) ** 2, axis=1))))


def rasterise(gaussians: Gaussians, box_px: int, pixel_size_A: float) -> np.ndarray:
    """Density map of a Gaussian sum sampled at voxel centres, float32 ``[z, y, x]``.

    Voxel ``(k, j, i)`` sits at ``((i, j, k) - box_px // 2) * pixel_size_A``. Values are mass
    per A^3, so ``map.sum() * pixel_size_A**3 == amplitude.sum()`` for Gaussians well inside
    the box with ``sigma >= pixel_size`` (point sampling; the error is ~exp(-2 pi^2 sigma^2 /
    pixel_size^2)).
    """
    xyz, amp, sigma = (np.asarray(g, dtype=np.float64) for g in gaussians)
    box_px = int(box_px)
    if box_px < 2 or not (pixel_size_A > 0):
        raise InputError("rasterise needs box_px >= 2 and pixel_size_A > 0",
                         field="box_px/pixel_size_A", value=(box_px, pixel_size_A))
    grid = (np.arange(box_px) - box_px // 2) * float(pixel_size_A)
    vol = np.zeros((box_px, box_px * box_px), dtype=np.float64)
    norm = amp / ((2 * np.pi) ** 1.5 * sigma ** 3)
    for start in range(0, len(amp), 512):
        sl = slice(start, start + 512)
        g = [np.exp(-0.5 * ((grid[None, :] - xyz[sl, a, None]) / sigma[sl, None]) ** 2)
             for a in range(3)]
        gyx = (g[1][:, :, None] * g[0][:, None, :]).reshape(-1, box_px * box_px)
        vol += (g[2] * norm[sl, None]).T @ gyx
    return vol.reshape(box_px, box_px, box_px).astype(np.float32)
