"""`hetclass convert` in-process: .cs -> STAR (read back by RELION), 3.0 <-> 3.1, STAR -> .cs,
and one-line errors with exit code 2 for bad input."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import starfile
from shared_fixtures import fixtures_dir

from hetclass.io import cryosparc as cs
from hetclass.io.star import read_star
from hetclass_standalone.main import main

FIXTURES = fixtures_dir("cryosparc")
PLAIN = os.path.join(FIXTURES, "synthetic_particles.cs")
PASS = os.path.join(FIXTURES, "synthetic_passthrough_particles.cs")


def save_cs(path, table):
    with open(path, "wb") as f:
        np.save(f, table, allow_pickle=False)
    return str(path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A CryoSPARC-like project P3 (job J9 holds the .cs files, J5 the .mrc stacks, 16 px);
    the working directory is tmp_path."""
    import mrcfile
    monkeypatch.chdir(tmp_path)
    table = np.load(PLAIN)
    table["blob/shape"] = 16
    proj = tmp_path / "P3"
    (proj / "J9").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for path in set(table["blob/path"]):
        p = proj / path.decode()
        p.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(p) as m:
            m.set_data(rng.normal(size=(6, 16, 16)).astype(np.float32))
            m.voxel_size = 1.3
    save_cs(proj / "J9" / "J9_particles.cs", table)
    shutil.copy(PASS, proj / "J9" / "J9_passthrough_particles.cs")
    return proj


