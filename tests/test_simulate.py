"""The ground-truth simulator: agreement with relion_project, determinism, truth files, SNR."""

import os

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from relion_tools import require_relion, run_relion_project

from hetclass import phantoms, simulate
from hetclass.errors import HetclassWarning, InputError
from hetclass.geometry import euler_to_matrix


def per_image_corr(a, b):
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


# ----- against RELION ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relion_case(tmp_path_factory):
    """16 noise-free particles of the (chiral, asymmetric) no_subunit state: random poses,
    shifts up to 12 A, one micrograph per particle with astigmatism up to 6000 A."""
    require_relion("relion_project")
    root = tmp_path_factory.mktemp("relion_project")
    state = phantoms.phantom_model("no_subunit")
    ds = simulate.simulate_dataset(root / "ds", {"no_subunit": state}, n_particles=16, seed=5,
                                   snr=None, max_shift_A=12.0, astigmatism_A=6000.0,
                                   defocus_range_A=(8000.0, 30000.0), particles_per_micrograph=1)
    gauss = phantoms.model_to_gaussians(state)
    relion = {}
    for ctf in (True, False):
        mrcs, _ = run_relion_project(ds.map_paths["no_subunit"], ds.star_path,
                                     str(root / f"relion_ctf{int(ctf)}"), 3.0, ctf=ctf)
        relion[ctf] = mrcfile.read(mrcs)
    return ds, gauss, relion


def ours(ds, gauss, ctf, rotations=None, shifts_A=None, angle_deg=None):
    return simulate.simulate_images(
        gauss, ds.rotations if rotations is None else rotations,
        ds.shifts_A if shifts_A is None else shifts_A, ds.defocus_u_A, ds.defocus_v_A,
        ds.defocus_angle_deg if angle_deg is None else angle_deg, 64, 3.0, ctf=ctf)


def test_case_is_non_trivial(relion_case):
    ds, _, _ = relion_case
    assert np.abs(ds.shifts_A).max(1).min() > 1.0
    assert (ds.defocus_u_A - ds.defocus_v_A).max() > 3000
    tilt = np.degrees(np.arccos(np.clip(ds.rotations[:, 2, 2], -1, 1)))
    assert np.ptp(tilt) > 90


def test_stack_written_matches_relion_project_with_ctf(relion_case):
    """The KEY check: rotation (A vs A.T), shift sign and CTF/astigmatism conventions at once."""
    ds, _, relion = relion_case
    written = mrcfile.read(ds.stack_paths[0])
    c = per_image_corr(written, relion[True])
    assert c.min() >= 0.99, c


@pytest.mark.parametrize("ctf", [True, False])
def test_projector_matches_relion_project(relion_case, ctf):
    ds, gauss, relion = relion_case
    mine = ours(ds, gauss, ctf)
    assert per_image_corr(mine, relion[ctf]).min() >= 0.99
    # relion_project sums voxels along the ray; our images are line integrals (x pixel size)
    scale = (relion[ctf] * mine).sum((1, 2)) / (mine * mine).sum((1, 2))
    np.testing.assert_allclose(scale, 1 / 3.0, rtol=0.01)


def test_wrong_conventions_are_detected(relion_case):
    """The comparison above would fail for each plausible convention slip."""
    ds, gauss, relion = relion_case
    bad = {"A.T instead of A": dict(rotations=ds.rotations.transpose(0, 2, 1)),
           "+origin instead of -origin": dict(shifts_A=-ds.shifts_A),
           "x/y origin swapped": dict(shifts_A=ds.shifts_A[:, ::-1]),
           "astigmatism angle +90": dict(angle_deg=ds.defocus_angle_deg + 90),
           "astigmatism angle negated": dict(angle_deg=-ds.defocus_angle_deg)}
    for what, kw in bad.items():
        c = per_image_corr(ours(ds, gauss, True, **kw), relion[True])
        assert c.min() < 0.97, (what, c.min())


# ----- self-consistency without RELION -------------------------------------------------------
def test_projection_of_identity_pose_equals_map_sum():
    gauss = phantoms.model_to_gaussians(phantoms.phantom_model("closed"))
    vol = phantoms.rasterise(gauss, 64, 3.0)
    img = simulate.simulate_images(gauss, np.eye(3)[None], np.zeros((1, 2)), 1e4, 1e4, 0.0,
                                   64, 3.0, ctf=False)[0]
    np.testing.assert_allclose(img, vol.sum(axis=0) * 3.0, atol=1e-4 * img.max())
    # shift: the particle drawn at -origin
    shifted = simulate.simulate_images(gauss, np.eye(3)[None], np.array([[6.0, -9.0]]), 1e4, 1e4,
                                       0.0, 64, 3.0, ctf=False)[0]
    np.testing.assert_allclose(shifted[3:, :-2], img[:-3, 2:], atol=1e-4 * img.max())


