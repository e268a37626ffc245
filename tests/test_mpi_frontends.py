"""MPI in the RELION External job (``mpi_ranks``) and the ``--mpi`` helpers of the CLI.

* the job parameters become the same ``hetclass`` command line a user would type, under the
  launcher chosen from the parameter / environment / SLURM allocation;
* an External job with ``mpi_ranks 2`` (real ``mpirun``) succeeds, registers its nodes and
  gives the labels of a single-process run; an input error seen by one rank fails the job
  with one line; an abort stops the launcher.
"""

import io
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import starfile

from hetclass.errors import AbortRequested
from hetclass.phantoms import phantom_model
from hetclass.simulate import simulate_dataset
from hetclass_relion.markers import JobMarkers
from hetclass_relion.mpi_launch import hetclass_args, launcher_words, run_mpi_job
from hetclass_relion.options import build_config, parse_argv

try:
    import mpi4py  # noqa: F401
    HAVE_MPI = shutil.which("mpirun") is not None
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpirun or mpi4py not installed")
LAUNCHER = "mpirun -oversubscribe -q -n {n}"      # one dash: RELION splits values at "--"


def _config(*words):
    cfg, notes = build_config(parse_argv(["--o", "External/job005/", "--in_parts", "p.star",
                                          *words])[0])
    assert notes == []
    return cfg


def test_launcher_from_parameter_environment_or_slurm():
    cfg = _config("--mpi_ranks", "4")
    assert launcher_words(cfg, {}) == ["mpirun", "-n", "4"]
    assert launcher_words(cfg, {"SLURM_JOB_ID": "17"}) == ["srun", "-n", "4"]
    assert launcher_words(cfg, {"HETCLASS_MPI_LAUNCHER": "mpiexec -np {n} -x A"}) == \
        ["mpiexec", "-np", "4", "-x", "A"]
    cfg = _config("--mpi", "3", "--mpi_launcher", "mpirun", "-oversubscribe")
    assert launcher_words(cfg, {"SLURM_JOB_ID": "1"}) == ["mpirun", "-oversubscribe", "-n", "3"]


def test_job_parameters_become_the_cli_arguments():
    cfg = _config("--mode", "stability", "--classes", "2-4", "--replicates", "6", "--seed", "9",
                  "--max_iter", "7", "--subsample", "0.8", "--gpu", "0,1", "--hard",
                  "--mpi_ranks", "2", "--j", "3")
    args = hetclass_args(cfg)
    text = " ".join(args)
    assert args[0] == "stability"
    for part in ("--classes 2-4", "--replicates 6", "--seed 9", "--max-iter 7",
                 "--subsample 0.8", "--device gpu", "--hard", "--mpi on", "--threads 3",
                 "--jobs 3", "--overwrite", "--out External/job005/", "--particles p.star"):
        assert part in text, part
    # the CLI's own parser accepts them
    from hetclass_standalone.main import build_parser
    parsed = build_parser().parse_args(args)
    assert (parsed.replicates, parsed.subsample, parsed.mpi) == (6, 0.8, "on")
    resumed = hetclass_args(_config("--classes", "3", "--mpi", "2"), resume=True)
    assert "--continue" in resumed and "--overwrite" not in resumed


def test_abort_stops_the_launcher(tmp_path):
    """RELION_JOB_ABORT_NOW while the MPI child runs: the launcher is terminated."""
    fake = tmp_path / "fake_launcher.sh"
    fake.write_text("#!/bin/sh\necho started\nexec sleep 120\n")
    fake.chmod(0o755)
    job_dir = tmp_path / "External" / "job001"
    job_dir.mkdir(parents=True)
    cfg = _config("--mpi", "2", "--mpi_launcher", str(fake))
    cfg.job_dir = str(job_dir)
    out, err = io.StringIO(), io.StringIO()
    threading.Timer(1.0, lambda: (job_dir / "RELION_JOB_ABORT_NOW").touch()).start()
    job = JobMarkers(str(job_dir), handle_signals=False, abort_grace_s=None)
    t0 = time.monotonic()
    with pytest.raises(AbortRequested):
        run_mpi_job(cfg, job, out, err, poll_s=0.1, stop_grace_s=5)
    assert time.monotonic() - t0 < 30
    assert "started" in out.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A RELION-like project directory with 200 simulated particles (two states)."""
    root = tmp_path_factory.mktemp("relion_mpi")
    ds = simulate_dataset(root, {"open": phantom_model("open", hinge_deg=0.0),
                                 "swung": phantom_model("open", hinge_deg=90.0)},
                          populations=[0.6, 0.4], n_particles=200, box_px=32, pixel_size_A=6.0,
                          snr=0.1, seed=8, threads=1)
    return root, os.path.relpath(ds.star_path, root)


def _external(project_dir, job, star, *params, env_extra=None):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", **(env_extra or {}))
    argv = [sys.executable, "-m", "hetclass_relion.main", "--o", f"External/{job}/",
            "--in_parts", star, "--classes", "2", "--max_iter", "5", "--seed", "4", "--j", "1",
            *params]
    return subprocess.run(argv, cwd=project_dir, env=env, capture_output=True, text=True,
                          timeout=180)


@needs_mpi
def test_external_job_under_mpi_matches_single_process(project):
    root, star = project
    serial = _external(root, "job001", star)
    assert serial.returncode == 0, serial.stderr
    mpi = _external(root, "job002", star, "--mpi_ranks", "2", "--mpi_launcher", *LAUNCHER.split())
    assert mpi.returncode == 0, mpi.stderr
    assert "running under MPI with 2 ranks" in mpi.stdout
    job = root / "External" / "job002"
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    nodes = starfile.read(job / "RELION_OUTPUT_NODES.star")
    names = list(nodes["rlnPipeLineNodeName"])
    assert "External/job002/run_data.star" in names and "External/job002/run_class002.mrc" in names

    def labels(j):
        return starfile.read(root / "External" / j / "run_data.star",
                             always_dict=True)["particles"]["rlnClassNumber"].to_numpy()
    np.testing.assert_array_equal(labels("job002"), labels("job001"))


@needs_mpi
def test_external_job_input_error_on_one_rank(project, tmp_path):
    root, star = project
    bad = tmp_path / "bad_project"
    shutil.copytree(root, bad, ignore=shutil.ignore_patterns("External"))
    stack = sorted((bad / "Particles").glob("*.mrcs"))[-1]
    with open(stack, "r+b") as fh:                 # rank 1's particles lose their data
        fh.truncate(stack.stat().st_size - 8 * 32 * 32 * 4)
    proc = _external(bad, "job003", star, "--mpi", "2", "--launcher", *LAUNCHER.split())
    assert proc.returncode == 2, proc.stderr
    job = bad / "External" / "job003"
    assert (job / "RELION_JOB_EXIT_FAILURE").exists()
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "stack" in errors[0], proc.stderr
