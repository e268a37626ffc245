"""The one options model (issue 15): every front end's defaults are the model's, every
option survives the trip to a command line and back, and a bad value is one line naming
the option and the value.

The CLI defaults are read from the real ``hetclass`` parser, the RELION ones from
``hetclass_relion``'s own parsing of a job's argv, the Scipion ones from the protocols' form
(pyworkflow, in the Scipion venv: ``.ci/run`` runs this file there too).
"""

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest

from hetclass.errors import InputError
from hetclass.options import (
    CLASSIFY_NAMES,
    OPTIONS,
    REPLICATE_NAMES,
    ClassifyOptions,
    options_from_mapping,
    options_record,
    options_to_argv,
)
from hetclass_relion.mpi_launch import hetclass_args
from hetclass_relion.options import (
    PARAMETERS,
    build_config,
    classify_options,
    parameter_help,
    parse_argv,
    replicate_values,
)
from hetclass_standalone.arguments import options_from_args, values_from_args
from hetclass_standalone.main import build_parser
from hetclass_standalone.main import main as cli

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"classify": ["--classes", "4"], "stability": ["--classes", "4"],
            "exhaustive": [], "plan": []}
# every option of a classification set away from its default
CHANGED = ClassifyOptions(
    classes=3, target_res_A=12.5, max_iter=7, n_init=2, convergence_pct=0.25, tau2_fudge=2.5,
    hard=True, seed=11, init="ref", init_lowpass_A=20.0, references=("a.mrc", "b.mrc"),
    particle_diameter_A=150.0, solvent_mask="s.mrc", focus_mask="f.mrc", device="auto",
    threads=3, batch_size=64, max_memory_GB=1.5, cache_dir="cache")
CHANGED_REPLICATES = {
    "stability": dict(classes=[2, 3, 4], replicates=3, subsample=0.5, null_sets=2, jobs=2,
                      core_stability=0.7),
    "exhaustive": dict(replicates=3, subsample=0.5, null_sets=0, jobs=2, min_class_size=50,
                       max_depth=2, k_scan=[2, 3, 4])}


def _parse(command, argv):
    return build_parser().parse_args([command, "--particles", "p.star", "--out", "o", *argv]
                                     if command != "plan" else
                                     [command, "--particles", "p.star", *argv])


# ----- one definition -------------------------------------------------------------------------
def test_classify_options_is_the_model():
    assert tuple(f.name for f in dataclasses.fields(ClassifyOptions)) == CLASSIFY_NAMES
    assert dataclasses.asdict(ClassifyOptions()) == {
        name: OPTIONS[name].default for name in CLASSIFY_NAMES}
    changed = dataclasses.asdict(CHANGED)
    assert all(changed[n] != OPTIONS[n].default for n in CLASSIFY_NAMES), "CHANGED covers all"


@pytest.mark.parametrize("command", ["classify", "stability", "exhaustive", "plan"])
def test_cli_defaults_are_the_model(command):
    args = _parse(command, REQUIRED[command])
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = {f for a in sub.choices[command]._actions for f in a.option_strings}
    checked = 0
    for option in OPTIONS.values():
        applies = command in option.commands or (command == "plan" and option.name in (
            CLASSIFY_NAMES + ("replicates", "subsample", "jobs", "max_depth")))
        if option.flag is None or not applies:
            continue
        assert option.flag in flags and set(option.aliases) <= flags, (command, option.name)
        if option.name == "classes" and command != "plan":
            continue                                   # required
        value = getattr(args, option.dest)
        expected = None if option.derived else option.default
        assert option.parse(value) == expected, (command, option.name, value)
        checked += 1
    assert checked >= (18 if command == "classify" else 20)
    if command == "classify":
        assert options_from_args(args) == ClassifyOptions()


