"""Phantom structures and their Gaussian maps (pure numpy/gemmi, < 5 s)."""

import gemmi
import numpy as np
import pytest

from hetclass import phantoms
from hetclass.errors import InputError


def lowpass(vol, pixel_size_A, res_A):
    f = np.fft.fftfreq(vol.shape[0], pixel_size_A)
    k2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2
    return np.fft.ifftn(np.fft.fftn(vol) * (k2 < 1.0 / res_A ** 2)).real


def corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def demo_maps():
    states = phantoms.phantom_states("demo")
    return states, {k: phantoms.rasterise(phantoms.model_to_gaussians(s), 64, 3.0)
                    for k, s in states.items()}


def test_states_are_valid_structures_and_round_trip_through_pdb():
    states = phantoms.phantom_states("demo")
    assert list(states) == ["open", "closed", "no_subunit"]
    counts = {k: s[0].count_atom_sites() for k, s in states.items()}
    assert 500 <= counts["open"] <= 3000
    assert counts["closed"] == counts["open"] > counts["no_subunit"]
    back = gemmi.read_pdb_string(states["closed"].make_pdb_string())
    xyz0 = phantoms.model_to_gaussians(states["closed"])[0]
    xyz1 = phantoms.model_to_gaussians(back)[0]
    np.testing.assert_allclose(xyz1, xyz0, atol=1e-3)  # PDB keeps 3 decimals
    assert phantoms.structure_hinge_deg(states["open"]) == 0.0
    assert phantoms.structure_hinge_deg(states["closed"]) == 30.0
    assert np.isnan(phantoms.structure_hinge_deg(back))  # info not kept by PDB


def test_molecule_size_and_frame():
    xyz, amp, sigma = phantoms.model_to_gaussians(phantoms.phantom_model("open"))
    extent = xyz.max(0) - xyz.min(0) + 4 * sigma.max()  # +-2 sigma of the outer atoms
    assert 120 <= extent.max() <= 150
    np.testing.assert_allclose((xyz * amp[:, None]).sum(0) / amp.sum(), 0.0, atol=1e-9)
    np.testing.assert_allclose(sigma, phantoms.PSEUDO_ATOM_SIGMA_A)
    np.testing.assert_allclose(amp, 6.0)  # occupancy 1 x carbon


def test_states_differ_clearly_but_not_trivially_at_20A(demo_maps):
    _, maps = demo_maps
    lp = {k: lowpass(v, 3.0, 20.0) for k, v in maps.items()}
    for other in ("closed", "no_subunit"):
        c = corr(lp["open"], lp[other])
        assert 0.6 < c < 0.97, (other, c)
    assert corr(lp["closed"], lp["no_subunit"]) < 0.95


def test_hinge_moves_only_the_domain():
    series = phantoms.hinge_series([0.0, 15.0, 30.0])
    xyz = [phantoms.model_to_gaussians(s)[0] for s in series]
    _, _, _, chains = phantoms._atom_table(series[0])
    dom = chains == phantoms.DOMAIN_CHAIN
    np.testing.assert_allclose(xyz[2][~dom], xyz[0][~dom])
    moved = np.linalg.norm(xyz[2][dom] - xyz[0][dom], axis=1)
    assert moved.max() > 20.0  # the far end of the domain swings by > 20 A
    closed = phantoms.model_to_gaussians(phantoms.phantom_model("closed"))[0]
    np.testing.assert_allclose(xyz[2], closed)
    hinged, _, _ = phantoms.hinged_gaussians(np.array([0.0, 15.0, 30.0]))
    for i in range(3):
        np.testing.assert_allclose(hinged[i], xyz[i], atol=1e-4)


@pytest.mark.parametrize("box", [32, 33])
def test_rasterised_map_is_centred_at_box_half(box):
    one = (np.array([[0.0, 0.0, 0.0]]), np.array([10.0]), np.array([2.0]))
    vol = phantoms.rasterise(one, box, 1.5)
    assert np.unravel_index(np.argmax(vol), vol.shape) == (box // 2,) * 3
    # an off-centre Gaussian lands at (x, y, z) -> [z, y, x]
    off = (np.array([[3.0, -6.0, 9.0]]), np.array([10.0]), np.array([2.0]))
    vol = phantoms.rasterise(off, box, 1.5)
    assert np.unravel_index(np.argmax(vol), vol.shape) == (box // 2 + 6, box // 2 - 4, box // 2 + 2)


def test_phantom_map_centre_of_mass_and_integral(demo_maps):
    states, maps = demo_maps
    for name, vol in maps.items():
        xyz, amp, _ = phantoms.model_to_gaussians(states[name])
        # integral of the density equals the sum of amplitudes
        assert abs(vol.sum() * 3.0 ** 3 / amp.sum() - 1) < 1e-5
        idx = np.indices(vol.shape).reshape(3, -1)
        com_zyx = (idx * vol.ravel()).sum(1) / vol.sum()
        expect_zyx = 32 + ((xyz * amp[:, None]).sum(0) / amp.sum())[::-1] / 3.0
        np.testing.assert_allclose(com_zyx, expect_zyx, atol=0.01)


def test_bad_input_is_an_input_error():
    with pytest.raises(InputError, match="unknown phantom state"):
        phantoms.phantom_model("half_open")
    with pytest.raises(InputError):
        phantoms.phantom_states("nope")
    with pytest.raises(InputError):
        phantoms.model_to_gaussians(gemmi.Structure())