def run_cli(capsys, *argv):
    rc = main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cs_to_star_is_read_by_relion(project, capsys):
    rc, out, err = run_cli(capsys, "P3/J9/J9_particles.cs", "out/particles.star",
                           "--passthrough", "P3/J9/J9_passthrough_particles.cs")
    assert rc == 0, err
    assert err == ""                                   # stacks found: no warning
    star = starfile.read("out/particles.star", always_dict=True)
    names = star["particles"]["rlnImageName"]
    assert all(n.split("@")[1].startswith("out/particles_stacks/J5/extract/") for n in names)
    assert all(n.endswith(".mrcs") for n in names)
    # same particles as the reader gives, uid by uid
    ref = cs.read_cs("P3/J9/J9_particles.cs", ["P3/J9/J9_passthrough_particles.cs"])
    back = read_star("out/particles.star")
    np.testing.assert_array_equal(cs.uids_of(back), cs.uids_of(ref))
    np.testing.assert_allclose(back.rotations, ref.rotations, atol=2e-5)
    np.testing.assert_allclose(back.shifts_A, ref.shifts_A, atol=1e-5)
    np.testing.assert_array_equal(back.random_subset, ref.random_subset)
    np.testing.assert_array_equal(back.micrograph_names, ref.micrograph_names)
    # the linked stacks are the real ones
    import mrcfile
    first = names.iloc[0].split("@")
    with mrcfile.open(first[1]) as m, \
            mrcfile.open(os.path.join("P3", ref.image_names[0].split("@")[1])) as r:
        np.testing.assert_array_equal(m.data, r.data)
    relion = shutil.which("relion_reconstruct")
    if relion is None:
        pytest.skip("relion_reconstruct (RELION 3.1) is not installed")
    res = subprocess.run([relion, "--i", "out/particles.star", "--o", "out/rec.mrc"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    with mrcfile.open("out/rec.mrc") as m:
        assert m.data.shape == (16, 16, 16) and np.isfinite(m.data).all()


def test_relion_refuses_mrc_stacks_without_links(project, capsys):
    """Why the links exist: RELION 3.1 rejects index@stack.mrc."""
    rc, _, err = run_cli(capsys, "P3/J9/J9_particles.cs", "raw.star", "--no-links",
                         "--cs-project-dir", "P3")
    assert rc == 0, err
    names = starfile.read("raw.star", always_dict=True)["particles"]["rlnImageName"]
    assert all(n.endswith(".mrc") and "@P3/J5/" in n for n in names)
    relion = shutil.which("relion_reconstruct")
    if relion is None:
        pytest.skip("relion_reconstruct (RELION 3.1) is not installed")
    res = subprocess.run([relion, "--i", "raw.star", "--o", "rec.mrc"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0 and ".mrcs" in res.stdout + res.stderr


def test_missing_stacks_only_warn(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, PLAIN, "p.star", "--passthrough", PASS)
    assert rc == 0
    assert err.count("\n") == 1 and "warning" in err and "--cs-project-dir" in err
    assert len(starfile.read("p.star", always_dict=True)["particles"]) == 8


def test_star_versions_round_trip(project, capsys):
    assert run_cli(capsys, "P3/J9/J9_particles.cs", "p31.star")[0] == 0
    assert run_cli(capsys, "p31.star", "p30.star", "--to-version", "3.0")[0] == 0
    assert run_cli(capsys, "p30.star", "again31.star")[0] == 0
    t30 = starfile.read("p30.star", always_dict=True)
    assert len(t30) == 1                                   # one table, no data_optics
    df30 = next(iter(t30.values()))
    assert "rlnOriginX" in df30 and "rlnOriginXAngst" not in df30
    a, b, c = read_star("p31.star"), read_star("p30.star"), read_star("again31.star")
    for other in (b, c):
        np.testing.assert_array_equal(other.image_names, a.image_names)
        np.testing.assert_allclose(other.rotations, a.rotations, atol=1e-5)
        np.testing.assert_allclose(other.shifts_A, a.shifts_A, atol=1e-5)
        np.testing.assert_allclose(other.defocus_u_A, a.defocus_u_A, atol=1e-3)
        np.testing.assert_allclose(other.pixel_size_A, a.pixel_size_A, atol=1e-6)
        np.testing.assert_array_equal(cs.uids_of(other), cs.uids_of(a))


def test_star_to_cs(project, capsys):
    assert run_cli(capsys, "P3/J9/J9_particles.cs", "p.star", "--passthrough",
                   "P3/J9/J9_passthrough_particles.cs")[0] == 0
    # pretend a classification changed the classes: shuffle rows, set rlnClassNumber
    blocks = starfile.read("p.star", always_dict=True)
    df = blocks["particles"].iloc[::-1].reset_index(drop=True)
    df["rlnClassNumber"] = [3, 1, 2, 2, 1, 3, 3, 1]
    starfile.write({"optics": blocks["optics"], "particles": df}, "classified.star")
    # with the original particles: every original field kept bit for bit, classes updated
    rc, out, err = run_cli(capsys, "classified.star", "back.cs", "--passthrough",
                           "P3/J9/J9_particles.cs")
    assert rc == 0, err
    back = np.load("back.cs", allow_pickle=False)
    orig = np.load("P3/J9/J9_particles.cs")
    row = {int(u): i for i, u in enumerate(orig["uid"])}
    order = [row[int(u)] for u in back["uid"]]
    np.testing.assert_array_equal(back["uid"], df["rlnHetclassUid"].to_numpy(np.uint64))
    for name in orig.dtype.names:
        if name not in ("alignments3D/class", "alignments3D/class_posterior"):
            assert back[name].tobytes() == orig[name][order].tobytes(), name
    np.testing.assert_array_equal(back["alignments3D/class"], df["rlnClassNumber"] - 1)
    assert os.path.exists("back.csg")
    # without them: built from the STAR values (uids, stacks and poses preserved)
    assert run_cli(capsys, "classified.star", "built.cs")[0] == 0
    built = cs.read_cs("built.cs", project_dir="P3")
    np.testing.assert_array_equal(cs.uids_of(built), back["uid"])
    ref = cs.read_cs("back.cs", project_dir="P3")
    np.testing.assert_allclose(built.rotations, ref.rotations, atol=2e-5)
    np.testing.assert_allclose(built.shifts_A, ref.shifts_A, atol=1e-5)


def test_cs_to_cs_merges_passthrough(project, capsys):
    rc, _, err = run_cli(capsys, "P3/J9/J9_particles.cs", "merged.cs", "--passthrough",
                         "P3/J9/J9_passthrough_particles.cs")
    assert rc == 0, err
    merged = np.load("merged.cs", allow_pickle=False)
    ref = cs.read_cs("P3/J9/J9_particles.cs", ["P3/J9/J9_passthrough_particles.cs"])
    assert merged.tobytes() == ref.source["dataset"].tobytes()


def one_line_exit_2(capsys, *argv):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("hetclass convert: error: "), err
    assert "Traceback" not in err
    return err


def test_bad_input_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = open(PLAIN, "rb").read()
    (tmp_path / "trunc.cs").write_bytes(data[: len(data) // 2])
    assert "truncated" in one_line_exit_2(capsys, "trunc.cs", "o.star")
    (tmp_path / "text.cs").write_text("not a cs file\n")
    assert "not a CryoSPARC .cs file" in one_line_exit_2(capsys, "text.cs", "o.star")
    pt = np.load(PASS)
    save_cs(tmp_path / "short.cs", pt[2:])
    assert "lacks 2 of the 8" in one_line_exit_2(capsys, PLAIN, "o.star", "--passthrough",
                                                 "short.cs")
    table = np.load(PLAIN)
    dup = table.copy()
    dup["uid"][1] = dup["uid"][0]
    save_cs(tmp_path / "dup.cs", dup)
    assert "duplicated uid" in one_line_exit_2(capsys, "dup.cs", "o.star")
    save_cs(tmp_path / "nokv.cs", table[[n for n in table.dtype.names if n != "ctf/accel_kv"]])
    assert "ctf/accel_kv" in one_line_exit_2(capsys, "nokv.cs", "o.star")
    save_cs(tmp_path / "nopose.cs",
            table[[n for n in table.dtype.names if not n.startswith("alignments3D")]])
    assert "3D refinement" in one_line_exit_2(capsys, "nopose.cs", "o.star")
    pyem = os.path.join(FIXTURES, "pyem_synthetic_particles.star")
    assert "rlnHetclassUid" in one_line_exit_2(capsys, pyem, "o.cs")
    assert "extension" in one_line_exit_2(capsys, PLAIN, "o.txt")
    assert not any(n.startswith("o.") for n in os.listdir(tmp_path))   # nothing half-written
