"""hetclass as a RELION External job, run by the real ``relion_pipeliner`` (RELION 3.1.3).

A temporary RELION project holds particles that ``relion_project`` simulated from two clearly
different phantom maps (domain swung by 30 deg; another one with an 11 %-mass subunit missing), at
known poses and CTFs, with white noise we add ourselves from a seeded generator (RELION's
``--add_noise`` repeats the same noise in every run). The job is added with
``relion_pipeliner --addJob External`` and run with ``--RunJobs``; RELION alone decides
that the job succeeded, failed or was aborted (from the marker files), registers the output
nodes, and its own programs (``relion_star_handler``, ``relion_reconstruct``) read the
outputs. Every pipeliner call runs in its own session with a timeout, so a broken job fails
the test instead of hanging CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

RELION_TOOLS = ("relion_pipeliner", "relion_project", "relion_reconstruct", "relion_star_handler")
_missing = [t for t in RELION_TOOLS if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"RELION not installed ({', '.join(_missing)} "
                                                      "missing; CI installs it: apt-get install relion)")

BOX_PX, PAD, PIXEL_A = 48, 3, 4.0
N_PER_STATE = 150
SNR = 0.2                       # signal variance / noise variance inside the box
STATES = ("closed", "no_subunit")   # hetclass.phantoms states: hinge at 30 deg / subunit D removed
RUN_TIMEOUT_S = 240
REPO = Path(__file__).resolve().parents[1]


# ----- simulation ------------------------------------------------------------------------------
def _state_maps(box_px: int):
    """The two phantom maps of :data:`STATES` (box_px^3, float32 [z, y, x], centred)."""
    from hetclass.phantoms import model_to_gaussians, phantom_model, rasterise
    return {state: rasterise(model_to_gaussians(phantom_model(state)), box_px, PIXEL_A)
            for state in STATES}


def _write_mrc(path: Path, data, voxel_A: float) -> None:
    import mrcfile
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, dtype=np.float32))
        mrc.voxel_size = voxel_A


def _poses_star(path: Path, n: int, rng, box_px: int) -> pd.DataFrame:
    """RELION 3.1 STAR with random poses, shifts (A) and CTFs for ``relion_project --ang``."""
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    defocus_u = rng.uniform(8000, 20000, n)
    optics = pd.DataFrame(dict(
        rlnOpticsGroup=[1], rlnOpticsGroupName=["opticsGroup1"], rlnAmplitudeContrast=[0.1],
        rlnSphericalAberration=[2.7], rlnVoltage=[300.0], rlnImagePixelSize=[PIXEL_A],
        rlnImageSize=[box_px], rlnImageDimensionality=[2]))
    parts = pd.DataFrame(dict(
        rlnAngleRot=rot, rlnAngleTilt=tilt, rlnAnglePsi=psi,
        rlnOriginXAngst=rng.uniform(-6, 6, n), rlnOriginYAngst=rng.uniform(-6, 6, n),
        rlnDefocusU=defocus_u, rlnDefocusV=defocus_u - rng.uniform(0, 400, n),
        rlnDefocusAngle=rng.uniform(0, 180, n), rlnOpticsGroup=np.ones(n, dtype=int),
        rlnImageName=[f"{i + 1:06d}@unused.mrcs" for i in range(n)]))
    starfile.write({"optics": optics, "particles": parts}, path, overwrite=True)
    return parts


def _relion_project(map_path: Path, poses_star: Path, out_root: Path) -> np.ndarray:
    """Noise-free CTF-modulated projections by relion_project, (n, box, box) float32.

    The map is zero-padded 3x before projecting and the central window cut out (a strong
    CTF would otherwise wrap around the small box). Uses the shared helper
    ``tests/relion_tools.py`` when present.
    """
    import mrcfile
    try:
        from relion_tools import run_relion_project
    except ImportError:
        run_relion_project = None
    if run_relion_project is not None:
        mrcs, _ = run_relion_project(str(map_path), str(poses_star), str(out_root), PIXEL_A,
                                     ctf=True, pad_factor=PAD)
        return mrcfile.read(mrcs).astype(np.float32)
    vol = mrcfile.read(str(map_path))
    box, big = vol.shape[0], vol.shape[0] * PAD
    lo = (big - box) // 2
    padded = np.zeros((big,) * 3, dtype=np.float32)
    padded[lo:lo + box, lo:lo + box, lo:lo + box] = vol
    _write_mrc(Path(f"{out_root}_padded.mrc"), padded, PIXEL_A)
    cmd = ["relion_project", "--i", f"{out_root}_padded.mrc", "--o", str(out_root), "--ang",
           str(poses_star), "--ctf", "--angpix", str(PIXEL_A)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return mrcfile.read(f"{out_root}.mrcs")[:, lo:lo + box, lo:lo + box].astype(np.float32)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A RELION project with ``Import/job000/relion_particles.star`` (2 states, shuffled).

    Returns dict(dir, truth: {image name -> state index}, maps: {state: box^3 map}).
    """
    root = tmp_path_factory.mktemp("relion_project")
    work = root / "sim"
    work.mkdir()
    rng = np.random.default_rng(20240605)
    maps = _state_maps(BOX_PX)
    images, tables, states = [], [], []
    for s, name in enumerate(STATES):
        _write_mrc(work / f"{name}.mrc", maps[name], PIXEL_A)
        tables.append(_poses_star(work / f"{name}_poses.star", N_PER_STATE, rng, BOX_PX))
        images.append(_relion_project(work / f"{name}.mrc", work / f"{name}_poses.star",
                                      work / f"proj_{name}"))
        states += [s] * N_PER_STATE
    images = np.concatenate(images)
    sigma = np.sqrt(images.var(axis=(1, 2)).mean() / SNR)
    images = (images + rng.normal(0.0, sigma, images.shape)) / sigma   # noise std 1
    order = rng.permutation(len(images))
    images, states = images[order].astype(np.float32), np.asarray(states)[order]
    parts = pd.concat(tables, ignore_index=True).iloc[order].reset_index(drop=True)

    imp = root / "Import" / "job000"
    imp.mkdir(parents=True)
    _write_mrc(imp / "relion_particles.mrcs", images, PIXEL_A)
    names = [f"{i + 1:06d}@Import/job000/relion_particles.mrcs" for i in range(len(images))]
    parts["rlnImageName"] = names
    parts["rlnMicrographName"] = [f"mic{i // 50:03d}.mrc" for i in range(len(images))]
    optics = pd.DataFrame(dict(
        rlnOpticsGroup=[1], rlnOpticsGroupName=["opticsGroup1"], rlnAmplitudeContrast=[0.1],
        rlnSphericalAberration=[2.7], rlnVoltage=[300.0], rlnImagePixelSize=[PIXEL_A],
        rlnImageSize=[BOX_PX], rlnImageDimensionality=[2]))
    starfile.write({"optics": optics, "particles": parts}, imp / "relion_particles.star",
                   overwrite=True)
    # a particle file whose stack is garbage: the job must fail, not hang
    (imp / "corrupt.mrcs").write_bytes(b"this is not an MRC stack" * 10)
    bad = parts.copy()
    bad["rlnImageName"] = [f"{i + 1:06d}@Import/job000/corrupt.mrcs" for i in range(len(bad))]
    starfile.write({"optics": optics, "particles": bad}, imp / "corrupt_particles.star",
                   overwrite=True)
    (root / "default_pipeline.star").write_text(
        "\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n\n")
    return dict(dir=root, truth=dict(zip(names, states)), maps=maps)