def test_pose_distribution_is_uniform():
    rng = np.random.default_rng(0)
    rot = euler_to_matrix(*simulate.random_rotations(rng, 20000))
    view = rot[:, 2, :]  # projection direction in volume coordinates
    # uniform on the sphere: each coordinate uniform in [-1, 1]
    for axis in range(3):
        hist = np.histogram(view[:, axis], bins=10, range=(-1, 1))[0]
        assert np.abs(hist / 2000 - 1).max() < 0.1
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)


# ----- data sets --------------------------------------------------------------------------------
def small(out, seed=0, **kw):
    args = dict(n_particles=300, populations=[0.5, 0.3, 0.2], box_px=48, pixel_size_A=4.0,
                images_per_stack=120, seed=seed, write_clean=True)
    args.update(kw)
    return simulate.simulate_dataset(out, phantoms.phantom_states("demo"), **args)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return small(tmp_path_factory.mktemp("demo") / "a", snr=0.05)


def test_same_seed_same_bytes(demo, tmp_path):
    again = small(tmp_path / "b", snr=0.05)
    other = small(tmp_path / "c", seed=1, snr=0.05)
    rels = [os.path.relpath(p, demo.out_dir) for p in demo.stack_paths]
    assert len(rels) == 3  # 300 images, 120 per stack
    for rel in rels + ["particles.star", "truth.csv", "true_open.mrc"]:
        with open(os.path.join(demo.out_dir, rel), "rb") as f1, \
                open(os.path.join(again.out_dir, rel), "rb") as f2:
            assert f1.read() == f2.read(), rel
    with open(demo.stack_paths[0], "rb") as f1, open(other.stack_paths[0], "rb") as f2:
        assert f1.read() != f2.read()


def test_star_truth_and_populations(demo):
    blocks = starfile.read(demo.star_path, always_dict=True)
    optics, parts = blocks["optics"], blocks["particles"]
    assert open(demo.star_path).read().startswith("# version 30001")
    assert optics["rlnImagePixelSize"].tolist() == [4.0] and optics["rlnImageSize"].tolist() == [48]
    assert not any("True" in c or "Hetclass" in c for c in parts.columns)
    for col in ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                "rlnOpticsGroup", "rlnMicrographName", "rlnRandomSubset"):
        assert col in parts.columns, col
    assert sorted(parts["rlnRandomSubset"].value_counts().tolist()) == [150, 150]
    np.testing.assert_allclose(euler_to_matrix(parts["rlnAngleRot"], parts["rlnAngleTilt"],
                                               parts["rlnAnglePsi"]), demo.rotations, atol=1e-12)
    # every image name resolves to an existing stack slice
    idx, stack = zip(*(n.split("@") for n in parts["rlnImageName"]))
    for s in set(stack):
        with mrcfile.mmap(os.path.join(demo.out_dir, s), mode="r") as m:
            assert m.is_image_stack() and float(m.voxel_size.x) == pytest.approx(4.0)
            assert max(int(i) for i, t in zip(idx, stack) if t == s) == m.data.shape[0]
    truth = pd.read_csv(demo.truth_path)
    assert truth["image_name"].tolist() == parts["rlnImageName"].tolist()
    assert truth.groupby("state_name").size().to_dict() == {"open": 150, "closed": 90,
                                                             "no_subunit": 60}
    np.testing.assert_array_equal(truth["state_index"], demo.labels)
    assert truth.set_index("state_name")["hinge_deg"].groupby(level=0).first().to_dict() == {
        "closed": 30.0, "no_subunit": 0.0, "open": 0.0}
    for name, path in demo.map_paths.items():
        with mrcfile.open(path) as m:
            np.testing.assert_array_equal(m.data, demo.maps[name])
            assert float(m.voxel_size.x) == pytest.approx(4.0)


def test_noise_matches_requested_snr_and_images_are_normalised(demo):
    noisy = np.concatenate([mrcfile.read(p) for p in demo.stack_paths])
    clean = np.concatenate([mrcfile.read(p) for p in demo.clean_stack_paths])
    inside = simulate.circle_mask(48, 0.375 * 48)
    bg = noisy[:, ~inside]
    np.testing.assert_allclose(bg.mean(1), 0.0, atol=1e-4)
    np.testing.assert_allclose(bg.std(1), 1.0, atol=1e-4)
    noise = noisy - clean
    snr = clean[:, inside].var(1).mean() / noise.var(1).mean()
    assert abs(snr / 0.05 - 1) < 0.1, snr
    # the noise is white: its spectrum is flat (ratio of high- to low-frequency power ~1)
    power = np.abs(np.fft.fft2(noise)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(48), np.fft.fftfreq(48)))
    assert 0.9 < power[:, f > 0.3].mean() / power[:, (f > 0.02) & (f < 0.15)].mean() < 1.1