def test_relion_defaults_and_help_are_the_model():
    cfg, notes = build_config(parse_argv(["--o", "External/job001/", "--in_parts", "p.star"])[0])
    assert notes == [] and classify_options(cfg) == ClassifyOptions()
    assert replicate_values(cfg) == {**{n: OPTIONS[n].default for n in REPLICATE_NAMES},
                                     "jobs": 1}
    labelled = {o.relion: o for o in OPTIONS.values() if o.relion}
    assert set(labelled) <= set(PARAMETERS)
    for label, option in labelled.items():
        assert PARAMETERS[label] is option
        assert f"(default {option.default_text()})" in parameter_help(label)

@pytest.mark.parametrize("readme", ["relion_external/README_section.md", "README.md"])
def test_relion_readme_tables_quote_the_model_defaults(readme):
    text = (REPO / readme).read_text(encoding="utf-8")
    text = text[text.index("| Param label | Param value |"):]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*?) \|", text, re.M)}
    assert set(PARAMETERS) <= set(rows)
    for label, option in PARAMETERS.items():
        if option.default is not None and option.kind != "bool":
            words = option.default_text()
            assert f"(default {words})" in rows[label] or f"`{words}` (default)" in rows[label], \
                (label, rows[label], words)


def test_exhaustive_k_scan_is_the_same_through_every_front_end():
    cfg, _ = build_config(parse_argv(["--o", "J/", "--in_parts", "p.star", "--mode",
                                      "exhaustive"])[0])
    args = _parse("exhaustive", [])
    assert replicate_values(cfg)["k_scan"] == values_from_args(args, ["k_scan"])["k_scan"] \
        == OPTIONS["k_scan"].default == [2, 3]


# ----- round trips ----------------------------------------------------------------------------
def test_every_option_round_trips_through_the_command_line_and_run_json():
    args = _parse("classify", options_to_argv(CHANGED))
    assert options_from_args(args) == CHANGED
    assert options_from_mapping(json.loads(json.dumps(options_record(CHANGED)))) == CHANGED
    assert options_from_mapping({"references": ["r.mrc"]}).init == "ref"


@pytest.mark.parametrize("command", ["stability", "exhaustive"])
def test_replicate_options_round_trip(command):
    extra = CHANGED_REPLICATES[command]
    args = _parse(command, options_to_argv(CHANGED, command, **extra))
    values = values_from_args(args, [n for n in extra if n != "classes"])
    assert values == {n: v for n, v in extra.items() if n != "classes"}
    assert options_from_args(args, classes=max(extra.get("classes", [2]))) == \
        dataclasses.replace(CHANGED, classes=max(extra.get("classes", [2])))
    if command == "stability":
        assert args.classes == "2-4"


def test_relion_job_becomes_the_same_command_line():
    """A job with every parameter set: the argv of its MPI re-launch reads back, through the
    ``hetclass`` parser, to the job's own options."""
    job = ["--o", "External/job007/", "--in_parts", "p.star", "--in_3dref", "r.mrc",
           "--in_mask", "m.mrc", "--mask_is_focus", "--j", "3", "--mode", "exhaustive",
           "--target_res", "12", "--max_iter", "9", "--starts", "2", "--seed", "5", "--hard",
           "--gpu", "auto", "--tau2_fudge", "3", "--particle_diameter", "140",
           "--convergence", "0.2", "--max_memory", "2", "--replicates", "4",
           "--subsample", "0.9", "--null_sets", "1", "--min_class_size", "30",
           "--max_depth", "2", "--k_scan", "2-4", "--mpi_ranks", "2"]
    cfg, notes = build_config(parse_argv(job)[0])
    assert notes == []
    args = build_parser().parse_args(hetclass_args(cfg))
    assert options_from_args(args, classes=2) == dataclasses.replace(classify_options(cfg),
                                                                     classes=2)
    names = ("replicates", "subsample", "null_sets", "min_class_size", "max_depth", "k_scan",
             "jobs")
    assert values_from_args(args, names) == {n: replicate_values(cfg)[n] for n in names}
    assert (args.max_depth, args.k_scan, args.focus_mask) == (2, "2-4", "m.mrc")


