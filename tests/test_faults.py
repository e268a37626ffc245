"""Faults of issue 13, end to end: every case ends with a correct result, or exit code 2 and one
line naming file, field and value -- no traceback, nothing written, inputs untouched.

Data: the session's tiny simulated set (40 particles, box 32 at 6 A/px, two stacks of 25),
copied per test. A correct result is checked against a reference classification of the same
images: renaming stacks into a folder with a space, quoting names, or giving one particle as a
single-image file must give bitwise the same posteriors.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import mrcfile
import numpy as np
import pytest

from hetclass.io.loader import load_particles
from hetclass.io.lock import LOCK_NAME
from hetclass.io.star import STRING_COLUMNS, read_star
from hetclass.io.star_text import format_star, read_star_file
from hetclass_relion.main import main as relion_main
from hetclass_standalone.main import main as cli

RUN = ["--classes", "2", "--max-iter", "3", "--target-res", "25", "--quiet"]
STACK = os.path.join("Particles", "stack_001.mrcs")


def _hash_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _classify(star, project, out, *extra):
    return ["classify", "--particles", str(star), "--project-dir", str(project),
            "--out", str(out), *RUN, *extra]


def _one_line_error(capsys, argv, *needles, out=None, inputs=None):
    """Run the CLI in-process; assert exit 2, one stderr line with ``needles``, nothing
    written into ``out`` and ``inputs`` (a folder) unchanged. Returns the line."""
    before = _hash_tree(inputs) if inputs is not None else None
    capsys.readouterr()
    rc = cli([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    if out is not None:
        assert not os.path.exists(out) or not os.listdir(out), os.listdir(out)
    if inputs is not None:
        assert _hash_tree(inputs) == before
    return lines[0]


def _edit_cell(star, column, row, value):
    blocks = read_star_file(str(star), STRING_COLUMNS)
    df = blocks["particles"]
    df[column] = df[column].astype(object)
    df.loc[row, column] = value
    star.write_text(format_star(blocks))


@pytest.fixture
def data(tiny_dataset, copy_dataset):
    d = copy_dataset(tiny_dataset)
    return d, d / "particles.star"


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """Posteriors of the unmodified tiny set (the expected result of every legal variant)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli(_classify(tiny_dataset.star_path, tiny_dataset.out_dir, out)) == 0
    return np.load(out / "run_posteriors.npy")


# ----- absurd numbers --------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1e30, np.inf, -np.inf, np.nan, 3e8])
def test_absurd_or_non_finite_pixel_stops_before_any_output(data, tmp_path, capsys, value):
    d, star = data
    with mrcfile.open(d / STACK, "r+") as m:
        m.data[6] = np.float32(1.0)
        m.data[6, 10, 12] = np.float32(value)
    line = _one_line_error(capsys, _classify(star, d, tmp_path / "out"), "stack_001.mrcs",
                           out=tmp_path / "out", inputs=d)
    assert re.search(r"field image 0*7\b", line), line


@pytest.mark.parametrize("how", ["all_zero_stacks", "one_constant_image"])
def test_constant_images_are_an_error_not_a_silent_split(data, tmp_path, capsys, how):
    d, star = data
    for name in os.listdir(d / "Particles"):
        if how == "all_zero_stacks" or name == "stack_001.mrcs":
            with mrcfile.open(d / "Particles" / name, "r+") as m:
                if how == "all_zero_stacks":
                    m.data[:] = 0
                else:
                    m.data[4] = 3.5
    line = _one_line_error(capsys, _classify(star, d, tmp_path / "out"), "constant",
                           "remove such particles", out=tmp_path / "out", inputs=d)
    assert ("image 000001" in line) if how == "all_zero_stacks" else ("image 000005" in line)


@pytest.mark.parametrize("column,value", [
    ("rlnDefocusU", 1e30), ("rlnDefocusV", "inf"), ("rlnDefocusAngle", "nan"),
    ("rlnAngleRot", 1e30), ("rlnOriginXAngst", 1e6), ("rlnCtfBfactor", -5e4),
    ("rlnPhaseShift", "-inf")])
def test_absurd_star_value_names_particle_field_and_value(data, tmp_path, capsys, column,
                                                          value):
    d, star = data
    _edit_cell(star, column, 5, value)
    line = _one_line_error(capsys, _classify(star, d, tmp_path / "out"), "particles.star",
                           f"field {column}", out=tmp_path / "out", inputs=d)
    assert "6" in line      # the particle / row


