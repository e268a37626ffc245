"""``mpirun -n P hetclass ...`` (issue 8): same results as one process, errors, lost ranks.

Every test launches the real command line under OpenMPI's ``mpirun`` (``--allow-run-as-root
--oversubscribe -q``, as on a CI machine with 2 cores) on a small simulated set:

* classify with 1, 2 and 3 ranks gives the labels of a single process with the same seed,
  maps within 1e-5 relative, posteriors within 1e-5;
* stability (K scan, replicates on rank groups, including a group of 2 ranks sharding the
  particles; also on data whose null simulates pose errors) and exhaustive give the
  single-process consensus / tree;
* an input error seen only by the rank whose shard holds a truncated image gives exactly one
  error line (from rank 0) and exit 2 on every rank;
* a rank killed with SIGKILL (or failing with an unexpected exception) mid-run ends the job
  with a non-zero exit within a timeout, and ``--continue`` from its checkpoint with another
  number of ranks finishes with the labels of an uninterrupted run.
"""

import json
import os
import shutil
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import starfile

MPIRUN = shutil.which("mpirun")
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

pytestmark = [
    pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (apt-get install openmpi-bin)"),
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py not installed (pip install 'hetclass[mpi]')"),
]
TIMEOUT_S = 180
ITER = 6


@pytest.fixture(scope="module")
def ds(hinge_300):
    return hinge_300


def _hetclass(command, star, project_dir, out, *extra):
    return [sys.executable, "-m", "hetclass_standalone.main", command, "--particles", str(star),
            "--project-dir", str(project_dir), "--max-iter", str(ITER), "--convergence", "0",
            "--seed", "3", "--out", str(out), "--quiet", *extra]


def _run(argv, ranks=None, env=None, timeout=TIMEOUT_S):
    """Run ``argv`` alone (ranks None) or under ``mpirun -n ranks``; CompletedProcess."""
    if ranks is not None:
        forward = [a for key in (env or {}) for a in ("-x", key)]
        argv = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-q", "-n", str(ranks),
                *forward, *argv]
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env)


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _labels(star):
    return starfile.read(star, always_dict=True)["particles"]["rlnClassNumber"].to_numpy()


def _assert_maps_close(out_a, out_b, pattern="*.mrc", rtol=1e-5):
    names = sorted(p.name for p in out_a.glob(pattern))
    assert names, f"no maps in {out_a}"
    for name in names:
        a, b = mrcfile.read(out_a / name), mrcfile.read(out_b / name)
        scale = float(np.abs(a).max())
        assert float(np.abs(a - b).max()) <= rtol * scale, name


def _assert_same_json(a, b, where="summary"):
    """Equal JSON apart from timings (keys "seconds", "timings_s"), posterior-derived floats
    (1e-3) and the pose-error fit's evaluation count ("fit_evaluations": the optimiser's path
    follows the last bits of its inputs, which differ between shardings at the engine's
    1e-5 level, while its result agrees)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            if key not in ("seconds", "timings_s", "fit_evaluations"):
                _assert_same_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert abs(a - b) <= 1e-3, (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def serial_classify(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "run"
    _ok(_run(_hetclass("classify", ds.star_path, ds.out_dir, out, "--classes", "2")))
    return out


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_classify_ranks_give_single_process_result(ds, serial_classify, tmp_path, ranks):
    out = tmp_path / "run"
    _ok(_run(_hetclass("classify", ds.star_path, ds.out_dir, out, "--classes", "2"), ranks))
    np.testing.assert_array_equal(_labels(out / "run_data.star"),
                                  _labels(serial_classify / "run_data.star"))
    np.testing.assert_allclose(np.load(out / "run_posteriors.npy"),
                               np.load(serial_classify / "run_posteriors.npy"), atol=1e-5)
    _assert_maps_close(out, serial_classify)
    # the run separates the two states (so equal labels are not trivially all-one-class)
    truth = np.asarray(ds.labels)
    labels = _labels(out / "run_data.star")
    agree = max(np.mean((labels - 1) == truth), np.mean((labels - 1) == 1 - truth))
    assert agree > 0.9
    info = json.loads((out / "run.json").read_text())
    assert info.get("mpi_ranks", 1) == ranks


def test_classify_with_split_merge_move_ranks_give_single_process_result(ds, tmp_path):
    """K = 3: the best start's merge-and-split move (hetclass.split_merge) runs sharded too."""
    outs = []
    for ranks in (None, 2):
        out = tmp_path / f"run{ranks}"
        _ok(_run(_hetclass("classify", ds.star_path, ds.out_dir, out, "--classes", "3"), ranks))
        outs.append(out)
    np.testing.assert_array_equal(_labels(outs[1] / "run_data.star"),
                                  _labels(outs[0] / "run_data.star"))
    starts = [json.loads((o / "run.json").read_text())["starts"] for o in outs]
    _assert_same_json(starts[0], starts[1], "starts")
    moves = [m for s in starts[0] for m in s.get("moves", [])]
    assert len(moves) == 2 and all(np.isfinite(m["score"]) for m in moves), starts[0]


