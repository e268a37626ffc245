"""``hetclass classify`` in-process: RELION Class3D-style outputs, bad input (issue 2, 4 and 9).

Every bad input gives exit code 2 and exactly one line on stderr naming the file, field and
value, no traceback, and writes nothing. Inputs are never modified; an existing non-empty
``--out`` is refused without ``--continue``/``--overwrite``.
"""

import hashlib
import json
import os

import mrcfile
import numpy as np
import pytest
import starfile

from hetclass_standalone.main import main as cli


def _hash_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _args(star, project_dir, out, *extra, classes="2"):
    return ["classify", "--particles", str(star), "--project-dir", str(project_dir),
            "--classes", classes, "--max-iter", "3", "--out", str(out), "--quiet", *extra]


# ----- a successful run: the outputs ------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(tiny_dataset, tmp_path_factory):
    ds = tiny_dataset
    before = _hash_tree(ds.out_dir)
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = cli(_args(ds.star_path, ds.out_dir, out, "--target-res", "25"))
    return ds, out, rc, before


def test_run_succeeds_and_inputs_untouched(cli_run):
    ds, out, rc, before = cli_run
    assert rc == 0
    assert _hash_tree(ds.out_dir) == before


def test_run_data_star_keeps_input_and_adds_class_columns(cli_run):
    ds, out, _, _ = cli_run
    src = starfile.read(ds.star_path, always_dict=True)
    got = starfile.read(out / "run_data.star", always_dict=True)
    assert set(src) <= set(got)  # optics + particles tables kept
    for name, table in src.items():
        assert set(table.columns) <= set(got[name].columns), name
    parts, orig = got["particles"], src["particles"]
    assert len(parts) == len(orig)
    np.testing.assert_array_equal(parts["rlnImageName"], orig["rlnImageName"])
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnDefocusU",
                "rlnRandomSubset", "rlnOpticsGroup"):
        np.testing.assert_allclose(parts[col], orig[col], atol=1e-5)
    post = np.load(out / "run_posteriors.npy")
    assert post.shape == (len(orig), 2) and post.dtype == np.float32
    np.testing.assert_allclose(post.sum(1), 1.0, atol=1e-5)
    cls = parts["rlnClassNumber"].to_numpy()
    assert set(cls.tolist()) <= {1, 2} and np.issubdtype(cls.dtype, np.integer)
    np.testing.assert_array_equal(cls, post.argmax(1) + 1)  # 1-based
    np.testing.assert_allclose(parts["rlnMaxValueProbDistribution"], post.max(1), atol=1e-5)
    assert np.all(np.isfinite(parts["rlnLogLikeliContribution"]))


def test_run_model_star_and_run_json(cli_run):
    ds, out, _, _ = cli_run
    model = starfile.read(out / "run_model.star", always_dict=True)
    classes = model["model_classes"]
    assert len(classes) == 2
    for ref in classes["rlnReferenceImage"]:
        assert os.path.basename(ref) in ("run_class001.mrc", "run_class002.mrc")
        assert os.path.exists(ref) or os.path.exists(out / os.path.basename(ref))
    assert np.isclose(classes["rlnClassDistribution"].sum(), 1.0, atol=1e-4)
    assert np.all(classes["rlnEstimatedResolution"] > 2 * ds.pixel_size_A)
    for k in (1, 2):
        table = model[f"model_class_{k}"]
        for col in ("rlnResolution", "rlnAngstromResolution", "rlnGoldStandardFsc", "rlnSsnrMap"):
            assert col in table.columns, (k, col)
    for k in (1, 2):
        with mrcfile.open(out / f"run_class{k:03d}.mrc") as mrc:
            assert mrc.data.shape == (ds.box_px,) * 3
            assert np.isclose(float(mrc.voxel_size.x), ds.pixel_size_A)
        for h in (1, 2):
            assert (out / f"run_half{h}_class{k:03d}_unfil.mrc").exists()
    info = json.loads((out / "run.json").read_text())
    iters = info["iterations"]
    assert 1 <= len(iters) <= 3
    assert [s["iteration"] for s in iters] == list(range(1, len(iters) + 1))
    for s in iters:
        assert 0 <= s["changed_pct"] <= 100 and np.isclose(sum(s["class_fractions"]), 1.0)
    assert info["options"]["seed"] == 0 and info["options"]["classes"] == 2


