"""Synthetic particle sets with known classes, as Scipion sqlite files for the tests.

:func:`make_scipion_dataset` simulates a RELION project with :mod:`hetclass.simulate`
(analytic projections of pseudo-atom phantoms, CTF, noise), reads its STAR file and writes the
particles as a Scipion ``SetOfParticles`` sqlite with **non-contiguous ids** (some particles
dropped, ids spaced) so that id-keyed label transfer is exercised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict

import numpy as np

#: Phantom states of the test data (hetclass.phantoms "demo": three distinct shapes).
PHANTOMS = "demo"


@dataclass
class ScipionDataset:
    """A simulated data set written for Scipion; ``truth`` maps particle id -> state index."""

    sqlite_path: str
    truth: Dict[int, int]
    n_states: int
    box_px: int
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    map_paths: Dict[str, str]


def make_scipion_dataset(out_dir: str, n_particles: int = 600, box_px: int = 48,
                         pixel_size_A: float = 4.0, snr: float = 1.0, seed: int = 0,
                         stack_format: str = ".mrcs", keep_fraction: float = 0.9,
                         states: str = PHANTOMS) -> ScipionDataset:
    """Simulate ``n_particles`` images and write ``out_dir/particles.sqlite``.

    A seeded ``keep_fraction`` of the particles is kept (a subset, as after a selection);
    ids are ``7 + 3 * row`` of the original rows, so they are neither contiguous nor 1-based.
    ``stack_format`` ".mrcs" or ".mrc" (both are MRC stacks). The default SNR is high (1.0):
    these data test the plugin's plumbing (conversion, id-keyed labels, outputs); the engine's
    accuracy at realistic SNR is the core tests' business.
    """
    from hetclass.io.star import read_star
    from hetclass.phantoms import phantom_states
    from hetclass.simulate import simulate_dataset
    from scipion_hetclass.convert import write_set

    sim = simulate_dataset(out_dir, phantom_states(states), n_particles=n_particles,
                           box_px=box_px, pixel_size_A=pixel_size_A, snr=snr, seed=seed,
                           stack_format=stack_format)
    particles = read_star(sim.star_path, project_dir=sim.out_dir)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    rows = np.sort(rng.choice(len(particles), int(round(keep_fraction * len(particles))),
                              replace=False))
    subset = particles.take(rows)
    ids = 7 + 3 * rows
    sqlite = write_set(os.path.join(out_dir, "particles.sqlite"), subset, ids=ids)
    o = particles.optics
    return ScipionDataset(
        sqlite_path=sqlite, truth={int(i): int(sim.labels[r]) for i, r in zip(ids, rows)},
        n_states=len(sim.state_names), box_px=box_px, pixel_size_A=pixel_size_A,
        voltage_kV=float(o.voltage_kV[0]), cs_mm=float(o.cs_mm[0]),
        amplitude_contrast=float(o.amplitude_contrast[0]), map_paths=dict(sim.map_paths))