def test_mrc_header_with_non_finite_voxel_size(data, tmp_path, capsys):
    d, star = data
    with mrcfile.open(d / STACK, "r+") as m:
        m.header.cella.x = np.float32(np.nan)
    _one_line_error(capsys, _classify(star, d, tmp_path / "out"), "stack_001.mrcs",
                    "voxel size", out=tmp_path / "out", inputs=d)


# ----- CryoSPARC input ---------------------------------------------------------------------------
def _write_cs(d, stacks_folder="Particles"):
    """particles.cs made from the tiny set's STAR (uids 1..n), stacks under ``stacks_folder``."""
    from hetclass.io.cryosparc_write import table_from_particles
    p = load_particles(d / "particles.star", project_dir=d)
    if stacks_folder != "Particles":
        os.rename(d / "Particles", d / stacks_folder)
        p = replace(p, image_names=np.char.replace(p.image_names.astype(str), "@Particles/",
                                                   f"@{stacks_folder}/"))
    table = table_from_particles(p, np.arange(1, len(p) + 1, dtype=np.uint64))
    with open(d / "particles.cs", "wb") as fh:
        np.save(fh, table)
    return d / "particles.cs"


@pytest.mark.parametrize("field,value", [("ctf/df1_A", np.nan), ("ctf/df_angle_rad", np.inf),
                                         ("ctf/df2_A", 1e30)])
def test_cs_non_finite_ctf_value_names_uid_and_field(data, tmp_path, capsys, field, value):
    d, _ = data
    cs = _write_cs(d)
    table = np.load(cs)
    table[field][7] = value
    with open(cs, "wb") as fh:
        np.save(fh, table)
    _one_line_error(capsys, ["classify", "--particles", cs, "--cs-project-dir", d, "--out",
                             tmp_path / "out", *RUN], f"field {field}", "uid 8",
                    out=tmp_path / "out", inputs=d)


def test_cs_blob_path_with_a_space_round_trips(data, tmp_path, reference):
    d, _ = data
    cs = _write_cs(d, "sp dir")
    out = tmp_path / "out"
    assert cli([str(a) for a in ["classify", "--particles", cs, "--cs-project-dir", d,
                                 "--out", out, *RUN]]) == 0
    post = np.load(out / "run_posteriors.npy")     # .cs holds float32 CTF values: ~1e-5 off
    np.testing.assert_allclose(post, reference, atol=1e-4)
    np.testing.assert_array_equal(post.argmax(1), reference.argmax(1))
    back = read_star(out / "run_data.star", project_dir=d)
    assert all("@sp dir/stack_00" in n for n in back.image_names)
    assert (out / "run_particles.cs").exists()


# ----- STAR layout -------------------------------------------------------------------------------
def test_quoted_names_with_spaces_give_the_same_result(data, tmp_path, reference):
    d, star = data
    os.rename(d / "Particles", d / "sp dir")
    blocks = read_star_file(str(star), STRING_COLUMNS)
    df = blocks["particles"]
    df["rlnImageName"] = df["rlnImageName"].str.replace("@Particles/", "@sp dir/")
    df["rlnMicrographName"] = [f"my mic {i}.mrc" for i in range(len(df))]
    star.write_text(format_star(blocks))
    assert '"000001@sp dir/stack_001.mrcs" "my mic 0.mrc"' in star.read_text()
    out = tmp_path / "out"
    assert cli([str(a) for a in _classify(star, d, out)]) == 0
    np.testing.assert_array_equal(np.load(out / "run_posteriors.npy"), reference)
    back = read_star(out / "run_data.star", project_dir=d)
    assert back.image_names.tolist() == df["rlnImageName"].tolist()
    assert back.micrograph_names.tolist() == df["rlnMicrographName"].tolist()


@pytest.mark.parametrize("column", ["rlnMicrographName", "rlnAngleRot", "rlnImageName"])
def test_duplicated_column_refused_before_any_work(data, tmp_path, capsys, column):
    d, star = data
    lines = star.read_text().split("\n")
    at = next(i for i, ln in enumerate(lines) if ln.startswith(f"_{column} "))
    lines.insert(at + 1, f"_{column} #99")
    lines = [ln + "\t" + ln.split("\t")[0] if "@Particles" in ln else ln for ln in lines]
    star.write_text("\n".join(lines))
    _one_line_error(capsys, _classify(star, d, tmp_path / "out"), "particles.star",
                    f"field _{column}", "twice", out=tmp_path / "out", inputs=d)


