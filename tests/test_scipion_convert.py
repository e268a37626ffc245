"""Scipion <-> hetclass particle conversion: the alignment convention and the set round trip.

The numeric tests need only numpy; the set tests need pwem (the ``scipion`` extra), the
cross-checks scipion-em-relion (optional; ``ci/scipion_env.sh`` installs it).
"""

import importlib.util
import os

import numpy as np
import pytest

from hetclass.errors import InputError
from hetclass.geometry import euler_to_matrix
from hetclass.particles import Optics, ParticleSet
from scipion_hetclass.convert import image_name, relion_to_scipion_matrices, scipion_to_relion, split_image_name

HAS_PWEM = importlib.util.find_spec("pwem") is not None
HAS_RELION_PLUGIN = HAS_PWEM and importlib.util.find_spec("relion") is not None
needs_pwem = pytest.mark.skipif(not HAS_PWEM, reason="pwem not importable (scipion extra: "
                                                     "bash ci/scipion_env.sh)")
needs_relion = pytest.mark.skipif(
    not HAS_RELION_PLUGIN, reason="scipion-em-relion not installed (optional test dependency: "
                                  "pip install scipion-em-relion in the scipion venv)")


def random_poses(n, seed=0):
    rng = np.random.default_rng(seed)
    angles = np.stack([rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                       rng.uniform(-180, 180, n)], axis=1)
    return angles, rng.uniform(-12.0, 12.0, (n, 2))


# ----- numeric convention ---------------------------------------------------------------------
def test_matrix_is_inverse_of_relion_projection_with_pixel_shifts():
    angles, shifts_A = random_poses(20)
    pixel = 1.37
    rot = euler_to_matrix(*angles.T)
    mats = relion_to_scipion_matrices(rot, shifts_A, pixel)
    for a, s, m in zip(rot, shifts_A, mats):
        relion_4x4 = np.eye(4)
        relion_4x4[:3, :3] = a
        relion_4x4[:2, 3] = -s / pixel           # RELION's -origin, in pixels
        np.testing.assert_allclose(m, np.linalg.inv(relion_4x4), atol=1e-12)