# ----- bad input ---------------------------------------------------------------------------------
def _expect_input_error(capsys, argv, *needles, out=None):
    capsys.readouterr()
    rc = cli(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, (rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err + captured.out
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    if out is not None:
        assert not os.path.exists(out) or not os.listdir(out), os.listdir(out)
    return lines[0]


def _edit_star(star, particles=None, optics=None):
    blocks = starfile.read(star, always_dict=True)
    if particles is not None:
        blocks["particles"] = particles(blocks["particles"])
    if optics is not None:
        blocks["optics"] = optics(blocks["optics"])
    starfile.write(blocks, star, overwrite=True)


@pytest.fixture
def bad(tiny_dataset, copy_dataset, tmp_path):
    """A fresh copy of the tiny data set: (star path, project dir, out dir)."""
    d = copy_dataset(tiny_dataset)
    return d / "particles.star", d, tmp_path / "out"


def test_missing_star(bad, capsys):
    star, d, out = bad
    _expect_input_error(capsys, _args(d / "nope.star", d, out), "nope.star", out=out)


def test_empty_star(bad, capsys):
    star, d, out = bad
    star.write_text("")
    _expect_input_error(capsys, _args(star, d, out), "particles.star", out=out)


@pytest.mark.parametrize("columns,needle,hint", [
    (("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), "rlnAngle", "refine"),
    (("rlnDefocusU", "rlnDefocusV"), "rlnDefocus", "ctf")])
def test_star_without_pose_or_ctf_columns(bad, capsys, columns, needle, hint):
    star, d, out = bad
    _edit_star(star, particles=lambda t: t.drop(columns=list(columns)))
    line = _expect_input_error(capsys, _args(star, d, out), "particles.star", needle, out=out)
    assert hint in line.lower()  # says which step must run first (refinement / CTF estimation)


def test_image_index_beyond_stack(bad, capsys):
    star, d, out = bad

    def edit(t):
        t.loc[3, "rlnImageName"] = "000099@Particles/stack_001.mrcs"
        return t
    _edit_star(star, particles=edit)
    _expect_input_error(capsys, _args(star, d, out), "stack_001.mrcs", "rlnImageName", "000099",
                        out=out)


def test_box_inconsistent_with_optics(bad, capsys):
    star, d, out = bad
    _edit_star(star, optics=lambda t: t.assign(rlnImageSize=48))
    _expect_input_error(capsys, _args(star, d, out), "stack_00", "rlnImageSize", "32", out=out)


def test_pixel_size_inconsistent_with_stack(bad, capsys):
    star, d, out = bad
    _edit_star(star, optics=lambda t: t.assign(rlnImagePixelSize=4.5))
    _expect_input_error(capsys, _args(star, d, out), "stack_00", "voxel size", "6", out=out)


@pytest.mark.parametrize("value", [-6.0, 0.0])
def test_non_positive_pixel_size(bad, capsys, value):
    star, d, out = bad
    _edit_star(star, optics=lambda t: t.assign(rlnImagePixelSize=value))
    _expect_input_error(capsys, _args(star, d, out), "particles.star", "rlnImagePixelSize",
                        str(value).rstrip("0").rstrip("."), out=out)


def test_nan_in_image(bad, capsys):
    star, d, out = bad
    with mrcfile.open(d / "Particles" / "stack_002.mrcs", mode="r+") as mrc:
        mrc.data[4, 10, 11] = np.nan
    line = _expect_input_error(capsys, _args(star, d, out), "stack_002.mrcs", out=out)
    assert "nan" in line.lower() or "finite" in line.lower()


def test_truncated_stack(bad, capsys):
    star, d, out = bad
    path = d / "Particles" / "stack_002.mrcs"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 2000])
    _expect_input_error(capsys, _args(star, d, out), "stack_002.mrcs", out=out)


@pytest.mark.parametrize("classes", ["0", "-1", "41"])
def test_bad_number_of_classes(bad, capsys, classes):
    star, d, out = bad  # 40 particles
    _expect_input_error(capsys, _args(star, d, out, classes=classes), "--classes", classes,
                        out=out)


def _write_map(path, box, voxel_A, value=1.0):
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.full((box, box, box), value, np.float32))
        mrc.voxel_size = voxel_A
    return path


@pytest.mark.parametrize("option", ["--solvent-mask", "--focus-mask"])
def test_mask_of_wrong_size(bad, capsys, option):
    star, d, out = bad
    mask = _write_map(d / "mask16.mrc", 16, 6.0)
    _expect_input_error(capsys, _args(star, d, out, option, str(mask)), "mask16.mrc", "16",
                        out=out)


def test_reference_of_wrong_pixel_size(bad, capsys):
    star, d, out = bad
    ref = _write_map(d / "ref_4A.mrc", 32, 4.0)
    _expect_input_error(capsys, _args(star, d, out, "--ref", str(ref)), "ref_4A.mrc",
                        "voxel size", "4", out=out)


def test_existing_output_refused_and_untouched(tiny_dataset, tmp_path, capsys):
    ds = tiny_dataset
    out = tmp_path / "out"
    out.mkdir()
    (out / "run_data.star").write_text("precious\n")
    (out / "notes.txt").write_text("mine\n")
    before = _hash_tree(out)
    line = _expect_input_error(capsys, _args(ds.star_path, ds.out_dir, out), str(out))
    assert "--continue" in line and "--overwrite" in line
    assert _hash_tree(out) == before