@pytest.mark.parametrize("ranks,classes,replicates", [(2, "1-3", 3), (3, "2", 2)])
def test_stability_ranks_give_single_process_result(ds, tmp_path, ranks, classes, replicates):
    """(2, 1-3, 3): 6 (K, replicate) tasks on 2 one-rank groups; (3, 2, 2): groups of 2 ranks
    (sharded particles, the output maps reconstructed by both) and of 1 rank."""
    extra = ("--classes", classes, "--replicates", str(replicates))
    serial, mpi = tmp_path / "serial", tmp_path / "mpi"
    _ok(_run(_hetclass("stability", ds.star_path, ds.out_dir, serial, *extra)))
    proc = _ok(_run(_hetclass("stability", ds.star_path, ds.out_dir, mpi, *extra), ranks))
    assert proc.stdout.count("outputs in") == 1          # rank 0 reports, once
    np.testing.assert_array_equal(_labels(mpi / "consensus_data.star"),
                                  _labels(serial / "consensus_data.star"))
    _assert_same_json(json.loads((mpi / "summary.json").read_text()),
                      json.loads((serial / "summary.json").read_text()))
    _assert_maps_close(mpi, serial, "consensus_*.mrc")


@pytest.fixture(scope="module")
def hinge_300_pose_errors(tmp_path_factory):
    """``hinge_300`` with the STAR poses off by a median 6 deg / 2 A: the null simulates
    pose errors (rms displacement 2.5 A against a 24 A likelihood resolution)."""
    from hetclass.phantoms import phantom_model
    from hetclass.simulate import simulate_dataset
    return simulate_dataset(tmp_path_factory.mktemp("hinge_300_pose"),
                            {"open": phantom_model("open", hinge_deg=0.0),
                             "swung": phantom_model("open", hinge_deg=90.0)},
                            populations=[0.6, 0.4], n_particles=300, box_px=32,
                            pixel_size_A=6.0, snr=0.1, seed=5, threads=1,
                            pose_error_deg=6.0, shift_error_A=2.0)


def test_stability_with_simulated_pose_errors_ranks_give_single_process_result(
        hinge_300_pose_errors, tmp_path):
    """The null's pose-error path (estimate gathered in global order, null particles at moved
    poses, the rigid-motion statistic) on a group of 2 ranks sharding the particles and one
    of 1 rank gives the single-process summary."""
    ds = hinge_300_pose_errors
    extra = ("--classes", "2", "--replicates", "2")
    serial, mpi = tmp_path / "serial", tmp_path / "mpi"
    _ok(_run(_hetclass("stability", ds.star_path, ds.out_dir, serial, *extra)))
    _ok(_run(_hetclass("stability", ds.star_path, ds.out_dir, mpi, *extra), 3))
    summary = json.loads((serial / "summary.json").read_text())
    assert summary["evidence"]["null"]["pose_errors"]["simulated_in_null"] is True
    assert summary["evidence"]["null"]["log_ratio_model"]["statistic"] == \
        "after the best rigid motion"
    _assert_same_json(json.loads((mpi / "summary.json").read_text()), summary)
    np.testing.assert_array_equal(_labels(mpi / "consensus_data.star"),
                                  _labels(serial / "consensus_data.star"))


