"""Hard simulated cases for ``bench_accuracy.py`` (and the CI accuracy tests).

Every case is built with the project's simulator (:mod:`hetclass.simulate`: analytic
projection of Gaussian pseudo-atoms, CTF, white noise) from the procedural phantom of
:mod:`hetclass.phantoms`, sharpened to pseudo-atoms of 1.5 A so the maps carry signal to
~5 A (states then differ at 5-10 A, as real domain motions do). The phantom is ~140 A
across, so the box is 72 px of 2.2 A (158 A; Nyquist 4.4 A), or 128 px of 1.25 A.

States differ by rigid motions of the domain (chain H) about its hinge point, by missing
subunits (composition), by a bound 12-residue peptide (~1.3 kDa), or are junk. The motions
are a few degrees: the domain's RMS displacement between states is given in ``describe``.
SNR is the simulator's: mean signal variance inside the particle circle / noise variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

SIGMA_A = 1.5           # pseudo-atom width of the sharpened phantom
Y_AXIS, Z_AXIS, X_AXIS = (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)


@dataclass
class Case:
    """One benchmark case: what to simulate and how to classify it."""

    name: str
    describe: str
    states: Callable[[], Dict[str, tuple]]   # name -> Gaussians (built lazily)
    populations: Sequence[float]
    classes: int
    n_particles: int = 8000
    box_px: int = 72
    pixel_size_A: float = 2.2
    snr: float = 0.25
    diameter_A: float = 150.0
    sim: Dict[str, object] = field(default_factory=dict)   # extra simulate_dataset kwargs
    # states whose particles count as one class in the truth (e.g. many junk shapes)
    truth_groups: Optional[Sequence[int]] = None
    focus_mask: Optional[Callable[[int, float], np.ndarray]] = None   # (box, psize) -> map
    ideal: bool = True      # the ideal observer is defined (not for junk)

    def key(self) -> dict:
        """Everything that defines the simulated data (for reuse of a data set on disk)."""
        return {"name": self.name, "populations": [round(float(p), 6) for p in self.populations],
                "n": self.n_particles, "box": self.box_px, "psize": self.pixel_size_A,
                "snr": self.snr, "sim": {k: v for k, v in sorted(self.sim.items())},
                "version": 3}


def _dm(motions=(), remove=(), extra=None):
    from hetclass.phantoms import domain_moved_gaussians
    return domain_moved_gaussians(motions, remove_chains=remove, extra_atoms=extra,
                                  sigma_A=SIGMA_A)


def four_close(angle_deg: float = 6.0) -> Dict[str, tuple]:
    """Four domain positions: rest, closed by ``angle``, swung sideways by ``angle``, opened
    by ``angle`` (pairwise domain RMSD 3.4-6.7 A for 6 deg)."""
    a = angle_deg
    return {"rest": _dm(), "closed": _dm([(Y_AXIS, a)]), "swung": _dm([(Z_AXIS, a)]),
            "opened": _dm([(Y_AXIS, -a)])}


def six_states(angle_deg: float = 8.0) -> Dict[str, tuple]:
    """Three compositions (complete, without subunit D, without subunit B) x two domain
    positions (rest, closed by ``angle``)."""
    out = {}
    for comp, remove in (("full", ()), ("noD", ("D",)), ("noB", ("B",))):
        out[f"{comp}_rest"] = _dm((), remove)
        out[f"{comp}_closed"] = _dm([(Y_AXIS, angle_deg)], remove)
    return out


def ligand_site_A() -> np.ndarray:
    """Centre (A, molecule frame) of the peptide's binding site: on the outer face of
    subunit B, where nothing else moves."""
    from hetclass.phantoms import _atom_table, phantom_model
    xyz, _, _, chains = _atom_table(phantom_model("open"))
    b = xyz[chains == "B"]
    centre = b.mean(0)
    outward = centre.copy()
    outward[2] = 0.0
    outward /= np.linalg.norm(outward)
    return centre + outward * (np.abs((b - centre) @ outward).max() + 5.0)


def peptide_atoms() -> Tuple[np.ndarray, np.ndarray]:
    """12 pseudo-residues of an ideal helix (~1.3 kDa) at :func:`ligand_site_A`."""
    j = np.arange(12, dtype=np.float64)
    ang = np.deg2rad(100.0 * j)
    helix = np.stack([2.3 * np.cos(ang), 2.3 * np.sin(ang), 1.5 * (j - 5.5)], -1)
    return helix + ligand_site_A(), np.full(12, 6.0)


def ligand_states() -> Dict[str, tuple]:
    return {"bound": _dm(extra=peptide_atoms()), "apo": _dm()}


def ligand_mask(box_px: int, pixel_size_A: float) -> np.ndarray:
    """Soft sphere (radius 12 A, 4 A edge) around the binding site, at the full box."""
    c = (np.arange(box_px) - box_px // 2) * pixel_size_A
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    site = ligand_site_A()
    r = np.sqrt((x - site[0]) ** 2 + (y - site[1]) ** 2 + (z - site[2]) ** 2)
    return np.clip((16.0 - r) / 4.0, 0.0, 1.0).astype(np.float32)


def junk_states(n_junk_shapes: int = 24, seed: int = 11) -> Dict[str, tuple]:
    """Two real states (rest, closed by 10 deg) and ``n_junk_shapes`` junk shapes: random
    40-70 % of the molecule's pseudo-atoms, rigidly rotated at random (broken particles
    and aggregates seen in random orientations)."""
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(seed)
    full = _dm()
    out = {"rest": full, "closed": _dm([(Y_AXIS, 10.0)])}
    for j in range(n_junk_shapes):
        keep = rng.random(len(full[1])) < rng.uniform(0.4, 0.7)
        rot = Rotation.random(random_state=rng.integers(2 ** 31)).as_matrix()
        xyz = full[0][keep] @ rot.T
        xyz -= xyz.mean(0)
        out[f"junk{j:02d}"] = (xyz, full[1][keep], full[2][keep])
    return out


def rare_states() -> Dict[str, tuple]:
    return {"rest": _dm(), "closed": _dm([(Y_AXIS, 6.0)]), "swung": _dm([(Z_AXIS, 6.0)])}


def _junk_case() -> Case:
    n_junk = 24
    pops = [0.45, 0.40] + [0.15 / n_junk] * n_junk
    return Case("junk", "2 states (10 deg apart) + 15 % junk of 24 shapes, K=3",
                lambda: junk_states(n_junk), pops, classes=3,
                truth_groups=[0, 1] + [2] * n_junk, ideal=False)


def all_cases() -> List[Case]:
    """The suite, in the order of the results table."""
    pops4 = [0.4, 0.3, 0.2, 0.1]
    return [
        Case("4close", "4 domain positions 6 deg apart (RMSD 3.4-6.7 A), 40/30/20/10 %",
             four_close, pops4, classes=4),
        Case("4close_snr005", "the same at SNR 0.05 (5x lower)", four_close, pops4,
             classes=4, snr=0.05),
        Case("4close_snr1", "the same at SNR 1 (4x higher: the ideal observer near 0.99, as on "
             "the issue's independent data, where RELION's best seed came close to it)",
             four_close, pops4, classes=4, snr=1.0),
        Case("4close_poses", "the same with pose errors (median 1.5 deg, 0.7 A)", four_close,
             pops4, classes=4, sim={"pose_error_deg": 1.5, "shift_error_A": 0.7}),
        Case("6states", "3 compositions x 2 domain positions (8 deg), 25...10 %",
             six_states, [0.25, 0.20, 0.17, 0.15, 0.13, 0.10], classes=6),
        _junk_case(),
        Case("ligand", "35 % bound 12-residue peptide (1.3 kDa), focus mask on the site",
             ligand_states, [0.35, 0.65], classes=2, focus_mask=ligand_mask),
        Case("rare", "3 domain positions, 60/35/5 %", rare_states, [0.60, 0.35, 0.05],
             classes=3),
        Case("4close_box128", "4close at box 128 (1.25 A/px), 4000 particles", four_close,
             pops4, classes=4, n_particles=4000, box_px=128, pixel_size_A=1.25),
        Case("4close_loose", "4close in a box 1.6x the particle (108 px, as extraction boxes "
             "are; the other cases' 72 px box is about the particle's 150 A)", four_close, pops4,
             classes=4, box_px=108),
    ]


def get_cases(names: Optional[Sequence[str]] = None) -> List[Case]:
    cases = all_cases()
    if not names:
        return cases
    by_name = {c.name: c for c in cases}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {sorted(by_name)}")
    return [by_name[n] for n in names]
