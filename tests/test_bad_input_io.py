"""Every bad input of the I/O layer raises InputError whose one line names the file and field."""

import os
import sys
import types
import warnings

import mrcfile
import numpy as np
import pytest
import starfile
from shared_fixtures import fixtures_dir

from hetclass.errors import InputError
from hetclass.io.images import ImageSource
from hetclass.io.loader import load_particles
from hetclass.io.mrc import read_map, write_map, write_stack
from hetclass.io.star import read_star

FIXTURES = fixtures_dir("relion31")


def blocks31():
    return starfile.read(os.path.join(FIXTURES, "input_particles_relion31.star"),
                         always_dict=True, parse_as_string=["rlnImageName"])


def blocks30():
    return starfile.read(os.path.join(FIXTURES, "particles_relion30_style.star"),
                         always_dict=True, parse_as_string=["rlnImageName"])


def expect(exc_info, path, field=None, *words):
    line = exc_info.value.one_line()
    assert "\n" not in line
    assert os.path.basename(str(path)) in line, line
    if field is not None:
        assert f"field {field}" in line, line
    for w in words:
        assert w in line, line


def write_blocks(path, blocks):
    starfile.write(blocks, path)
    return path


def drop(blocks, block, column):
    blocks[block] = blocks[block].drop(columns=[column])
    return blocks


def setval(blocks, block, column, row, value):
    df = blocks[block].copy()
    df[column] = df[column].astype(object)
    df.loc[row, column] = value
    blocks[block] = df
    return blocks


# (id, blocks factory, expected field, words expected in the message)
STAR_CASES = [
    ("no_image_name", lambda: drop(blocks31(), "particles", "rlnImageName"),
     "rlnImageName", ()),
    ("no_pose", lambda: drop(blocks31(), "particles", "rlnAngleTilt"),
     "rlnAngleTilt", ("3D refinement",)),
    ("no_ctf", lambda: drop(blocks31(), "particles", "rlnDefocusV"),
     "rlnDefocusV", ("CTF estimation",)),
    ("no_voltage", lambda: drop(blocks31(), "optics", "rlnVoltage"), "rlnVoltage", ()),
    ("no_cs", lambda: drop(blocks31(), "optics", "rlnSphericalAberration"),
     "rlnSphericalAberration", ()),
    ("no_q0", lambda: drop(blocks31(), "optics", "rlnAmplitudeContrast"),
     "rlnAmplitudeContrast", ()),
    ("no_pixel_size", lambda: drop(blocks31(), "optics", "rlnImagePixelSize"),
     "rlnImagePixelSize", ()),
    ("zero_pixel_size", lambda: setval(blocks31(), "optics", "rlnImagePixelSize", 0, 0.0),
     "rlnImagePixelSize", ("0.0",)),
    ("negative_pixel_size", lambda: setval(blocks31(), "optics", "rlnImagePixelSize", 0, -1.5),
     "rlnImagePixelSize", ("-1.5",)),
    ("nan_defocus", lambda: setval(blocks31(), "particles", "rlnDefocusU", 2, "nan"),
     "rlnDefocusU", ("row 3",)),
    ("text_angle", lambda: setval(blocks31(), "particles", "rlnAngleRot", 1, "abc"),
     "rlnAngleRot", ("'abc'", "row 2")),
    ("nan_voltage", lambda: setval(blocks31(), "optics", "rlnVoltage", 0, "nan"),
     "rlnVoltage", ()),
    ("absent_optics_group", lambda: setval(blocks31(), "particles", "rlnOpticsGroup", 3, 2),
     "rlnOpticsGroup", ("absent from data_optics", "row 4", "value 2")),
    ("no_particle_rows", lambda: {"optics": blocks31()["optics"],
                                  "particles": blocks31()["particles"].iloc[:0]},
     "data_particles", ()),
    ("no_particle_table", lambda: {"optics": blocks31()["optics"]}, "data_particles", ()),
    ("r30_no_pixel_size", lambda: drop(blocks30(), "", "rlnDetectorPixelSize"),
     "rlnImagePixelSize", ()),
    ("r30_zero_detector", lambda: setval(blocks30(), "", "rlnDetectorPixelSize", 1, 0.0),
     "rlnDetectorPixelSize", ()),
    ("r30_no_voltage", lambda: drop(blocks30(), "", "rlnVoltage"), "rlnVoltage", ()),
    ("r30_no_pose", lambda: drop(blocks30(), "", "rlnAnglePsi"), "rlnAnglePsi",
     ("3D refinement",)),
]


@pytest.mark.parametrize("case", STAR_CASES, ids=[c[0] for c in STAR_CASES])
def test_bad_star(tmp_path, case):
    name, make, field, words = case
    path = write_blocks(tmp_path / f"bad_{name}.star", make())
    with pytest.raises(InputError) as e:
        read_star(path, project_dir=tmp_path)
    expect(e, path, field, *words)
    with pytest.raises(InputError):                     # same through the dispatcher
        load_particles(path, project_dir=tmp_path)


def test_star_file_level_errors(tmp_path):
    with pytest.raises(InputError) as e:
        read_star(tmp_path / "absent.star")
    expect(e, "absent.star", None, "not found")
    (tmp_path / "empty.star").write_text("")
    with pytest.raises(InputError) as e:
        read_star(tmp_path / "empty.star")
    expect(e, "empty.star", "file size", "empty")
    (tmp_path / "junk.star").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError) as e:
        read_star(tmp_path / "junk.star")
    expect(e, "junk.star")
    (tmp_path / "notes.star").write_text("just some text\nwithout blocks\n")
    with pytest.raises(InputError) as e:
        read_star(tmp_path / "notes.star")
    expect(e, "notes.star", None, "data_")


