"""MRC maps (read/write/check, read back by RELION) and atomic output helpers."""

import json
import os
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest

from hetclass.errors import InputError
from hetclass.io.atomic import atomic_path, atomic_save_npy, atomic_write_json, atomic_write_text
from hetclass.io.mrc import check_map_matches, read_info, read_map, write_map, write_stack


def asymmetric_map(n=12):
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    return x + 10 * y + 100 * z          # value encodes the [z, y, x] position


def test_write_read_map_round_trip(tmp_path):
    vol = asymmetric_map()
    write_map(tmp_path / "m.mrc", vol, 1.7, origin=(3.0, 4.0, 5.0))
    got, voxel = read_map(tmp_path / "m.mrc")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vol)
    assert voxel == pytest.approx(1.7)
    with mrcfile.open(tmp_path / "m.mrc") as m:          # stored as MRC [z, y, x], x fastest
        assert (int(m.header.nx), int(m.header.ny), int(m.header.nz)) == (12, 12, 12)
        assert float(m.data[2, 1, 0]) == 210.0
        assert int(m.header.ispg) == 1                   # a volume, not a stack
        assert (float(m.header.origin.x), float(m.header.origin.z)) == (3.0, 5.0)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_relion_reads_our_map(tmp_path):
    exe = shutil.which("relion_image_handler")
    if exe is None:
        pytest.skip("relion_image_handler (RELION 3.1) is not installed")
    write_map(tmp_path / "m.mrc", asymmetric_map(10), 2.25)
    res = subprocess.run([exe, "--i", "m.mrc", "--stats"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "10 x 10 x 10 x 1" in res.stdout and "angpix = 2.25" in res.stdout


def test_stack_header_info(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.zeros((7, 6, 6)), 1.25)
    info = read_info(tmp_path / "s.mrcs")
    assert info.shape == (7, 6, 6) and info.is_stack
    assert info.voxel_size_A[0] == pytest.approx(1.25)


def test_check_map_matches(tmp_path):
    vol = asymmetric_map(8)
    write_map(tmp_path / "ref.mrc", vol, 2.0)
    check_map_matches(tmp_path / "ref.mrc", vol, 8, 2.0)
    check_map_matches(tmp_path / "ref.mrc", vol, 8, 2.015)          # within 1 %
    with pytest.raises(InputError) as e:
        check_map_matches(tmp_path / "ref.mrc", vol, 10, 2.0)
    assert "ref.mrc" in str(e.value) and "nx/ny/nz" in str(e.value) and "(8, 8, 8)" in str(e.value)
    with pytest.raises(InputError) as e:
        check_map_matches(tmp_path / "ref.mrc", vol, 8, 2.5)
    assert "voxel size" in str(e.value) and "2.0" in str(e.value)
    write_map(tmp_path / "nopix.mrc", vol, 0.0)                    # not recorded: accepted
    check_map_matches(tmp_path / "nopix.mrc", vol, 8, 2.5)


def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith("out.txt")
        with open(tmp, "w") as f:
            f.write("new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_npy_and_json(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_save_npy(tmp_path / "run_posteriors.npy", arr)
    np.testing.assert_array_equal(np.load(tmp_path / "run_posteriors.npy"), arr)
    atomic_save_npy(tmp_path / "noext", arr)             # no ".npy" appended
    assert (tmp_path / "noext").exists() and not (tmp_path / "noext.npy").exists()
    atomic_write_json(tmp_path / "run.json", {"seed": np.int64(3), "res": np.array([1.5, 2.0]),
                                              "x": np.float32(0.5)})
    assert json.loads((tmp_path / "run.json").read_text()) == {"seed": 3, "res": [1.5, 2.0],
                                                               "x": 0.5}