def test_exhaustive_ranks_give_single_process_tree(ds, tmp_path):
    extra = ("--min-class-size", "40", "--max-depth", "2", "--replicates", "2")
    serial, mpi = tmp_path / "serial", tmp_path / "mpi"
    _ok(_run(_hetclass("exhaustive", ds.star_path, ds.out_dir, serial, *extra)))
    _ok(_run(_hetclass("exhaustive", ds.star_path, ds.out_dir, mpi, *extra), 3))

    def tree(path):
        def strip(node):
            return {"id": node["id"], "n": node["n_particles"], "decision": node["decision"],
                    "reason": node["reason"], "children": [strip(c) for c in node["children"]]}
        data = json.loads(path.read_text())
        return strip(data.get("tree", data.get("root", data)))
    assert tree(mpi / "tree.json") == tree(serial / "tree.json")
    np.testing.assert_array_equal(_labels(mpi / "leaves_data.star"),
                                  _labels(serial / "leaves_data.star"))
    if json.loads((serial / "tree.json").read_text())["reassigned"]:
        np.testing.assert_array_equal(_labels(mpi / "leaves_reassigned_data.star"),
                                      _labels(serial / "leaves_reassigned_data.star"))


def test_input_error_on_one_rank_gives_one_line_and_exit_2(ds, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ds.out_dir, data)
    stacks = sorted((data / "Particles").glob("*.mrcs"))
    assert len(stacks) == 1
    size = stacks[0].stat().st_size
    with open(stacks[0], "r+b") as fh:   # the last particles (rank 1's shard) lose their data
        fh.truncate(size - 10 * 32 * 32 * 4)
    proc = _run(_hetclass("classify", data / "particles.star", data, tmp_path / "run",
                          "--classes", "2"), 2)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hetclass classify: error:") and "stack_" in lines[0]
    assert "Traceback" not in proc.stderr


def test_existing_output_refused_once_under_mpi(ds, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    proc = _run(_hetclass("stability", ds.star_path, ds.out_dir, out, "--classes", "2"), 2)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--out" in lines[0], proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_failing_rank_aborts_the_job_with_one_line(ds, tmp_path):
    proc = _run(_hetclass("classify", ds.star_path, ds.out_dir, tmp_path / "run", "--classes", "2"),
                2, env={"HETCLASS_TESTING_KILL": "1:2:raise"}, timeout=120)
    assert proc.returncode != 0
    assert "error on MPI rank 1: RuntimeError" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_killed_rank_ends_job_and_resume_with_fewer_ranks(ds, serial_classify, tmp_path):
    out = tmp_path / "run"
    argv = _hetclass("classify", ds.star_path, ds.out_dir, out, "--classes", "2")
    try:
        proc = _run(argv, 3, env={"HETCLASS_TESTING_KILL": "1:3"}, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("mpirun hung after a rank was killed")
    assert proc.returncode != 0
    assert (out / "run_checkpoint.npz").exists() and not (out / "run_data.star").exists()

    _ok(_run(argv + ["--continue"], 2))
    info = json.loads((out / "run.json").read_text())
    assert info["resumed_from_iteration"] >= 2
    np.testing.assert_array_equal(_labels(out / "run_data.star"),
                                  _labels(serial_classify / "run_data.star"))
    np.testing.assert_allclose(np.load(out / "run_posteriors.npy"),
                               np.load(serial_classify / "run_posteriors.npy"), atol=1e-5)
    _assert_maps_close(out, serial_classify)
