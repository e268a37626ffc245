"""RELION STAR I/O: real RELION 3.1.3 fixtures, 3.0 <-> 3.1, Euler round trips, and files read
back by the real RELION binaries (skipped with a reason only where RELION is not installed)."""

import os
import shutil
import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from shared_fixtures import fixtures_dir

from hetclass.geometry import euler_to_matrix, matrix_to_euler
from hetclass.io.loader import load_particles
from hetclass.io.mrc import write_stack
from hetclass.io.star import particles_to_tables, read_star, write_particles_star, write_star_blocks
from hetclass.particles import Optics, ParticleSet

FIXTURES = fixtures_dir("relion31")
F31 = "input_particles_relion31.star"
F30 = "particles_relion30_style.star"
F30_CONVERTED = "particles_relion30_converted_to_31.star"   # made by relion_convert_star
F_DATA = "class3d_run_it002_data.star"
F_MODEL = "class3d_run_it002_model.star"


def relion(tool):
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} (RELION 3.1) is not installed")
    return exe


def run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture
def project(tmp_path):
    """A project dir holding the fixtures and a 50-section 32 px stack projA.mrcs (3 A/px)."""
    for name in os.listdir(FIXTURES):
        if name.endswith(".star"):
            shutil.copy(os.path.join(FIXTURES, name), tmp_path / name)
    rng = np.random.default_rng(0)
    write_stack(tmp_path / "projA.mrcs", rng.normal(size=(50, 32, 32)), 3.0)
    return tmp_path


def assert_same_particles(a: ParticleSet, b: ParticleSet, atol=1e-6):
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.image_names, b.image_names)
    np.testing.assert_allclose(a.rotations, b.rotations, atol=atol)
    np.testing.assert_allclose(a.shifts_A, b.shifts_A, atol=atol)
    for name in ("defocus_u_A", "defocus_v_A", "defocus_angle_deg"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol)
    np.testing.assert_array_equal(a.optics_group, b.optics_group)
    for name in ("voltage_kV", "cs_mm", "amplitude_contrast", "pixel_size_A", "box_px"):
        np.testing.assert_allclose(getattr(a.optics, name), getattr(b.optics, name), atol=atol)
    np.testing.assert_array_equal(a.optics.names, b.optics.names)
    if a.micrograph_names is not None or b.micrograph_names is not None:
        np.testing.assert_array_equal(a.micrograph_names, b.micrograph_names)


def synthetic(n=12, box=16, pixel=2.5, stack="Stacks/s1.mrcs", seed=1, groups=1):
    rng = np.random.default_rng(seed)
    g = np.arange(n) % groups
    optics = Optics(names=np.array([f"og{i + 1}" for i in range(groups)]),
                    voltage_kV=np.array([300.0, 200.0][:groups]),
                    cs_mm=np.array([2.7, 0.01][:groups]),
                    amplitude_contrast=np.array([0.1, 0.07][:groups]),
                    pixel_size_A=np.full(groups, pixel), box_px=np.full(groups, box))
    return ParticleSet(
        image_names=np.array([f"{i + 1:06d}@{stack}" for i in range(n)]),
        rotations=euler_to_matrix(rng.uniform(-180, 180, n), rng.uniform(0, 180, n),
                                  rng.uniform(-180, 180, n)),
        shifts_A=rng.normal(scale=3, size=(n, 2)), defocus_u_A=rng.uniform(1e4, 2e4, n),
        defocus_v_A=rng.uniform(9e3, 1e4, n), defocus_angle_deg=rng.uniform(-90, 90, n),
        optics_group=g, optics=optics, phase_shift_deg=rng.uniform(0, 90, n),
        random_subset=1 + np.arange(n) % 2, micrograph_names=np.array(["m.mrc"] * n))