@pytest.mark.parametrize("variant", ["no_loop", "no_rows", "latin-1", "utf-16", "binary"])
def test_unreadable_star_files_are_one_line(data, tmp_path, capsys, variant):
    d, star = data
    text = star.read_text()
    if variant == "no_loop":
        star.write_text(text[:text.index("data_particles")] + "data_particles\n")
    elif variant == "no_rows":
        star.write_text("\n".join(ln for ln in text.split("\n") if "@Particles" not in ln))
    elif variant == "binary":
        star.write_bytes(bytes(range(256)) * 8)
    else:
        star.write_bytes(text.replace("Micrographs/", "Micrographs/é").encode(variant))
    _one_line_error(capsys, _classify(star, d, tmp_path / "out"), "particles.star",
                    out=tmp_path / "out", inputs=d)


def test_image_name_without_index_is_a_single_image_or_refused(data, tmp_path, capsys,
                                                               reference):
    d, star = data
    with mrcfile.open(d / STACK) as m:
        image = np.array(m.data[2])
    with mrcfile.new(d / "single.mrc") as m:
        m.set_data(image)
        m.voxel_size = 6.0
    blocks = read_star_file(str(star), STRING_COLUMNS)
    blocks["particles"].loc[2, "rlnImageName"] = "single.mrc"
    star.write_text(format_star(blocks))
    out = tmp_path / "out"
    assert cli([str(a) for a in _classify(star, d, out)]) == 0   # the right image: same result
    np.testing.assert_array_equal(np.load(out / "run_posteriors.npy"), reference)
    blocks["particles"].loc[3, "rlnImageName"] = STACK              # a stack of 25: which one?
    star.write_text(format_star(blocks))
    _one_line_error(capsys, _classify(star, d, tmp_path / "out2"), "stack_001.mrcs",
                    "field rlnImageName", "index@", out=tmp_path / "out2", inputs=d)


# ----- one run per output folder ----------------------------------------------------------------
def _cmd(*argv):
    return [sys.executable, "-m", "hetclass_standalone.main", *[str(a) for a in argv]]


def test_two_runs_started_together_on_one_folder(tiny_dataset, tmp_path):
    out, ds = tmp_path / "out", tiny_dataset
    procs = {seed: subprocess.Popen(_cmd(*_classify(ds.star_path, ds.out_dir, out, "--seed",
                                                    seed)),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (0, 1)}
    ends = {seed: (p.wait(timeout=300), p.stderr.read()) for seed, p in procs.items()}
    won = [seed for seed, (rc, _) in ends.items() if rc == 0]
    lost = [seed for seed, (rc, _) in ends.items() if rc == 2]
    assert len(won) == 1 and len(lost) == 1, ends
    err = ends[lost[0]][1].strip().splitlines()   # refused by the lock (or, had it started
    assert len(err) == 1 and "--out" in err[0]      # after the winner ended, by its outputs)
    assert "another hetclass run" in err[0] or "not empty" in err[0], err
    info = json.loads((out / "run.json").read_text())
    assert info["options"]["seed"] == won[0]
    alone = tmp_path / "alone"               # every file comes from the winner alone
    assert cli([str(a) for a in _classify(ds.star_path, ds.out_dir, alone, "--seed",
                                          won[0])]) == 0
    for name in ("run_posteriors.npy", "run_class001.mrc", "run_class002.mrc"):
        assert (out / name).read_bytes() == (alone / name).read_bytes(), name
    assert not (out / LOCK_NAME).exists()


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun")
def test_under_mpi_rank_0_holds_the_lock(tiny_dataset, tmp_path):
    pytest.importorskip("mpi4py")
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from hetclass.io.lock "
                               "import acquire; l = acquire(sys.argv[1]); print('held', "
                               "flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-n", "2",
                *_cmd(*_classify(tiny_dataset.star_path, tiny_dataset.out_dir, out, "--mpi",
                                 "on"))]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("hetclass")]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


# ----- --continue only with the same particle set ---------------------------------------------
@pytest.fixture
def interrupted(data, tmp_path):
    """A run stopped after 2 of 3 iterations (its checkpoint holds iteration 2)."""
    d, star = data
    out = tmp_path / "out"
    argv = [a if a != "3" else "2" for a in _classify(star, d, out)]
    assert cli([str(a) for a in argv]) == 0
    for name in os.listdir(out):
        if name != "run_checkpoint.npz":
            os.remove(out / name)
    return d, star, out


@pytest.mark.parametrize("change,needles", [
    ("defocus", ("CTF values",)), ("order", ("image names",)), ("stack", ("stack_002.mrcs",
                                                                          "modified")),
    ("seed", ("field seed",))])