def test_loader_errors_and_dispatch(tmp_path, monkeypatch):
    with pytest.raises(InputError) as e:
        load_particles(tmp_path / "nothing.star")
    expect(e, "nothing.star", None, "not found")
    (tmp_path / "parts.txt").write_text("x")
    with pytest.raises(InputError) as e:
        load_particles(tmp_path / "parts.txt")
    expect(e, "parts.txt", "extension", "'.txt'")
    calls = []
    fake = types.ModuleType("hetclass.io.cryosparc")
    fake.read_cs = lambda path, passthrough=(), project_dir=None: calls.append(
        (path, tuple(passthrough), project_dir)) or "particles"
    monkeypatch.setitem(sys.modules, "hetclass.io.cryosparc", fake)
    (tmp_path / "p.cs").write_bytes(b"\x93NUMPY")
    out = load_particles(tmp_path / "p.cs", passthrough=["a.cs"], cs_project_dir="/cs/P1")
    assert out == "particles"
    assert calls == [(str(tmp_path / "p.cs"), ("a.cs",), "/cs/P1")]


# ----------------------------------------------------------------------------- maps
def test_bad_maps(tmp_path):
    with pytest.raises(InputError) as e:
        read_map(tmp_path / "absent.mrc")
    expect(e, "absent.mrc", None, "not found")
    (tmp_path / "text.mrc").write_text("this is not an MRC file at all\n" * 60)
    with pytest.raises(InputError) as e:
        read_map(tmp_path / "text.mrc")
    expect(e, "text.mrc", "header")
    write_map(tmp_path / "full.mrc", np.zeros((8, 8, 8)), 1.0)
    raw = (tmp_path / "full.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[:-100])
    with pytest.raises(InputError) as e:
        read_map(tmp_path / "cut.mrc")
    expect(e, "cut.mrc", "data size", "truncated")
    with mrcfile.new(tmp_path / "flat.mrc") as m:
        m.set_data(np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(InputError) as e:
        read_map(tmp_path / "flat.mrc")
    expect(e, "flat.mrc", "nx/ny/nz", "(8, 8, 4)")
    vol = np.zeros((6, 6, 6), dtype=np.float32)
    vol[1, 2, 3] = np.nan
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)     # header statistics of NaN data
        write_map(tmp_path / "nan.mrc", vol, 1.0)
    with pytest.raises(InputError) as e:
        read_map(tmp_path / "nan.mrc")
    expect(e, "nan.mrc", "data", "[1,2,3]", "nan")


# ----------------------------------------------------------------------------- images
@pytest.fixture
def image_project(tmp_path):
    """input_particles_relion31.star (5 particles of projA.mrcs, 32 px, 3 A/px) + a stack."""
    blocks = blocks31()
    write_blocks(tmp_path / "p.star", blocks)
    write_stack(tmp_path / "projA.mrcs", np.ones((5, 32, 32)), 3.0)
    return tmp_path


def image_error(tmp_path, star="p.star"):
    p = read_star(tmp_path / star, project_dir=tmp_path)
    with pytest.raises(InputError) as e:
        with ImageSource(p) as src:
            src.validate()
            src.read()
    return e


def test_good_image_project_reads(image_project):
    p = read_star(image_project / "p.star", project_dir=image_project)
    with ImageSource(p) as src:
        src.validate()
        assert src.read().shape == (5, 32, 32)


def test_missing_stack(image_project):
    os.remove(image_project / "projA.mrcs")
    expect(image_error(image_project), "projA.mrcs", "rlnImageName", "not found")


def test_index_beyond_stack(image_project):
    write_stack(image_project / "projA.mrcs", np.ones((4, 32, 32)), 3.0)
    expect(image_error(image_project), "projA.mrcs", "rlnImageName", "000005@projA.mrcs",
           "4 sections")


def test_box_mismatch(image_project):
    write_stack(image_project / "projA.mrcs", np.ones((5, 30, 30)), 3.0)
    expect(image_error(image_project), "projA.mrcs", "rlnImageSize", "(30, 30)")


def test_pixel_size_mismatch(image_project):
    write_stack(image_project / "projA.mrcs", np.ones((5, 32, 32)), 3.1)
    expect(image_error(image_project), "projA.mrcs", "voxel size", "3.1")


def test_not_an_mrc_stack(image_project):
    (image_project / "projA.mrcs").write_text("garbage\n" * 300)
    expect(image_error(image_project), "projA.mrcs", "header")


def test_nan_in_image(image_project):
    data = np.ones((5, 32, 32), dtype=np.float32)
    data[3, 7, 9] = np.inf
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)     # header statistics of inf data
        write_stack(image_project / "projA.mrcs", data, 3.0)
    expect(image_error(image_project), "projA.mrcs", "image 4", "inf")


def test_bad_image_name(image_project):
    blocks = setval(blocks31(), "particles", "rlnImageName", 1, "x@projA.mrcs")
    write_blocks(image_project / "q.star", blocks)
    expect(image_error(image_project, "q.star"), "q.star", "rlnImageName", "x@projA.mrcs")