# ----------------------------------------------------------------------------- reading
def test_read_relion31_fixture_values(project):
    p = read_star(project / F31, project_dir=project)
    assert len(p) == 5 and p.source["version"] == "3.1" and p.source["format"] == "star"
    assert p.image_names[2] == "000003@projA.mrcs" and p.micrograph_names[4] == "mic004.mrc"
    np.testing.assert_allclose(p.rotations[2], euler_to_matrix(-128.103, 114.175, 20.667)[0])
    np.testing.assert_allclose(p.defocus_u_A[1], 23733.0)
    np.testing.assert_allclose(p.defocus_angle_deg[4], 166.71)
    assert p.optics.pixel_size_A.tolist() == [3.0] and p.optics.box_px.tolist() == [32]
    assert p.optics.voltage_kV.tolist() == [300.0] and p.optics.cs_mm.tolist() == [2.7]
    assert p.optics.relion_ids.tolist() == [1] and p.optics_group.tolist() == [0] * 5
    assert p.project_dir == os.path.abspath(project)
    table = p.source["particles"]
    assert list(table.columns)[:3] == ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    assert table["rlnImageName"].tolist()[0] == "000001@projA.mrcs"


def test_relion30_matches_relion_convert_star_output(project):
    old = read_star(project / F30, project_dir=project)
    new = read_star(project / F30_CONVERTED, project_dir=project)
    assert old.source["version"] == "3.0" and new.source["version"] == "3.1"
    assert_same_particles(old, new, atol=0)
    np.testing.assert_allclose(old.shifts_A[0], [1.5, -0.75])  # 0.5 px, -0.25 px at 3 A/px
    assert old.optics.box_px.tolist() == [32]                   # from the stack header


def test_relion30_without_stack_leaves_box_zero(tmp_path):
    shutil.copy(os.path.join(FIXTURES, F30), tmp_path / F30)
    p = read_star(tmp_path / F30, project_dir=tmp_path)
    assert p.optics.box_px.tolist() == [0]


def test_project_dir_defaults_to_cwd(project, monkeypatch):
    monkeypatch.chdir(project)
    assert read_star(F31).project_dir == os.path.abspath(project)
    assert load_particles(F31).project_dir == os.path.abspath(project)


def test_relion30_optics_groups_from_unique_combinations(tmp_path):
    text = open(os.path.join(FIXTURES, F30)).read().splitlines()
    rows = [i for i, line in enumerate(text) if "@projA.mrcs" in line]
    # particle 2 and 4: 200 kV at 10000 x / 2.0 um = 2 A/px
    for i in (rows[1], rows[3]):
        text[i] = text[i].replace(" 300.0 2.7 0.1 10000.0 3.0 ", " 200.0 2.7 0.1 10000.0 2.0 ")
    (tmp_path / "two.star").write_text("\n".join(text) + "\n")
    p = read_star(tmp_path / "two.star", project_dir=tmp_path)
    assert p.optics_group.tolist() == [0, 1, 0, 1, 0]
    assert p.optics.voltage_kV.tolist() == [300.0, 200.0]
    assert p.optics.pixel_size_A.tolist() == [3.0, 2.0]
    np.testing.assert_allclose(p.shifts_A[:, 0], [1.5, 1.0, 1.5, 1.0, 1.5])
    assert p.optics.names.tolist() == ["opticsGroup1", "opticsGroup2"]


# ----------------------------------------------------------------------------- writing
def test_passthrough_keeps_all_columns_and_rows(project):
    p = read_star(project / F_DATA, project_dir=project)
    sub = p.take(np.array([3, 0, 2]))
    out = project / "out.star"
    labels = np.array([7, 8, 9])
    write_particles_star(out, sub, extra_columns={"rlnClassNumber": labels,
                                                  "_rlnMyScore": np.array([1e-7, 0.5, 2e9])})
    blocks = starfile.read(out, always_dict=True)
    before = p.source["particles"].iloc[[3, 0, 2]].reset_index(drop=True)
    after = blocks["particles"]
    assert list(after.columns) == list(before.columns) + ["rlnMyScore"]
    assert after["rlnClassNumber"].tolist() == [7, 8, 9]
    np.testing.assert_allclose(after["rlnMyScore"], [1e-7, 0.5, 2e9], rtol=1e-6)
    for col in before.columns:
        if col == "rlnClassNumber":
            continue
        if before[col].dtype.kind in "if":
            np.testing.assert_allclose(after[col], before[col], atol=1e-6, err_msg=col)
        else:
            assert after[col].astype(str).tolist() == before[col].astype(str).tolist()
    pd.testing.assert_frame_equal(blocks["optics"], p.source["optics"], check_dtype=False)
    text = open(out).read()
    assert text.count("# version 30001") == 2
    assert text.index("# version 30001") < text.index("data_optics")
    assert_same_particles(read_star(out, project_dir=project), sub)