# ----- pipeliner helpers ---------------------------------------------------------------------------
def _executable(tmp: Path) -> str:
    """The installed console script of this Python, else a wrapper running the module."""
    for cand in (Path(sys.executable).parent / "hetclass_relion",):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    wrapper = tmp / "hetclass_relion_wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hetclass_relion.main "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _pipeline(root: Path):
    blocks = starfile.read(root / "default_pipeline.star", always_dict=True)
    return blocks


def _add_job(root: Path, options: dict) -> str:
    counter = int(_pipeline(root)["pipeline_general"]["rlnPipeLineJobCounter"])
    text = ";".join(f"{k} == {v}" for k, v in options.items())
    res = subprocess.run(["relion_pipeliner", "--addJob", "External", "--addJobOptions", text],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return f"External/job{counter:03d}/"


def _start_run(root: Path, job: str) -> subprocess.Popen:
    return subprocess.Popen(["relion_pipeliner", "--RunJobs", job, "--sec_wait_after", "1"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish_run(proc: subprocess.Popen, root: Path, job: str, timeout_s: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        (root / job / "RELION_JOB_ABORT_NOW").touch()
        os.killpg(proc.pid, signal.SIGTERM)   # pipeliner and the job it launched
        proc.communicate(timeout=30)
        pytest.fail(f"relion_pipeliner --RunJobs {job} did not return within {timeout_s} s; "
                    f"run.err: {(root / job / 'run.err').read_text(errors='replace')[-2000:]}")
    assert not (root / ".relion_lock").exists(), "pipeliner left .relion_lock behind"
    return out


def _job_status(root: Path, job: str) -> int:
    procs = _pipeline(root)["pipeline_processes"]
    row = procs[procs["rlnPipeLineProcessName"] == job]
    assert len(row) == 1, procs
    return int(row["rlnPipeLineProcessStatus"].iloc[0])


def _markers(root: Path, job: str) -> set:
    return {p.name for p in (root / job).glob("RELION_JOB_EXIT_*")}


def _ari(a, b) -> float:
    """Adjusted Rand index (scikit-learn's; hetclass's own when scikit-learn is absent)."""
    try:
        from sklearn.metrics import adjusted_rand_score
    except ImportError:
        from hetclass.stability.scores import adjusted_rand_index as adjusted_rand_score
    return float(adjusted_rand_score(np.asarray(a), np.asarray(b)))


def _job_options(exe: str, particles: str, **params) -> dict:
    opts = {"fn_exe": exe, "in_part": particles, "nr_threads": 2}
    for i, (label, value) in enumerate(params.items(), start=1):
        opts[f"param{i}_label"], opts[f"param{i}_value"] = label, value
    return opts


# ----- tests ----------------------------------------------------------------------------------------
def test_classify_job_runs_in_relion_and_outputs_are_usable(project, tmp_path):
    root = project["dir"]
    job = _add_job(root, _job_options(_executable(tmp_path), "Import/job000/relion_particles.star",
                                      mode="classify", classes=2, seed=3, max_iter=20))
    t0 = time.monotonic()
    _finish_run(_start_run(root, job), root, job, RUN_TIMEOUT_S)
    print(f"classify job: {time.monotonic() - t0:.1f} s")
    run_err = (root / job / "run.err").read_text()
    assert _markers(root, job) == {"RELION_JOB_EXIT_SUCCESS"}, run_err
    assert _job_status(root, job) == 2            # RELION 3.1: 2 = finished successfully
    run_out = (root / job / "run.out").read_text()
    assert "--pipeline_control" in run_out        # RELION appended it ("relion_" in the input path)
    assert "iteration" in run_out

    # output nodes registered by RELION with the right types
    nodes = _pipeline(root)["pipeline_nodes"]
    types = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"].astype(int)))
    expected = {f"{job}run_data.star": 3, f"{job}run_model.star": 8,
                f"{job}run_class001.mrc": 6, f"{job}run_class002.mrc": 6}
    assert {k: types.get(k) for k in expected} == expected
    edges = _pipeline(root)["pipeline_output_edges"]
    assert set(edges[edges["rlnPipeLineEdgeProcess"] == job]["rlnPipeLineEdgeToNode"]) == set(expected)

    # classes recovered (joined on rlnImageName: never trust the row order)
    data = starfile.read(root / job / "run_data.star", always_dict=True)["particles"]
    truth = np.array([project["truth"][n] for n in data["rlnImageName"]])
    labels = data["rlnClassNumber"].to_numpy()
    assert len(data) == len(project["truth"])
    assert _ari(truth, labels) >= 0.95

    # RELION's own programs read the outputs
    n1 = int((labels == 1).sum())
    for sub in ("Select", "Reconstruct"):
        (root / sub).mkdir(exist_ok=True)
    res = subprocess.run(["relion_star_handler", "--i", f"{job}run_data.star", "--o",
                          "Select/class1.star", "--select", "rlnClassNumber", "--minval", "1",
                          "--maxval", "1"], cwd=root, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    sel = starfile.read(root / "Select" / "class1.star", always_dict=True)["particles"]
    assert len(sel) == n1 and set(sel["rlnClassNumber"]) == {1}

    res = subprocess.run(["relion_reconstruct", "--i", f"{job}run_data.star", "--class", "1",
                          "--o", "Reconstruct/class1.mrc", "--ctf", "--maxres", "12"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    import mrcfile
    recon = mrcfile.read(str(root / "Reconstruct" / "class1.mrc")).astype(np.float64)
    diff = (project["maps"][STATES[0]] - project["maps"][STATES[1]]).astype(np.float64)
    corr = np.corrcoef(recon.ravel(), diff.ravel())[0, 1]
    majority = np.bincount(truth[labels == 1], minlength=2).argmax()
    # the class-1 particles rebuild the state they came from: positive correlation with
    # (state 0 - state 1) for state 0, negative for state 1
    assert (corr > 0.05) if majority == 0 else (corr < -0.05), corr


def test_stability_job_registers_consensus_and_cores(project, tmp_path):
    root = project["dir"]
    job = _add_job(root, _job_options(_executable(tmp_path), "Import/job000/relion_particles.star",
                                      mode="stability", classes=2, replicates=3, seed=3))
    t0 = time.monotonic()
    _finish_run(_start_run(root, job), root, job, RUN_TIMEOUT_S)
    print(f"stability job: {time.monotonic() - t0:.1f} s")
    assert _markers(root, job) == {"RELION_JOB_EXIT_SUCCESS"}, (root / job / "run.err").read_text()
    assert _job_status(root, job) == 2
    nodes = _pipeline(root)["pipeline_nodes"]
    types = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"].astype(int)))
    mine = {name: t for name, t in types.items() if name.startswith(job)}
    assert mine[f"{job}consensus_data.star"] == 3
    assert {t for n, t in mine.items() if "stable_core_class" in n} == {3}
    assert {t for n, t in mine.items() if "consensus_class" in n} == {6}
    assert {t for n, t in mine.items() if "_half1_" in n} == {10}
    assert all((root / name).is_file() for name in mine)

    data = starfile.read(root / job / "consensus_data.star", always_dict=True)["particles"]
    assert sorted(data["rlnImageName"]) == sorted(project["truth"])
    truth = np.array([project["truth"][n] for n in data["rlnImageName"]])
    assert _ari(truth, data["rlnClassNumber"].to_numpy()) >= 0.95
    (root / "Select").mkdir(exist_ok=True)
    res = subprocess.run(["relion_star_handler", "--i", f"{job}consensus_data.star", "--o",
                          "Select/consensus_copy.star", "--select", "rlnClassNumber", "--minval",
                          "1", "--maxval", "2"], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    copy = starfile.read(root / "Select" / "consensus_copy.star", always_dict=True)["particles"]
    assert len(copy) == len(data)


def test_corrupt_input_fails_and_pipeliner_returns(project, tmp_path):
    root = project["dir"]
    job = _add_job(root, _job_options(_executable(tmp_path), "Import/job000/corrupt_particles.star",
                                      classes=2))
    _finish_run(_start_run(root, job), root, job, 120)
    assert _markers(root, job) == {"RELION_JOB_EXIT_FAILURE"}
    assert _job_status(root, job) == 3            # failed
    err = (root / job / "run.err").read_text().strip().splitlines()
    assert err and "corrupt.mrcs" in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (root / job / "RELION_OUTPUT_NODES.star").exists()


def test_abort_now_gives_aborted(project, tmp_path):
    root = project["dir"]
    job = _add_job(root, _job_options(_executable(tmp_path), "Import/job000/relion_particles.star",
                                      classes=4, max_iter=200, convergence=0, seed=1))
    proc = _start_run(root, job)
    run_out = root / job / "run.out"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if run_out.exists() and "started" in run_out.read_text(errors="replace"):
            break
        time.sleep(0.1)
    (root / job / "RELION_JOB_ABORT_NOW").touch()   # what the GUI's Abort button does
    _finish_run(proc, root, job, 120)
    assert _markers(root, job) == {"RELION_JOB_EXIT_ABORTED"}, (root / job / "run.err").read_text()
    assert _job_status(root, job) == 4            # aborted


def test_readme_job_star_is_accepted_by_relion(project):
    """The README's ready-made job.star loads with --addJobFromStar (not run)."""
    import re
    root = project["dir"]
    text = (REPO / "relion_external" / "README_section.md").read_text()
    block = re.search(r"```\n(# version 30001\n.*?)```", text, flags=re.S).group(1)
    (root / "hetclass_job.star").write_text(block)
    counter = int(_pipeline(root)["pipeline_general"]["rlnPipeLineJobCounter"])
    res = subprocess.run(["relion_pipeliner", "--addJobFromStar", "hetclass_job.star"], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    job = f"External/job{counter:03d}/"
    assert _job_status(root, job) == 1            # RELION 3.1: 1 = scheduled (not run)
    values = starfile.read(root / job / "job.star", always_dict=True)["joboptions_values"]
    got = dict(zip(values["rlnJobOptionVariable"], values["rlnJobOptionValue"].astype(str)))
    assert got["fn_exe"] == "hetclass_relion" and got["param2_label"] == "classes"