# ----- bad values -----------------------------------------------------------------------------
BAD = [("classes", "0"), ("target_res_A", "-4"), ("max_iter", "0"), ("n_init", "1.5"),
       ("convergence_pct", "-1"), ("tau2_fudge", "0"), ("hard", "maybe"), ("seed", "-3"),
       ("init", "best"), ("init_lowpass_A", "nan"), ("particle_diameter_A", "abc"),
       ("device", "tpu"), ("threads", "0"), ("batch_size", "0"), ("max_memory_GB", "inf"),
       ("replicates", "1"), ("subsample", "1.5"), ("null_sets", "-1"), ("jobs", "0"),
       ("core_stability", "0"), ("min_class_size", "0"), ("max_depth", "0"),
       ("k_scan", "3-4"), ("k_scan", "4-2")]


@pytest.mark.parametrize("name,bad", BAD, ids=[f"{n}={b}" for n, b in BAD])
def test_a_bad_value_names_the_option_and_the_value(name, bad):
    with pytest.raises(InputError) as err:
        OPTIONS[name].parse(bad)
    line = err.value.one_line()
    assert OPTIONS[name].flag in line and repr(bad) in line and "\n" not in line


def test_the_command_line_reports_a_bad_value_in_one_line(tmp_path, capsys):
    rc = cli(["classify", "--particles", str(tmp_path / "p.star"), "--classes", "2",
              "--tau2-fudge", "-1", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--tau2-fudge" in err[0] and "'-1'" not in err[0] \
        and "-1" in err[0]
    assert not (tmp_path / "out").exists()


# ----- Scipion form (pyworkflow; the Scipion venv) --------------------------------------------
needs_pyworkflow = pytest.mark.skipif(
    importlib.util.find_spec("pyworkflow") is None or importlib.util.find_spec("pwem") is None,
    reason="pyworkflow/pwem not importable: run in the Scipion venv (bash ci/scipion_env.sh)")


@needs_pyworkflow
def test_scipion_form_defaults_are_the_model():
    from scipion_hetclass.protocols import common
    from scipion_hetclass.protocols.protocol_classify3d import HetClassProtClassify3D
    from scipion_hetclass.protocols.protocol_stability import HetClassProtStability

    classify, stability = HetClassProtClassify3D(), HetClassProtStability()
    checked = 0
    for prot in (classify, stability):
        for param, name in common.FORM_OPTIONS.items():
            if not hasattr(prot, param):
                continue
            option, value = OPTIONS[name], getattr(prot, param).get()
            expected = 0 if option.default is None else option.default
            assert value == expected, (type(prot).__name__, param, value, expected)
            checked += 1
    assert checked >= 20
    # the form's options, as a run builds them (threads: Scipion's parallel section)
    threads = int(classify.numberOfThreads.get())
    assert common.classify_options(classify, OPTIONS["classes"].default) == \
        ClassifyOptions(threads=threads)
    argv = common.cli_arguments("classify", CHANGED, "out", "p.star")
    assert argv[:3] == ["-m", "hetclass_standalone.main", "classify"]
    assert options_from_args(build_parser().parse_args(argv[2:])) == dataclasses.replace(
        CHANGED, references=CHANGED.references)


def test_the_module_example_runs():
    import doctest

    import hetclass.options
    result = doctest.testmod(hetclass.options)
    assert result.attempted >= 3 and result.failed == 0


def test_library_defaults_are_the_model():
    """The keyword defaults of the stability / exhaustive library functions (used when a
    caller omits them) are the model's too."""
    import inspect

    from hetclass.stability.analysis import stability_job
    from hetclass.stability.exhaustive import exhaustive_job
    keywords = {"n_replicates": "replicates", "subsample": "subsample", "null_sets": "null_sets",
                "core_min_stability": "core_stability", "min_class_size": "min_class_size",
                "max_depth": "max_depth", "k_scan": "k_scan", "workers": "jobs"}
    for function in (stability_job, exhaustive_job):
        for name, p in inspect.signature(function).parameters.items():
            if name in keywords:
                default = p.default if not isinstance(p.default, tuple) else list(p.default)
                assert default == OPTIONS[keywords[name]].default, (function.__name__, name)