def test_version_conversions_keep_values(project):
    old = read_star(project / F30, project_dir=project)
    new = read_star(project / F30_CONVERTED, project_dir=project)
    write_particles_star(project / "a31.star", old, version="3.1")
    write_particles_star(project / "a30.star", new, version="3.0")
    a31 = read_star(project / "a31.star", project_dir=project)
    a30 = read_star(project / "a30.star", project_dir=project)
    assert a31.source["version"] == "3.1" and a30.source["version"] == "3.0"
    assert "rlnOriginX" not in a31.source["particles"].columns
    assert "rlnMagnification" in a30.source["particles"].columns
    assert_same_particles(a31, new)
    assert_same_particles(a30, old)
    assert "# version" not in open(project / "a30.star").read()


def test_euler_round_trip_through_star(tmp_path):
    p = synthetic(n=200, groups=2, seed=5)
    p.rotations[0] = euler_to_matrix(10, 0, 30)[0]      # gimbal lock rows
    p.rotations[1] = euler_to_matrix(-40, 180, 5)[0]
    write_particles_star(tmp_path / "e.star", p)
    q = read_star(tmp_path / "e.star", project_dir=tmp_path)
    np.testing.assert_allclose(q.rotations, p.rotations, atol=1e-6)
    rot, tilt, psi = (q.source["particles"][c].to_numpy() for c in
                      ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    np.testing.assert_allclose(np.stack(matrix_to_euler(p.rotations)), [rot, tilt, psi],
                               atol=1e-5)
    assert_same_particles(q, p, atol=1e-5)
    np.testing.assert_allclose(q.phase_shift_deg, p.phase_shift_deg, atol=1e-5)
    assert q.random_subset.tolist() == p.random_subset.tolist()
    assert q.optics.relion_ids.tolist() == [1, 2]


def test_tables_from_internal_representation():
    p = synthetic(n=4, groups=2)
    optics, df = particles_to_tables(p, {"rlnClassNumber": np.array([1, 2, 2, 1])})
    assert optics.columns.tolist() == [
        "rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast",
        "rlnSphericalAberration", "rlnVoltage", "rlnImagePixelSize", "rlnImageSize",
        "rlnImageDimensionality"]
    assert optics["rlnImageDimensionality"].tolist() == [2, 2]
    assert df["rlnOpticsGroup"].tolist() == [1, 2, 1, 2]
    np.testing.assert_allclose(df["rlnOriginXAngst"], p.shifts_A[:, 0])
    none, df30 = particles_to_tables(p, version="3.0")
    assert none is None
    np.testing.assert_allclose(df30["rlnOriginX"], p.shifts_A[:, 0] / 2.5)
    np.testing.assert_allclose(df30["rlnDetectorPixelSize"] * 1e4 / df30["rlnMagnification"],
                               2.5)


def test_write_star_blocks_model_layout(project):
    model = starfile.read(project / F_MODEL, always_dict=True)
    out = project / "run_model.star"
    write_star_blocks(out, model)
    lines = open(out).read().splitlines()
    data_lines = [i for i, line in enumerate(lines) if line.startswith("data_")]
    assert len(data_lines) == len(model)
    assert all(lines[i - 2] == "# version 30001" for i in data_lines)
    again = starfile.read(out, always_dict=True)
    assert again["model_general"] == model["model_general"]
    for name, block in model.items():
        if isinstance(block, pd.DataFrame):
            pd.testing.assert_frame_equal(again[name], block, check_dtype=False, rtol=1e-6)


def test_atomic_star_write_leaves_no_temp_files(project):
    p = read_star(project / F31, project_dir=project)
    write_particles_star(project / "x.star", p)
    with pytest.raises(ValueError):
        write_particles_star(project / "y.star", p, extra_columns={"rlnClassNumber": [1, 2]})
    assert not (project / "y.star").exists()
    assert not [f for f in os.listdir(project) if f.startswith(".tmp-")]


# ----------------------------------------------------------------------------- real RELION
def write_tiny_project(tmp_path, n=12):
    p = synthetic(n=n)
    os.makedirs(tmp_path / "Stacks", exist_ok=True)
    write_stack(tmp_path / "Stacks" / "s1.mrcs",
                np.random.default_rng(3).normal(size=(n, 16, 16)), 2.5)
    return p


def test_relion_star_handler_reads_our_31_file(tmp_path):
    exe = relion("relion_star_handler")
    p = write_tiny_project(tmp_path)
    classes = 1 + np.arange(len(p)) % 2
    write_particles_star(tmp_path / "out.star", p, extra_columns={
        "rlnClassNumber": classes, "rlnMaxValueProbDistribution": np.linspace(0.5, 1, len(p))})
    run([exe, "--i", "out.star", "--o", "x.star"], tmp_path)
    back = read_star(tmp_path / "x.star", project_dir=tmp_path)
    assert back.source["version"] == "3.1"
    assert_same_particles(back, p, atol=1e-5)
    assert back.source["particles"]["rlnClassNumber"].tolist() == classes.tolist()
    run([exe, "--i", "out.star", "--o", "c2.star", "--select", "rlnClassNumber",
         "--minval", "2", "--maxval", "2"], tmp_path)
    sel = read_star(tmp_path / "c2.star", project_dir=tmp_path)
    np.testing.assert_array_equal(sel.image_names, p.image_names[classes == 2])


def test_relion_reconstruct_reads_our_file_and_stack(tmp_path):
    exe = relion("relion_reconstruct")
    p = write_tiny_project(tmp_path)
    write_particles_star(tmp_path / "out.star", p)
    run([exe, "--i", "out.star", "--o", "r.mrc", "--ctf"], tmp_path)
    with mrcfile.open(tmp_path / "r.mrc") as m:
        assert m.data.shape == (16, 16, 16)
        assert m.voxel_size.x == pytest.approx(2.5)
        assert np.isfinite(m.data).all() and np.abs(m.data).max() > 0


def test_relion_convert_star_reads_our_30_file(tmp_path):
    exe = relion("relion_convert_star")
    p = write_tiny_project(tmp_path)
    write_particles_star(tmp_path / "old.star", p, version="3.0")
    run([exe, "--i", "old.star", "--o", "new.star"], tmp_path)
    new = read_star(tmp_path / "new.star", project_dir=tmp_path)
    old = read_star(tmp_path / "old.star", project_dir=tmp_path)
    assert new.source["version"] == "3.1" and old.source["version"] == "3.0"
    np.testing.assert_allclose(new.rotations, p.rotations, atol=1e-5)
    np.testing.assert_allclose(new.shifts_A, p.shifts_A, atol=1e-5)
    assert new.optics.pixel_size_A.tolist() == [2.5] and new.optics.box_px.tolist() == [16]
    assert_same_particles(old, new, atol=1e-5)


def test_load_particles_dispatches_cs_to_cryosparc_reader():
    cs_dir = os.path.join(os.path.dirname(FIXTURES), "cryosparc")
    p = load_particles(os.path.join(cs_dir, "synthetic_particles.cs"))
    assert isinstance(p, ParticleSet) and len(p) == 8
    assert p.source.get("format") != "star"
    optics, df = particles_to_tables(p)          # built from the internal representation
    assert len(df) == 8 and df["rlnImageName"].tolist() == p.image_names.tolist()
    np.testing.assert_allclose(optics["rlnImagePixelSize"], 1.3)
    assert optics["rlnImageSize"].tolist() == [128] * len(optics)
