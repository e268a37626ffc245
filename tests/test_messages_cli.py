"""Messages a user reads (issue 14): each says what is wrong and what to do, in one line.

Relative image paths that do not resolve name the stack and --project-dir; demo on an
existing folder offers --overwrite (it has no --continue); convert of a RELION 3.0 STAR whose
size it cannot learn stops (exit 2) unless --image-size gives it; convert never replaces an
existing output without --overwrite; a --target-res finer than the data allow is one warning
line saying what is used; argument errors are one line with exit 2; warnings are one line
without Python's source location; restarts are announced with their reason.
"""

import io
import os
import warnings

import numpy as np
import pytest
import starfile

from hetclass.errors import EmptyClassWarning
from hetclass.preprocess import plan_crop
from hetclass_standalone.main import main as cli
from hetclass_standalone.messages import one_line_warnings
from hetclass_standalone.progress import ClassifyProgress, ReplicateProgress


def _run(capsys, argv):
    capsys.readouterr()
    try:
        rc = cli([str(a) for a in argv])
    except SystemExit as exc:            # argparse exits
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error_line(rc, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, (rc, err)
    assert "Traceback" not in err and "usage:" not in err
    return lines[0]


def test_relative_stack_path_names_the_stack_and_project_dir(tiny_dataset, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)       # the STAR's relative paths do not resolve from here
    out = tmp_path / "out"
    rc, _, err = _run(capsys, ["classify", "--particles", tiny_dataset.star_path,
                               "--classes", "2", "--out", out, "--quiet"])
    line = _one_error_line(rc, err)
    first = starfile.read(tiny_dataset.star_path, always_dict=True)["particles"][
        "rlnImageName"].iloc[0].split("@", 1)[1]
    assert os.path.join(str(tmp_path), first) in line      # the stack, where it was looked for
    assert "--project-dir" in line and str(tmp_path) in line
    assert not out.exists()
    # with --project-dir pointing elsewhere, the message says to check it
    rc, _, err = _run(capsys, ["classify", "--particles", tiny_dataset.star_path,
                               "--project-dir", tmp_path, "--classes", "2", "--out", out,
                               "--quiet"])
    assert "check --project-dir" in _one_error_line(rc, err)


def test_demo_on_existing_folder_offers_overwrite_not_continue(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep\n")
    rc, _, err = _run(capsys, ["demo", "--out", out, "--particles", "20"])
    line = _one_error_line(rc, err)
    assert "--overwrite" in line and "--continue" not in line and str(out) in line
    assert os.listdir(out) == ["mine.txt"]
    rc, _, err = _run(capsys, ["demo", "--continue", "--out", out])
    assert "--continue" in _one_error_line(rc, err)           # demo really has no --continue


@pytest.fixture
def star30(tiny_dataset, tmp_path, capsys, monkeypatch):
    """The tiny data set's STAR in RELION 3.0 layout (no rlnImageSize), in an empty folder
    where its stacks do not resolve; the working directory is that folder."""
    monkeypatch.chdir(tiny_dataset.out_dir)
    rc, _, err = _run(capsys, ["convert", tiny_dataset.star_path, tmp_path / "p30.star",
                               "--to-version", "3.0"])
    assert rc == 0, err
    monkeypatch.chdir(tmp_path)
    table = starfile.read(tmp_path / "p30.star", always_dict=True)
    assert "rlnImageSize" not in next(iter(table.values())).columns
    return tmp_path / "p30.star"


def test_convert_30_without_images_needs_the_size(star30, capsys):
    rc, _, err = _run(capsys, ["convert", star30, "p31.star"])
    line = _one_error_line(rc, err)
    assert "rlnImageSize" in line and "--image-size" in line and "p30.star" in line
    assert not os.path.exists("p31.star")
    rc, out, err = _run(capsys, ["convert", star30, "p31.star", "--image-size", "32"])
    assert rc == 0, err
    optics = starfile.read("p31.star", always_dict=True)["optics"]
    assert optics["rlnImageSize"].tolist() == [32] * len(optics)


def test_convert_30_reads_the_size_from_the_stacks(star30, tiny_dataset, capsys, monkeypatch):
    monkeypatch.chdir(tiny_dataset.out_dir)
    out = os.path.join(os.path.dirname(star30), "p31.star")
    rc, _, err = _run(capsys, ["convert", star30, out])
    assert rc == 0, err
    assert starfile.read(out, always_dict=True)["optics"]["rlnImageSize"].tolist()[0] == 32
    rc, _, err = _run(capsys, ["convert", star30, out + ".2.star", "--image-size", "48"])
    assert "48" in _one_error_line(rc, err)


def test_convert_refuses_to_overwrite(star30, capsys):
    target = star30.parent / "again.star"
    target.write_text("precious\n")
    rc, _, err = _run(capsys, ["convert", star30, target, "--to-version", "3.0"])
    line = _one_error_line(rc, err)
    assert "--overwrite" in line and "again.star" in line
    assert target.read_text() == "precious\n"
    rc, _, err = _run(capsys, ["convert", star30, target, "--to-version", "3.0", "--overwrite"])
    assert rc == 0, err
    assert len(starfile.read(target, always_dict=True)) == 1


def test_target_finer_than_nyquist_is_one_warning_line(tiny_dataset, tmp_path, capsys):
    # box 32 at 6 A/px: Nyquist 12 A; 2 A cannot be had
    rc, out, err = _run(capsys, ["classify", "--particles", tiny_dataset.star_path,
                                 "--project-dir", tiny_dataset.out_dir, "--classes", "2",
                                 "--max-iter", "1", "--target-res", "2", "--out",
                                 tmp_path / "run", "--quiet"])
    assert rc == 0, err
    used = plan_crop(32, 6.0, 2.0).target_res_A
    lines = [ln for ln in err.splitlines() if "--target-res" in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("hetclass classify: warning: --target-res 2 A")
    assert f"clamped to the finest possible, {used:.1f} A" in lines[0]
    # every stderr line is the project's own (no Python warning format, no source line)
    for ln in err.splitlines():
        assert ln.startswith("hetclass classify: warning: "), ln
    import json
    assert json.loads((tmp_path / "run" / "run.json").read_text())[
        "target_resolution_A"] == pytest.approx(used)


@pytest.mark.parametrize("argv,needle", [
    (["classify", "--particles", "p.star", "--out", "o", "--classes", "abc"], "abc"),
    (["classify", "--classes", "2"], "--particles"),
    (["stability", "--particles", "p.star", "--out", "o", "--classes", "2", "--replicates", "x"],
     "--replicates"),
    (["classify", "--particles", "p.star", "--out", "o", "-K", "2", "--device", "tpu"], "tpu"),
    (["convert", "a.star"], "OUT"),
])
def test_argument_errors_are_one_line(argv, needle, capsys):
    rc, out, err = _run(capsys, argv)
    line = _one_error_line(rc, err)
    assert line.startswith(f"hetclass {argv[0]}: error: ") and needle in line
    assert f"hetclass {argv[0]} --help" in line and out == ""


def test_warnings_are_one_line_without_source():
    stream = io.StringIO()
    with one_line_warnings("hetclass classify", stream):
        warnings.warn("iteration 3:\n  1 class(es) are empty", EmptyClassWarning, stacklevel=1)
        warnings.warn("invalid value encountered", RuntimeWarning, stacklevel=1)
    lines = stream.getvalue().splitlines()
    assert lines == ["hetclass classify: warning: iteration 3: 1 class(es) are empty",
                     "hetclass classify: warning: invalid value encountered (RuntimeWarning)"]


def test_exploration_is_announced_with_the_kept_start():
    stream = io.StringIO()
    progress = ClassifyProgress(stream, max_iter=25, bars=False)
    progress("explore_start", start=0, n_starts=2)
    progress("iteration", it=1, max_iter=12, changed_pct=40.0, phase="explore", start=0,
             n_starts=2)
    progress("explore_start", start=1, n_starts=2)
    progress("explore_done", selected=1, scores=[-90.5, -89.25])
    progress("iteration", it=1, max_iter=25, changed_pct=9.0, class_fractions=[0.5, 0.5])
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "exploring: start 1/2 from random references, hard assignments"
    assert lines[1].startswith("  start 1/2, iteration  1/12:  40.00 % changed")
    assert lines[3] == ("start 2 kept: highest held-out log-evidence per particle "
                        "(-90.50, -89.25); refining it with soft assignments")
    assert lines[4].startswith("iteration   1/25:")


def test_engine_reports_exploration_and_keeps_the_best_start(tiny_dataset):
    """engine.fit explores ``n_init`` starts, says which it kept, and records them all."""
    from hetclass import engine
    from hetclass.pipeline import ClassifyOptions, load_particles
    particles = load_particles(tiny_dataset.star_path, project_dir=tiny_dataset.out_dir)
    options = ClassifyOptions(classes=2, max_iter=3, target_res_A=25.0, n_init=2)
    prepared = engine.prepare(particles, options)
    events = []
    result = engine.fit(prepared, options, progress=lambda e, **i: events.append((e, i)))
    starts = [i["start"] for e, i in events if e == "explore_start"]
    done = [i for e, i in events if e == "explore_done"]
    assert starts == [0, 1] and len(done) == 1
    scores = done[0]["scores"]
    assert done[0]["selected"] == int(np.argmax(scores))
    assert [s["score"] for s in result.state.starts] == scores
    assert [s["selected"] for s in result.state.starts] == [j == done[0]["selected"]
                                                            for j in range(2)]


def test_replicate_progress_reports_iterations_with_an_estimate():
    stream = io.StringIO()
    progress = ReplicateProgress(stream, max_iter=10, tasks=4, bars=False, status_interval_s=0)
    progress("batch", stage="preprocess", done=5, total=10)
    for r in range(2):
        for it in range(1, 4):
            progress("iteration", k=2, replicate=r, it=it, max_iter=10, changed_pct=5.0)
    progress("replicate", k=2, replicate=0, done=1, total=4, seconds=1.5)
    progress.close()
    lines = stream.getvalue().splitlines()
    status = [ln for ln in lines if "replicate iterations" in ln]
    assert status[0].startswith("replicates: 1/40 replicate iterations")
    assert status[-1].startswith("replicates: 13/40")     # replicate 0 finished early: 10 + 3
    assert all("left" in ln for ln in status)
    assert any(ln.strip().startswith("K=2: replicate 1/4 done (1.5 s, 3 iterations)")
               for ln in lines)


def test_bars_on_a_terminal_show_elapsed_and_remaining():
    stream = io.StringIO()
    progress = ReplicateProgress(stream, max_iter=5, tasks=2, bars=True)
    for it in range(1, 4):
        progress("iteration", k=3, replicate=1, it=it, max_iter=5, changed_pct=2.0)
    progress.close()
    text = stream.getvalue()
    assert "3/10" in text and "elapsed" in text and "left" in text
    assert "K=3 replicate 2 iteration 3" in text
