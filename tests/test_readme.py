"""The README agrees with the code (issue 14): every default quoted in its option tables is
the argparse default of that command (read from the parser, so changed defaults fail here
until the README follows), every option it lists exists, the default target resolution is
the one the code chooses (and ``--help`` says the same), ``--continue`` is promised only where
it exists, and the two README commands are the ones CI and users run."""

import os
import re

import pytest

from hetclass.preprocess import default_target_res_A
from hetclass_standalone.main import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def _option_rows():
    """``[(command, option, default cell)]`` from the tables under ``#### `hetclass CMD```."""
    rows, command = [], None
    with open(README, encoding="utf-8") as f:
        for line in f:
            heading = re.match(r"^#+ `hetclass (\w+)", line)
            if heading:
                command = heading.group(1)
            elif line.startswith("#"):
                command = None
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if command and line.startswith("| `--") and len(cells) >= 3:
                option = re.match(r"`(--[\w-]+)", cells[0]).group(1)
                rows.append((command, option, cells[1]))
    return rows


ROWS = _option_rows()


def test_the_readme_has_option_tables():
    commands = {c for c, _, _ in ROWS}
    assert {"classify", "stability", "exhaustive", "demo", "convert"} <= commands
    assert len(ROWS) >= 35


def _action(command, option):
    parser = _subparsers()[command]
    for action in parser._actions:
        if option in action.option_strings:
            return action
    raise AssertionError(f"README lists {option} for hetclass {command}, which has no such option")


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


@pytest.mark.parametrize("command,option,cell", ROWS, ids=[f"{c}{o}" for c, o, _ in ROWS])
def test_readme_default_is_the_parser_default(command, option, cell):
    action = _action(command, option)
    default = action.default
    cell = cell.strip("`")
    if cell == "required":
        assert action.required, option
    elif option == "--target-res":
        nyquist_multiple = default_target_res_A(64, 1000.0) / 2000.0
        floor_A = default_target_res_A(64, 1e-6)
        numbers = [float(x) for x in re.findall(r"[\d.]+", cell)]
        assert numbers == [nyquist_multiple, floor_A], cell
        assert default is None and f"not finer than {floor_A:g} A" in action.help
        assert f"{nyquist_multiple:g}x Nyquist" in action.help
    elif isinstance(default, bool):
        assert cell == ("on" if default else "off"), (option, cell)
    elif isinstance(default, (int, float)):
        assert _number(cell) == pytest.approx(default), (option, cell, default)
    elif isinstance(default, str):
        assert cell == default, (option, cell, default)
    else:      # None or an empty list: the README describes what happens, not a number
        assert default in (None, []) and _number(cell) is None, (option, cell, default)


def test_continue_only_where_it_exists():
    text = open(README, encoding="utf-8").read()
    have = {name for name, p in _subparsers().items()
            if any("--continue" in a.option_strings for a in p._actions)}
    assert "classify" in have
    for name in ("stability", "exhaustive", "demo", "convert"):
        if name not in have:
            section = re.split(r"\n#{2,4} ", text.split(f"#### `hetclass {name}", 1)[1], maxsplit=1)[0]
            assert "| `--continue`" not in section
            # its option sentence does not offer --continue either
            assert "--continue" not in section or "except `--continue`" in section, name


def test_the_two_commands():
    text = open(README, encoding="utf-8").read()
    assert 'pip install -e ".[test]" && hetclass demo --out hetclass_demo' in text
    assert "bash .ci/run" in text and os.path.exists(os.path.join(ROOT, ".ci", "run"))
    assert _subparsers()["demo"].get_default("out") == "hetclass_demo"
    with open(os.path.join(ROOT, ".gitignore"), encoding="utf-8") as f:
        assert "hetclass_demo/" in f.read()


def test_linked_docs_exist():
    text = open(README, encoding="utf-8").read()
    for link in re.findall(r"\]\(([^)#]+\.md)\)", text):
        assert os.path.exists(os.path.join(ROOT, link)), link
