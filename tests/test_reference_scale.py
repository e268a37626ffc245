"""User references are scaled to the particle images (hetclass.engine.scale_references).

One state, 300 particles at SNR 1: the true map, given at any scale, must come out at the
scale of the images -- in every signal-dominated shell the least-squares ratio of the data
to the projected, CTF-multiplied reference is 1. (Scaling onto a Wiener-filtered consensus
reconstruction, as before, left the references ~12 % too weak at low resolution.)
"""

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))


@pytest.fixture(scope="module")
def one_state(tmp_path_factory):
    from accuracy_cases import _dm

    from hetclass import engine
    from hetclass.pipeline import ClassifyOptions, load_particles
    from hetclass.simulate import simulate_dataset
    out = str(tmp_path_factory.mktemp("refscale"))
    ds = simulate_dataset(out, {"rest": _dm()}, [1.0], n_particles=300, box_px=48,
                          pixel_size_A=3.3, snr=1.0, seed=3, min_sigma_px=1.5 / 3.3)
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    options = ClassifyOptions(classes=1, particle_diameter_A=150.0, seed=5, threads=1,
                              references=(os.path.join(ds.out_dir, "true_rest.mrc"),))
    return engine.prepare(particles, options)


def _shell_ratios(prepared, ref):
    """Per shell: sum Re(x* m) / sum |m|^2 with m = CTF x projection of ``ref``."""
    from hetclass.projector import project, stack_grids
    from hetclass.reconstruct import volume_to_grid
    ws = prepared.workspace
    coeffs = prepared.data.coeffs
    grid = stack_grids(volume_to_grid(ref * prepared.solvent_mask, ws.pad)[None])
    s = int(coeffs.shell.max()) + 1
    num, den, power = np.zeros(s), np.zeros(s), np.zeros(s)
    for bi, (rows, _) in enumerate(ws.batches):
        x, c, _ = ws.batch_arrays(bi)
        model = c * project(ws.operator(bi), grid, rows.size, coeffs.size)[:, :, 0]
        num += np.bincount(coeffs.shell, (x.conj() * model).real.sum(0), s)
        den += np.bincount(coeffs.shell, (np.abs(model) ** 2).sum(0), s)
        power += np.bincount(coeffs.shell, (np.abs(x) ** 2).sum(0), s)
    return num / den, den / power


@pytest.mark.parametrize("given_scale", [0.05, 1.0, 40.0])
def test_true_map_comes_out_at_the_images_scale(one_state, given_scale):
    from hetclass.engine import scale_references
    prepared = one_state
    active = np.ones(len(prepared.data), bool)
    scaled = scale_references(prepared, prepared.references * given_scale, active,
                              prepared.data_power)
    ratio, signal_fraction = _shell_ratios(prepared, scaled[0])
    strong = (signal_fraction > 0.5) & (np.arange(ratio.size) > 0)   # signal-dominated shells
    assert strong.sum() >= 4
    np.testing.assert_allclose(ratio[strong], 1.0, atol=0.06)