def test_options_optics_groups_gaussian_states_and_errors(tmp_path):
    gauss = phantoms.model_to_gaussians(phantoms.phantom_model("open"))
    ds = simulate.simulate_dataset(tmp_path / "g", {"A": gauss, "B": gauss}, [1, 3],
                                   n_particles=40, box_px=32, pixel_size_A=6.0, snr=0.1,
                                   n_optics_groups=2, particles_per_micrograph=10,
                                   random_subset=False, stack_format=".mrc",
                                   hinge_values={"A": 1.5}, pose_distribution="preferred")
    blocks = starfile.read(ds.star_path, always_dict=True)
    assert blocks["optics"]["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "opticsGroup2"]
    assert sorted(set(blocks["particles"]["rlnOpticsGroup"])) == [1, 2]
    assert "rlnRandomSubset" not in blocks["particles"].columns
    assert ds.stack_paths[0].endswith("stack_001.mrc")
    assert np.bincount(ds.labels).tolist() == [10, 30]
    truth = pd.read_csv(ds.truth_path)
    assert truth.loc[truth.state_name == "A", "hinge_deg"].eq(1.5).all()
    assert truth.loc[truth.state_name == "B", "hinge_deg"].isna().all()
    with pytest.raises(InputError, match="populations"):
        simulate.simulate_dataset(tmp_path / "e", {"A": gauss}, [0.5, 0.5], n_particles=4)
    with pytest.raises(InputError, match="snr"):
        simulate.simulate_dataset(tmp_path / "e", {"A": gauss}, n_particles=4, snr=0)
    with pytest.warns(HetclassWarning, match="beyond the box"):
        simulate.simulate_dataset(tmp_path / "w", {"A": gauss}, n_particles=2, box_px=24,
                                  pixel_size_A=6.0)


def test_continuous_dataset_uses_each_particles_hinge(tmp_path):
    ds = simulate.continuous_dataset(tmp_path / "c", n_particles=24, hinge_range_deg=(0, 30),
                                     box_px=48, pixel_size_A=4.0, snr=None, seed=2)
    truth = pd.read_csv(ds.truth_path)
    h = truth["hinge_deg"].to_numpy()
    assert (h >= 0).all() and (h <= 30).all() and np.ptp(h) > 15
    assert sorted(ds.map_paths) == ["hinge_0", "hinge_15", "hinge_30"]
    stack = mrcfile.read(ds.stack_paths[0])
    for i in (int(np.argmin(h)), int(np.argmax(h))):
        model = phantoms.phantom_model("open", hinge_deg=h[i])
        xyz, amp, sigma = phantoms.model_to_gaussians(model)
        g = (xyz, amp, np.maximum(sigma, 4.0))  # sigma floored at one pixel (min_sigma_px=1)
        expect = simulate.simulate_images(g, ds.rotations[i:i + 1], ds.shifts_A[i:i + 1],
                                          ds.defocus_u_A[i], ds.defocus_v_A[i],
                                          ds.defocus_angle_deg[i], 48, 4.0)[0]
        np.testing.assert_allclose(stack[i], expect, atol=1e-3 * np.abs(expect).max())


def test_relion_reconstruct_recovers_the_true_map(tmp_path):
    """RELION reads our STAR and stacks (noise, normalisation, CTF, shifts) and rebuilds the map."""
    require_relion("relion_reconstruct")
    from relion_tools import run_relion
    ds = simulate.simulate_dataset(tmp_path, {"closed": phantoms.phantom_model("closed")},
                                   n_particles=1200, seed=3, snr=0.1)
    run_relion(["relion_reconstruct", "--i", "particles.star", "--o", "rec.mrc", "--ctf",
                "--angpix", "3"], cwd=str(tmp_path))
    rec = mrcfile.read(str(tmp_path / "rec.mrc"))
    truth = ds.maps["closed"]
    f = np.fft.fftfreq(64, 3.0)
    keep = (f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2) < 1 / 20.0 ** 2

    def lp(v):
        return np.fft.ifftn(np.fft.fftn(v) * keep).real

    assert np.corrcoef(lp(rec).ravel(), lp(truth).ravel())[0, 1] > 0.98
    assert np.corrcoef(lp(rec)[::-1].ravel(), lp(truth).ravel())[0, 1] < 0.6  # not the mirror
