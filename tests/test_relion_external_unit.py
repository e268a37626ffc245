"""Unit tests of the RELION External-job front end (no RELION binaries, no engine).

Version detection and node labels are checked against files written by real RELION 3.1.3
runs (``shared/fixtures/relion31/external_job``); the engine is replaced by fake functions
passed to ``main`` (markers, nodes and options are the real code).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import starfile
from shared_fixtures import fixtures_dir

from hetclass.errors import AbortRequested, HetclassWarning, InputError
from hetclass_relion import main as relion_main
from hetclass_relion.markers import ABORT_NOW, ABORTED, FAILURE, SUCCESS, JobMarkers
from hetclass_relion.nodes import Node, detect_relion_version, format_output_nodes, project_relative, write_output_nodes
from hetclass_relion.options import PARAMETERS, build_config, parse_argv

REPO = Path(__file__).resolve().parents[1]


def _fixture_dir() -> Path:
    """``fixtures/relion31/external_job`` from the shared fixtures (see shared_fixtures.py)."""
    return Path(fixtures_dir(os.path.join("relion31", "external_job")))


@pytest.fixture
def fixtures() -> Path:
    return _fixture_dir()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty RELION project directory as the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _markers(job_dir) -> set:
    return {m for m in (SUCCESS, FAILURE, ABORTED) if (Path(job_dir) / m).exists()}


# ----- RELION version and node labels ---------------------------------------------------------
def test_version_from_real_job_star_files(fixtures, tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    assert detect_relion_version(str(job)) == 3                      # no job.star at all
    shutil.copy(fixtures / "job002_job.star", job / "job.star")      # written by RELION 3.1.3
    assert detect_relion_version(str(job)) == 3
    shutil.copy(fixtures / "ext_job_dual_3x_4x.star", job / "job.star")  # label + version 30001
    assert detect_relion_version(str(job)) == 4
    text = (fixtures / "ext_job_dual_3x_4x.star").read_text()
    assert "# version 30001" in text
    (job / "job.star").write_text(text.replace("# version 30001", "# version 50001"))
    assert detect_relion_version(str(job)) == 5


@pytest.mark.parametrize("version, particles, maps, model", [
    (3, "ParticlesData.star.relion.class3d", "DensityMap.mrc.relion.class3d", 8),
    (4, "ParticlesData.star.relion.class3d", "DensityMap.mrc.relion.class3d", 8),
    (5, "ParticleGroupMetadata.star.relion.class3d", "DensityMap.mrc.relion.class3d", 8),
])
def test_labels_and_integers_per_version(version, particles, maps, model):
    nodes = relion_main.classify_nodes("External/job004/", 2)
    text = format_output_nodes(nodes, version)
    rows = [line.split() for line in text.splitlines() if line.startswith("External/")]
    assert rows == [
        ["External/job004/run_data.star", "3", particles],
        ["External/job004/run_model.star", str(model), "ProcessData.star.relion.class3d.model"],
        ["External/job004/run_class001.mrc", "6", maps],
        ["External/job004/run_class002.mrc", "6", maps],
    ]
    assert f"# version {50001 if version == 5 else 30001}" in text


def test_both_columns_file_matches_relion_fixture(fixtures, tmp_path):
    """Our writer reproduces the 3.1-readable file RELION 3.1.3 accepted (int + label)."""
    ref = starfile.read(fixtures / "RELION_OUTPUT_NODES_both_columns.star")
    nodes = [Node("External/job002/particles_classified.star", "particles"),
             Node("External/job002/class001.mrc", "map", class3d=False),
             Node("External/job002/mask.mrc", "mask")]
    path = write_output_nodes(str(tmp_path), nodes, version=3)
    ours = starfile.read(path)
    cols = ["rlnPipeLineNodeName", "rlnPipeLineNodeType", "rlnPipeLineNodeTypeLabel"]
    assert ours[cols].values.tolist() == ref[cols].values.tolist()


def test_relion50_labels_match_fixture(fixtures, tmp_path):
    ref = starfile.read(fixtures / "RELION_OUTPUT_NODES_relion50_class3d.star")
    nodes = [Node("External/job012/run_data.star", "particles"),
             Node("External/job012/run_class001.mrc", "map"),
             Node("External/job012/run_class002.mrc", "map"),
             Node("External/job012/mask.mrc", "mask")]
    ours = starfile.read(write_output_nodes(str(tmp_path), nodes, version=5))
    cols = ["rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel"]
    assert ours[cols].values.tolist() == ref[cols].values.tolist()
    assert ours["rlnPipeLineNodeType"].tolist() == [3, 6, 6, 7]


def test_other_node_kinds_and_paths(tmp_path, monkeypatch):
    assert Node("a/report.pdf", "logfile").type_int() == 13
    assert Node("a/report.pdf", "logfile").type_label(5) == "LogFile.pdf.relion"
    assert Node("a/h.mrc", "halfmap").type_int() == 10
    assert Node("a/o.star", "optimiser").type_label(5) == "OptimiserData.star.relion.class3d"
    assert Node("a/o.star", "optimiser").type_label(4) == "ProcessData.star.relion.optimiser.class3d"
    assert Node("a/p.star", "particles", class3d=False).type_label(5) == \
        "ParticleGroupMetadata.star.relion"
    with pytest.raises(ValueError):
        format_output_nodes([Node("a b/p.star", "particles")], 3)
    monkeypatch.chdir(tmp_path)
    assert project_relative(str(tmp_path / "External" / "job001" / "x.star")) == \
        "External/job001/x.star"
    assert project_relative("External/job001/") == "External/job001"


# ----- argument parsing ---------------------------------------------------------------------
def test_real_relion_argv_parses_like_relion_gave_it(fixtures):
    record = json.loads((fixtures / "job002_argv.json").read_text())
    opts, notes = parse_argv(record["argv"][1:])
    expected = {k: ([] if v is True else v.split()) for k, v in record["parsed"].items()}
    assert opts == expected
    assert notes == []
    cfg, warnings = build_config(opts)
    assert cfg.job_dir == "External/job002/"
    assert cfg.in_parts == "Import/job000/particles.star"
    assert cfg.references == ["Import/job000/ref.mrc"]
    assert cfg.mask == "Import/job000/mask.mrc"
    assert (cfg.threads, cfg.classes, cfg.replicates, cfg.seed) == (2, 3, 5, 42)  # K, n_replicates
    text = " | ".join(warnings)
    for ignored in ("--flag_only", "--extra_arg foo", "--in_movies", "--in_mics", "--in_coords"):
        assert ignored in text
    assert "pipeline_control" not in text


def test_parameters_values_flags_and_words():
    argv = ["--o", "External/job009/", "--in_parts", "p.star", "--in_3dref", "a.mrc", "b.mrc",
            "--mode", "stability", "--classes", "2", "--replicates", "4", "--target_res", "12.5",
            "--max_iter", "9", "--seed", "3", "--hard", "--mask_is_focus", "yes", "--gpu", "1",
            "--tau2_fudge", "2", "--particle_diameter=150", "--Max-Iter", "10", "--j", "3"]
    opts, notes = parse_argv(argv)
    assert notes == []
    cfg, warnings = build_config(opts)
    assert cfg.references == ["a.mrc", "b.mrc"]
    assert cfg.mode == "stability"
    assert (cfg.classes, cfg.replicates, cfg.max_iter, cfg.seed, cfg.threads) == (2, 4, 10, 3, 3)
    assert cfg.target_res_A == 12.5 and cfg.tau2_fudge == 2.0 and cfg.particle_diameter_A == 150.0
    assert cfg.hard is True and cfg.mask_is_focus is True
    assert (cfg.device, cfg.gpu_ids) == ("gpu", "1")
    assert any("repeats" in w for w in warnings)


@pytest.mark.parametrize("words, device, ids", [
    ([], "gpu", None), (["yes"], "gpu", None), (["no"], "cpu", None), (["auto"], "auto", None),
    (["0,1"], "gpu", "0,1"), (["0", "1"], "gpu", "0,1")])
def test_gpu_values(words, device, ids):
    cfg, _ = build_config({"o": ["J/"], "in_parts": ["p.star"], "gpu": words})
    assert (cfg.device, cfg.gpu_ids) == (device, ids)


def test_empty_values_keep_defaults_and_switches_turn_on():
    cfg, _ = build_config({"o": ["J/"], "in_parts": ["p.star"], "target_res": [], "classes": [],
                           "hard": [], "mask_is_focus": ["no"]})
    assert cfg.target_res_A is None and cfg.classes is None
    assert cfg.hard is True and cfg.mask_is_focus is False


@pytest.mark.parametrize("opt, words, shown", [
    ("classes", ["abc"], "abc"), ("classes", ["0"], "0"), ("mode", ["refine"], "refine"),
    ("hard", ["maybe"], "maybe"), ("target_res", ["-4"], "-4"), ("gpu", ["fast"], "fast"),
    ("seed", ["1", "2"], "1 2"), ("seed", ["-3"], "-3"), ("replicates", ["1"], "1"),
    ("subsample", ["0"], "0"), ("k_scan", ["3-4"], "3-4"), ("min_class_size", ["0"], "0")])
def test_bad_values_name_option_and_value(opt, words, shown):
    with pytest.raises(InputError) as err:
        build_config({"o": ["J/"], "in_parts": ["p.star"], opt: words})
    line = err.value.one_line()
    assert f"--{opt}" in line and shown in line and "\n" not in line


def test_missing_particles_is_input_error():
    with pytest.raises(InputError, match="in_parts"):
        build_config({"o": ["J/"]})


def test_classify_options_mapping():
    cfg, _ = build_config({"o": ["J/"], "in_parts": ["p.star"], "in_3dref": ["r.mrc"],
                           "in_mask": ["m.mrc"], "classes": ["3"], "seed": ["7"], "j": ["2"],
                           "mask_is_focus": []})
    opt = relion_main.classify_options(cfg)
    assert (opt.classes, opt.seed, opt.threads, opt.init) == (3, 7, 2, "ref")
    assert tuple(opt.references) == ("r.mrc",)
    assert opt.focus_mask == "m.mrc" and opt.solvent_mask is None
    cfg.mask_is_focus = False
    opt = relion_main.classify_options(cfg)
    assert opt.solvent_mask == "m.mrc" and opt.focus_mask is None
    cfg.references = []
    assert relion_main.classify_options(cfg).init == "random"


# ----- the executable with a fake engine ----------------------------------------------------
class FakeEngine:
    """Stands in for hetclass.pipeline: records calls, writes Class3D-named files."""

    def __init__(self, behaviour="ok", n_classes=2):
        self.behaviour = behaviour
        self.n_classes = n_classes
        self.calls = {}

    def load_particles(self, path, project_dir=None):
        self.calls["load"] = (path, project_dir)
        if self.behaviour == "bad_input":
            raise InputError("missing column", file=path, field="rlnImageName")
        return list(range(10))

    def run_classify(self, particles, options, out_dir, resume=False, overwrite=False,
                     progress=None, abort_check=None):
        self.calls["classify"] = dict(options=options, out_dir=out_dir, overwrite=overwrite,
                                      resume=resume)
        if self.behaviour == "warn":
            warnings.warn("class 2 is empty\nsecond line", HetclassWarning, stacklevel=1)
        for it in range(1, 4):
            progress("batch", done=it, total=3, stage="preprocess")
            progress("iteration", it=it, max_iter=3, changed_pct=10.0 / it,
                     class_fractions=[0.5, 0.5])
            if self.behaviour == "gui_abort" and it == 2:
                Path(out_dir, ABORT_NOW).touch()
            if self.behaviour == "sigterm" and it == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this
                raise AssertionError("SIGTERM was not handled")
            abort_check()
        if self.behaviour == "crash":
            raise ValueError("engine exploded\nwith a two-line message")
        for name in ["run_data.star", "run_model.star"] + [
                f"run_class{k:03d}.mrc" for k in range(1, self.n_classes + 1)]:
            Path(out_dir, name).write_text("x")
        if self.behaviour == "late_abort":
            Path(out_dir, ABORT_NOW).touch()
        return types.SimpleNamespace(class_fractions=np.full(self.n_classes, 1 / self.n_classes),
                                     n_iter=3, labels=np.zeros(10, int))


def _run(argv, engine, **kw):
    out, err = io.StringIO(), io.StringIO()
    code = relion_main.main(argv, load_particles=engine.load_particles,
                            run_classify=engine.run_classify, stdout=out, stderr=err,
                            environ={}, **kw)
    return code, out.getvalue(), err.getvalue()


def _job_argv(job="External/job004/", *extra):
    return ["--o", job, "--in_parts", "Import/job001/particles.star", "--classes", "2",
            "--seed", "11", *extra, "--j", "2", "--pipeline_control", job]


@pytest.fixture
def relion_job(project, fixtures):
    (project / "Import" / "job001").mkdir(parents=True)
    (project / "Import" / "job001" / "particles.star").write_text("data_\n")
    job = project / "External" / "job004"
    job.mkdir(parents=True)
    text = (fixtures / "ext_job_dual_3x_4x.star").read_text()
    (job / "job.star").write_text(text.replace("# version 30001", "# version 50001"))  # RELION 5
    (job / SUCCESS).write_text("")  # stale marker of an earlier run
    return job


def test_success_writes_nodes_then_success_marker(relion_job):
    engine = FakeEngine()
    code, out, err = _run(_job_argv(), engine)
    assert code == 0, err
    assert _markers(relion_job) == {SUCCESS}
    nodes = starfile.read(relion_job / "RELION_OUTPUT_NODES.star")
    assert nodes["rlnPipeLineNodeName"].tolist() == [
        "External/job004/run_data.star", "External/job004/run_model.star",
        "External/job004/run_class001.mrc", "External/job004/run_class002.mrc"]
    assert nodes["rlnPipeLineNodeType"].tolist() == [3, 8, 6, 6]
    assert nodes["rlnPipeLineNodeTypeLabel"][0] == "ParticleGroupMetadata.star.relion.class3d"
    opts = engine.calls["classify"]["options"]
    assert (opts.classes, opts.seed, opts.threads) == (2, 11, 2)
    assert engine.calls["classify"]["out_dir"] == "External/job004/"
    assert engine.calls["classify"]["overwrite"] is True
    assert engine.calls["classify"]["resume"] is False
    assert engine.calls["load"] == ("Import/job001/particles.star", str(relion_job.parents[1]))
    assert re.search(r"iteration 3/3; 3.33% changed class; class fractions 0.500 0.500", out)
    assert "preprocess" not in out  # quick batches are not printed
    assert err == ""


def test_engine_error_gives_failure_and_one_line(relion_job):
    code, out, err = _run(_job_argv(), FakeEngine("crash"))
    assert code == 1
    assert _markers(relion_job) == {FAILURE}
    assert not (relion_job / "RELION_OUTPUT_NODES.star").exists()
    lines = err.strip().splitlines()
    assert lines == ["hetclass_relion: error: ValueError: engine exploded with a two-line message"]


def test_bad_input_file_gives_failure_exit_2(relion_job):
    code, _, err = _run(_job_argv(), FakeEngine("bad_input"))
    assert code == 2 and _markers(relion_job) == {FAILURE}
    assert "rlnImageName" in err and len(err.strip().splitlines()) == 1


def test_bad_option_and_missing_file_give_failure(relion_job):
    code, _, err = _run(_job_argv("External/job004/", "--classes", "many"), FakeEngine())
    assert code == 2 and _markers(relion_job) == {FAILURE}
    assert "--classes" in err and "many" in err
    argv = ["--o", "External/job004/", "--in_parts", "Import/job001/nope.star"]
    code, _, err = _run(argv, FakeEngine())
    assert code == 2 and _markers(relion_job) == {FAILURE}
    assert "nope.star" in err and "--in_parts" in err


def test_unknown_extras_only_warn(relion_job):
    code, _, err = _run(_job_argv("External/job004/", "--extra_arg", "foo", "--flag_only"),
                        FakeEngine())
    assert code == 0 and _markers(relion_job) == {SUCCESS}
    assert "warning" in err and "--extra_arg foo" in err and "--flag_only" in err


def test_gui_abort_between_iterations(relion_job):
    engine = FakeEngine("gui_abort")
    code, out, err = _run(_job_argv(), engine)
    assert code == 130 and _markers(relion_job) == {ABORTED}
    assert "iteration 3/3" not in out  # stopped at the poll after iteration 2
    assert ABORT_NOW in err
    assert not (relion_job / "RELION_OUTPUT_NODES.star").exists()


def test_abort_requested_while_finishing_is_aborted(relion_job):
    code, _, _ = _run(_job_argv(), FakeEngine("late_abort"))
    assert code == 130 and _markers(relion_job) == {ABORTED}


def test_sigterm_gives_aborted_and_restores_handler(relion_job):
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    code, _, err = _run(_job_argv(), FakeEngine("sigterm"))
    assert time.monotonic() - t0 < 4
    assert code == 130 and _markers(relion_job) == {ABORTED}
    assert "SIGTERM" in err
    assert signal.getsignal(signal.SIGTERM) is before


def test_watcher_interrupts_code_that_never_polls(tmp_path):
    sigint_before = signal.getsignal(signal.SIGINT)
    """Backstop: engine code that ignores abort_check is interrupted after the grace time."""
    job_dir = tmp_path / "External" / "job007"
    t0 = time.monotonic()
    with JobMarkers(str(job_dir), stderr=io.StringIO(), abort_grace_s=0.2, poll_s=0.05) as job:
        (job_dir / ABORT_NOW).touch()
        while time.monotonic() - t0 < 10:  # never calls abort_check
            time.sleep(0.01)
    assert time.monotonic() - t0 < 5
    assert job.status == "aborted" and _markers(job_dir) == {ABORTED}
    assert signal.getsignal(signal.SIGINT) is sigint_before


def test_markers_context_catches_everything(tmp_path):
    for exc, status, marker in [(None, "success", SUCCESS), (RuntimeError("x"), "failure", FAILURE),
                                (AbortRequested("stop"), "aborted", ABORTED),
                                (KeyboardInterrupt(), "aborted", ABORTED),
                                (SystemExit(3), "failure", FAILURE),
                                (MemoryError(), "failure", FAILURE)]:
        job_dir = tmp_path / f"j_{status}_{type(exc).__name__}"
        with JobMarkers(str(job_dir), stderr=io.StringIO(), abort_grace_s=None) as job:
            if exc is not None:
                raise exc
        assert job.status == status and _markers(job_dir) == {marker}
    assert job.exit_code() == 1


def test_without_job_dir_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["--in_parts", "p.star"], FakeEngine())
    assert code == 2 and "--o" in err and list(tmp_path.iterdir()) == []
    out = io.StringIO()
    assert relion_main.main(["--help"], stdout=out) == 0
    for name in PARAMETERS:
        assert f"--{name}" in out.getvalue()


def test_gpu_ids_set_cuda_visible_devices(relion_job):
    env = {}
    code = relion_main.main(_job_argv("External/job004/", "--gpu", "1"),
                            load_particles=FakeEngine().load_particles,
                            run_classify=FakeEngine().run_classify, stdout=io.StringIO(),
                            stderr=io.StringIO(), environ=env)
    assert code == 0 and env == {"CUDA_VISIBLE_DEVICES": "1"}


def _fake_stability_job(calls):
    def stability_job(particles, options, out_dir, k_values, n_replicates=5, subsample=None,
                      workers=None, core_min_stability=0.8, particles_path=None, progress=None,
                      abort_check=None, null_sets=4):
        calls.update(mode="stability", options=options, out_dir=out_dir, k_values=k_values,
                     n_replicates=n_replicates, subsample=subsample, workers=workers,
                     core=core_min_stability, particles_path=particles_path)
        progress("replicate", k=2, replicate=0, done=1, total=n_replicates, seconds=0.5)
        progress("k_done", k=2, seconds=1.0, all_stable=True)
        abort_check()
        files = {"consensus_data.star": "consensus_data.star",
                 "stable_core_class001.star": "stable_core_class001.star",
                 "consensus_class001.mrc": "consensus_class001.mrc",
                 "consensus_half1_class001_unfil.mrc": "consensus_half1_class001_unfil.mrc",
                 "consensus_half2_class001_unfil.mrc": "consensus_half2_class001_unfil.mrc",
                 "labels.npz": "labels.npz", "report.html": "report.html",
                 "summary.json": "summary.json"}
        for name in files.values():
            Path(out_dir, name).write_text("x")
        return {"files": files}, None
    return stability_job


def _fake_exhaustive_job(calls):
    def exhaustive_job(particles, options, out_dir, min_class_size=1000, max_depth=3,
                       n_replicates=5, subsample=None, k_scan=(2,), null_sets=4, workers=None,
                       particles_path=None, progress=None, abort_check=None):
        calls.update(mode="exhaustive", min_class_size=min_class_size, max_depth=max_depth,
                     k_scan=k_scan, null_sets=null_sets, n_replicates=n_replicates)
        progress("node", id="1", n_particles=10, decision="split", reason=None)
        summary = {"leaves_star": "leaves_data.star",
                   "reassigned": {"star": "leaves_reassigned_data.star",
                                  "maps": ["leaves_reassigned_class001.mrc"],
                                  "half_maps": [["leaves_reassigned_half1_class001_unfil.mrc",
                                                 "leaves_reassigned_half2_class001_unfil.mrc"]]},
                   "leaves": [
            {"star": "leaf01_node1.1.star", "map": "leaf01_node1.1.mrc",
             "half_maps": ["leaf01_node1.1_half1_unfil.mrc", "leaf01_node1.1_half2_unfil.mrc"]},
            {"star": "leaf02_node1.2.star"}]}
        for name in ["leaves_data.star", "leaves_reassigned_data.star",
                     "leaves_reassigned_class001.mrc", "leaves_reassigned_half1_class001_unfil.mrc",
                     "leaves_reassigned_half2_class001_unfil.mrc",
                     "leaf01_node1.1.star", "leaf01_node1.1.mrc",
                     "leaf01_node1.1_half1_unfil.mrc", "leaf01_node1.1_half2_unfil.mrc",
                     "leaf02_node1.2.star", "tree.json"]:
            Path(out_dir, name).write_text("x")
        return summary, None
    return exhaustive_job


def _run_replicates(argv, calls):
    out, err = io.StringIO(), io.StringIO()
    jobs = {"stability": _fake_stability_job(calls), "exhaustive": _fake_exhaustive_job(calls)}
    code = relion_main.main(argv, load_particles=FakeEngine().load_particles,
                            replicate_jobs=jobs, stdout=out, stderr=err, environ={})
    return code, out.getvalue(), err.getvalue()


def test_stability_mode_runs_and_registers_its_outputs(relion_job):
    calls = {}
    argv = ["--o", "External/job004/", "--in_parts", "Import/job001/particles.star",
            "--mode", "stability", "--classes", "1-3", "--replicates", "4", "--subsample", "0.8",
            "--seed", "9", "--j", "3"]
    code, out, err = _run_replicates(argv, calls)
    assert code == 0, err
    assert calls["k_values"] == [1, 2, 3] and calls["n_replicates"] == 4
    assert (calls["subsample"], calls["workers"], calls["core"]) == (0.8, 3, 0.8)
    assert calls["options"].seed == 9 and calls["options"].classes == 3
    assert calls["particles_path"] == "Import/job001/particles.star"
    assert "K=2: replicate 1/4 done" in out and "K=2: all classes stable" in out
    nodes = starfile.read(relion_job / "RELION_OUTPUT_NODES.star")
    got = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"]))
    assert got == {"External/job004/consensus_data.star": 3,
                   "External/job004/stable_core_class001.star": 3,
                   "External/job004/consensus_class001.mrc": 6,
                   "External/job004/consensus_half1_class001_unfil.mrc": 10}
    assert _markers(relion_job) == {SUCCESS}


def test_exhaustive_mode_runs_and_registers_leaves(relion_job):
    calls = {}
    argv = ["--o", "External/job004/", "--in_parts", "Import/job001/particles.star",
            "--mode", "exhaustive", "--min_class_size", "50", "--max_depth", "2",
            "--k_scan", "2-3", "--classes", "3"]
    code, out, err = _run_replicates(argv, calls)
    assert code == 0, err
    assert (calls["min_class_size"], calls["max_depth"], calls["k_scan"], calls["null_sets"],
            calls["n_replicates"]) == (50, 2, [2, 3], 4, 5)
    assert "classes is not used by mode exhaustive" in err
    assert "node 1 (10 particles): split" in out
    nodes = starfile.read(relion_job / "RELION_OUTPUT_NODES.star")
    got = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"]))
    assert got == {"External/job004/leaves_data.star": 3,
                   "External/job004/leaves_reassigned_data.star": 3,
                   "External/job004/leaves_reassigned_class001.mrc": 6,
                   "External/job004/leaves_reassigned_half1_class001_unfil.mrc": 10,
                   "External/job004/leaf01_node1.1.star": 3,
                   "External/job004/leaf01_node1.1.mrc": 6,
                   "External/job004/leaf01_node1.1_half1_unfil.mrc": 10,
                   "External/job004/leaf02_node1.2.star": 3}


def test_k_ranges_by_mode():
    base = {"o": ["J/"], "in_parts": ["p.star"]}
    cfg, _ = build_config({**base, "mode": ["stability"], "classes": ["2-4"]})
    assert cfg.k_values == [2, 3, 4] and cfg.classes == 4
    with pytest.raises(InputError, match="only for mode stability"):
        build_config({**base, "classes": ["2-4"]})
    with pytest.raises(InputError, match="needs classes"):
        build_config({**base, "mode": ["stability"]})
    with pytest.raises(InputError, match="must include 2"):
        build_config({**base, "mode": ["exhaustive"], "k_scan": ["3-4"]})
    for bad in (["4-2"], ["0"], ["x-3"], ["1-"]):
        with pytest.raises(InputError, match="KMIN-KMAX"):
            build_config({**base, "mode": ["stability"], "classes": bad})
    with pytest.raises(InputError, match="fraction"):
        build_config({**base, "subsample": ["1.5"]})


# ----- README section --------------------------------------------------------------------------
def test_readme_section_documents_every_parameter_and_a_valid_job_star(tmp_path):
    text = (REPO / "relion_external" / "README_section.md").read_text()
    for name in PARAMETERS:
        assert f"`{name}`" in text
    block = re.search(r"```\n(# version 30001\n.*?)```", text, flags=re.S).group(1)
    (tmp_path / "job.star").write_text(block)
    values = starfile.read(tmp_path / "job.star")["joboptions_values"]
    options = dict(zip(values["rlnJobOptionVariable"], values["rlnJobOptionValue"].astype(str)))
    assert options["fn_exe"] == "hetclass_relion"
    argv = ["--o", "External/job011/", "--in_parts", options["in_part"]]
    for i in range(1, 11):
        label, value = options[f"param{i}_label"], options[f"param{i}_value"]
        argv += [f"--{label}"] + ([] if value in ("", '""', "nan") else value.split())
    cfg, warnings = build_config(parse_argv(argv)[0])
    assert warnings == []
    assert (cfg.mode, cfg.classes, cfg.hard, cfg.device) == ("classify", 3, False, "cpu")


def test_progress_lines():
    out = io.StringIO()
    progress = relion_main.make_progress(out, min_interval_s=0.0)
    progress("batch", done=5, total=10, stage="preprocess")
    progress("iteration", it=2, max_iter=25, changed_pct=1.234, class_fractions=[0.25, 0.75],
             resolution_A=[12.0, 14.5])
    # a crop limit is a bound and an unresolved class has no value (the engine's None)
    progress("iteration", it=3, max_iter=25, class_fractions=[0.3, 0.7, 0.0],
             resolution_A=[12.0, 14.5, None],
             resolution_status=["measured", "crop_limit", "unmeasured"])
    progress("replicate", r=3, of=5)
    progress("message", text="  reusing the preprocessed data in /cache")
    lines = out.getvalue().splitlines()
    assert lines[4].endswith("] reusing the preprocessed data in /cache")   # the text alone
    assert lines[0].endswith("preprocess: 5/10")
    assert lines[1].endswith("iteration 2/25; 1.23% changed class; class fractions 0.250 0.750; "
                             "resolution 12.0 A, 14.5 A")
    assert lines[2].endswith("resolution 12.0 A, <= 14.5 A (crop limit), not resolved")
    assert lines[3].endswith("replicate r=3 of=5")
    quiet = io.StringIO()
    progress = relion_main.make_progress(quiet, min_interval_s=60.0)
    progress("batch", done=1, total=10, stage="em")
    assert quiet.getvalue() == ""


def test_continue_resumes_from_checkpoint(relion_job):
    text = (relion_job / "job.star").read_text()
    assert re.search(r"_rlnJobIsContinue\s+0", text)
    (relion_job / "job.star").write_text(re.sub(r"(_rlnJobIsContinue\s+)0", r"\g<1>1", text))
    engine = FakeEngine()
    assert _run(_job_argv(), engine)[0] == 0
    assert engine.calls["classify"]["resume"] is False  # continue, but nothing to resume from
    (relion_job / "run_checkpoint.npz").write_bytes(b"")
    code, out, _ = _run(_job_argv(), engine)
    assert code == 0 and "continuing" in out
    assert engine.calls["classify"]["resume"] is True
    assert engine.calls["classify"]["overwrite"] is False


def test_engine_warnings_are_one_line_in_run_err(relion_job):
    code, _, err = _run(_job_argv(), FakeEngine("warn"))
    assert code == 0
    assert "hetclass_relion: warning: HetclassWarning: class 2 is empty second line" in err
    assert len(err.strip().splitlines()) == 1