def test_continue_refuses_another_particle_set(interrupted, capsys, change, needles):
    d, star, out = interrupted
    extra = []
    if change == "defocus":
        _edit_cell(star, "rlnDefocusU", 9, 12345.5)
    elif change == "order":
        blocks = read_star_file(str(star), STRING_COLUMNS)
        blocks["particles"] = blocks["particles"].iloc[::-1].reset_index(drop=True)
        star.write_text(format_star(blocks))
    elif change == "stack":
        later = time.time() + 10
        os.utime(d / "Particles" / "stack_002.mrcs", (later, later))
    else:
        extra = ["--seed", "4"]
    before = _hash_tree(out)
    _one_line_error(capsys, [*_classify(star, d, out, "--continue"), *extra], "run_checkpoint",
                    *needles, inputs=d)
    assert _hash_tree(out) == before


def test_continue_with_same_inputs_resumes_and_clears_leftovers(interrupted, reference):
    d, star, out = interrupted
    (out / ".tmp-999999-0123abcd-run_class001.mrc").write_bytes(b"half written")
    (out / ".tmp-999999-0123abcd-staged").mkdir()
    assert cli([str(a) for a in _classify(star, d, out, "--continue")]) == 0
    assert json.loads((out / "run.json").read_text())["resumed_from_iteration"] == 2
    np.testing.assert_array_equal(np.load(out / "run_posteriors.npy"), reference)
    assert not [n for n in os.listdir(out) if n.startswith(".")]


# ----- front ends and the last line of defence -------------------------------------------------
def test_relion_job_on_a_locked_folder_fails_with_one_line(data, monkeypatch, capsys):
    d, star = data
    monkeypatch.chdir(d)
    job = d / "External" / "job009"
    job.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from hetclass.io.lock "
                               "import acquire; l = acquire(sys.argv[1]); print('held', "
                               "flush=True); time.sleep(120)", str(job)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = relion_main(["--o", "External/job009/", "--in_parts", "particles.star",
                            "--classes", "2", "--max_iter", "2"], abort_grace_s=None)
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another hetclass run" in err[0], err
    assert (job / "RELION_JOB_EXIT_FAILURE").exists()


def test_relion_job_with_a_duplicated_column_fails_with_one_line(data, monkeypatch, capsys):
    d, star = data
    monkeypatch.chdir(d)
    star.write_text(star.read_text().replace("_rlnAngleTilt #", "_rlnAngleRot #", 1))
    code = relion_main(["--o", "External/job010/", "--in_parts", "particles.star",
                        "--classes", "2"], abort_grace_s=None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "_rlnAngleRot" in err[0] and "twice" in err[0], err
    assert (d / "External" / "job010" / "RELION_JOB_EXIT_FAILURE").exists()
    assert not (d / "External" / "job010" / "run_data.star").exists()


def test_non_finite_posteriors_stop_before_outputs(tiny_dataset, tmp_path):
    """The last guard: should the EM ever produce NaN, nothing is written and the particle is
    named (checked on a real EM state with one posterior made NaN)."""
    from hetclass.errors import InputError
    from hetclass.pipeline import ClassifyOptions, run_classify
    from hetclass.validate import check_em_values
    particles = load_particles(tiny_dataset.star_path, project_dir=tiny_dataset.out_dir)
    result = run_classify(particles, ClassifyOptions(classes=2, max_iter=2, target_res_A=25),
                          str(tmp_path / "out"))
    state = result.em.state
    check_em_values(state, particles)                     # a real state is finite
    state.posteriors[6, 1] = np.nan
    with pytest.raises(InputError) as e:
        check_em_values(state, particles, rows=np.arange(len(particles)))
    line = e.value.one_line()
    assert "particle 7" in line and str(particles.image_names[6]) in line
    assert "no outputs were written" in line


@pytest.mark.parametrize("label,value", [("classes", "$(touch pwned)"), ("seed", "`touch pwned`"),
                                         ("classes", "2;touch pwned"),
                                         ("target_res", "$(touch${IFS}pwned)")])
def test_relion_parameter_values_never_reach_a_shell(data, monkeypatch, capsys, label, value):
    """As if RELION's own shell had passed the text through unexpanded: a value is data."""
    d, star = data
    monkeypatch.chdir(d)
    code = relion_main(["--o", "External/job011/", "--in_parts", "particles.star",
                        f"--{label}", value], abort_grace_s=None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and label in err[0], err
    assert not list(d.rglob("pwned*"))
    assert (d / "External" / "job011" / "RELION_JOB_EXIT_FAILURE").exists()