def test_hand_example_in_plane_rotation_and_shift():
    # psi = 90 deg, origin (+4 A, 0) at 2 A/px: A = [[0,1,0],[-1,0,0],[0,0,1]], s = (2, 0, 0) px
    m = relion_to_scipion_matrices(euler_to_matrix(0.0, 0.0, 90.0), [[4.0, 0.0]], 2.0)[0]
    np.testing.assert_allclose(m[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(m[:3, 3], [0.0, 2.0, 0.0], atol=1e-12)   # A.T @ s


def test_round_trip_scipion_relion():
    angles, shifts_A = random_poses(200, seed=1)
    rot = euler_to_matrix(*angles.T)
    pixel = np.full(200, 0.83)
    back_rot, back_shift = scipion_to_relion(relion_to_scipion_matrices(rot, shifts_A, pixel),
                                             pixel)
    np.testing.assert_allclose(back_rot, rot, atol=1e-12)
    np.testing.assert_allclose(back_shift, shifts_A, atol=1e-10)


def test_mirrored_or_scaled_transform_is_rejected_with_field():
    m = relion_to_scipion_matrices(euler_to_matrix(10.0, 20.0, 30.0), [[0.0, 0.0]], 1.0)
    mirrored = m.copy()
    mirrored[0, :3, 0] *= -1
    with pytest.raises(InputError, match="_transform"):
        scipion_to_relion(mirrored, 1.0, source="particles.sqlite")
    with pytest.raises(InputError, match="particles.sqlite"):
        scipion_to_relion(m * 2.0, 1.0, source="particles.sqlite")


def test_image_names():
    assert image_name(3, "Runs/0001_Import/extra/a.mrcs", "/p") == \
        "3@/p/Runs/0001_Import/extra/a.mrcs"
    assert image_name(5, "/data/stack.mrc:mrcs", "/p") == "5@/data/stack.mrc"
    assert image_name(0, "single.mrc", "/p") == "/p/single.mrc"       # NO_INDEX
    assert split_image_name("000012@/d/s.mrcs") == (12, "/d/s.mrcs")
    assert split_image_name("/d/one.mrc") == (1, "/d/one.mrc")


@needs_relion
def test_against_relion_plugin_matrix_from_geometry():
    from relion.convert.convert_deprecated import geometryFromMatrix, matrixFromGeometry
    angles, shifts_A = random_poses(50, seed=2)
    pixel = 1.9
    mats = relion_to_scipion_matrices(euler_to_matrix(*angles.T), shifts_A, pixel)
    for ang, s, m in zip(angles, shifts_A, mats):
        ref = matrixFromGeometry(np.array([s[0] / pixel, s[1] / pixel, 0.0]), ang, True)
        np.testing.assert_allclose(m, ref, atol=1e-12)
        shifts_px, ref_angles = geometryFromMatrix(m, True)
        np.testing.assert_allclose(shifts_px[:2] * pixel, s, atol=1e-9)
        np.testing.assert_allclose(euler_to_matrix(*ref_angles)[0],
                                   euler_to_matrix(*ang)[0], atol=1e-9)


# ----- Scipion sets ---------------------------------------------------------------------------
def make_particles(tmp_path, n=12, stack=".mrcs", seed=3):
    import mrcfile
    box = 16
    path = tmp_path / f"stack{stack}"
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.zeros((n, box, box), dtype=np.float32))
        mrc.voxel_size = 2.5
    angles, shifts_A = random_poses(n, seed=seed)
    rng = np.random.default_rng(seed)
    du = rng.uniform(8000, 20000, n)
    optics = Optics(names=np.array(["opticsGroup1"]), voltage_kV=np.array([200.0]),
                    cs_mm=np.array([1.4]), amplitude_contrast=np.array([0.07]),
                    pixel_size_A=np.array([2.5]), box_px=np.array([box]))
    return ParticleSet(
        image_names=np.array([f"{i + 1}@stack{stack}" for i in range(n)]),
        rotations=euler_to_matrix(*angles.T), shifts_A=shifts_A, defocus_u_A=du,
        defocus_v_A=du - 300.0, defocus_angle_deg=rng.uniform(0, 180, n),
        optics_group=np.zeros(n, dtype=np.int64), optics=optics,
        phase_shift_deg=rng.uniform(0, 90, n), random_subset=1 + np.arange(n) % 2,
        project_dir=str(tmp_path))


def assert_same_particles(a, b, tol=1e-9):
    np.testing.assert_allclose(a.rotations, b.rotations, atol=tol)
    np.testing.assert_allclose(a.shifts_A, b.shifts_A, atol=tol * 10)
    for name in ("defocus_u_A", "defocus_v_A", "defocus_angle_deg"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=tol * 10)
    np.testing.assert_allclose(a.pixel_size_A, b.pixel_size_A)


@needs_pwem
@pytest.mark.parametrize("stack", [".mrcs", ".mrc"])
def test_set_round_trip_with_non_contiguous_ids(tmp_path, stack):
    from pwem.objects import SetOfParticles

    from scipion_hetclass.convert import particles_from_set, write_set

    particles = make_particles(tmp_path, stack=stack)
    ids = np.array([5, 6, 9, 40, 41, 42, 100, 101, 102, 103, 500, 900])
    sqlite = write_set(tmp_path / "parts.sqlite", particles, ids=ids)
    part_set = SetOfParticles(filename=sqlite)
    part_set.loadAllProperties()
    assert part_set.hasAlignmentProj() and part_set.hasCTF()
    assert part_set.getSamplingRate() == pytest.approx(2.5)
    back, back_ids = particles_from_set(part_set, project_dir=str(tmp_path / "elsewhere"))
    part_set.close()
    np.testing.assert_array_equal(back_ids, ids)
    assert_same_particles(particles, back)
    np.testing.assert_allclose(back.phase_shift_deg, particles.phase_shift_deg)
    np.testing.assert_array_equal(back.random_subset, particles.random_subset)
    assert back.optics.voltage_kV[0] == 200.0 and back.optics.cs_mm[0] == 1.4
    assert back.optics.amplitude_contrast[0] == pytest.approx(0.07)
    assert back.box_px[0] == 16
    # absolute stack paths, 1-based indices, the same images
    expected = [f"{i + 1}@{tmp_path / ('stack' + stack)}" for i in range(12)]
    assert back.image_names.tolist() == expected


@needs_pwem
def test_disabled_particles_are_left_out(tmp_path):
    from pwem.objects import SetOfParticles

    from scipion_hetclass.convert import particles_from_set, write_set

    particles = make_particles(tmp_path)
    sqlite = write_set(tmp_path / "parts.sqlite", particles)
    part_set = SetOfParticles(filename=sqlite)
    part_set.loadAllProperties()
    p = part_set[4]
    p.setEnabled(False)
    part_set.update(p)
    part_set.write()
    back, ids = particles_from_set(part_set, str(tmp_path))
    part_set.close()
    assert 4 not in ids.tolist() and len(back) == 11


@needs_pwem
def test_set_without_alignment_or_ctf_reports_field(tmp_path):
    from pwem.objects import Particle, SetOfParticles

    from scipion_hetclass.convert import particles_from_set

    part_set = SetOfParticles(filename=str(tmp_path / "bare.sqlite"))
    part_set.setSamplingRate(1.0)
    p = Particle()
    p.setLocation(1, "x.mrcs")
    part_set.append(p)
    with pytest.raises(InputError, match="_transform"):
        particles_from_set(part_set, str(tmp_path))
    part_set.close()


@needs_relion
def test_relion_plugin_star_writer_agrees(tmp_path):
    """Scipion set (our converter) -> STAR by scipion-em-relion -> hetclass STAR reader."""
    from pwem.objects import SetOfParticles
    from relion.convert import writeSetOfParticles

    from hetclass.io.star import read_star
    from scipion_hetclass.convert import write_set

    particles = make_particles(tmp_path, n=30, seed=4)
    sqlite = write_set(tmp_path / "parts.sqlite", particles)
    part_set = SetOfParticles(filename=sqlite)
    part_set.loadAllProperties()
    star = str(tmp_path / "relion.star")
    writeSetOfParticles(part_set, star, outputDir=str(tmp_path))
    part_set.close()
    back = read_star(star, project_dir=str(tmp_path))
    assert_same_particles(particles, back, tol=1e-5)   # STAR text: 6 decimals


@needs_relion
def test_relion_plugin_star_reader_agrees(tmp_path):
    """hetclass STAR writer -> Scipion set by scipion-em-relion -> our converter."""
    from pwem.constants import ALIGN_PROJ
    from pwem.objects import SetOfParticles
    from relion.convert import readSetOfParticles

    from hetclass.io.star import write_particles_star
    from scipion_hetclass.convert import particles_from_set

    particles = make_particles(tmp_path, n=30, seed=5)
    star = str(tmp_path / "hetclass.star")
    write_particles_star(star, particles)
    part_set = SetOfParticles(filename=str(tmp_path / "read.sqlite"))
    cwd = os.getcwd()
    os.chdir(tmp_path)          # the relion reader resolves stack paths from the cwd
    try:
        readSetOfParticles(star, part_set, alignType=ALIGN_PROJ)
        part_set.setSamplingRate(2.5)
        back, _ = particles_from_set(part_set, str(tmp_path))
    finally:
        os.chdir(cwd)
        part_set.close()
    assert_same_particles(particles, back, tol=1e-5)
