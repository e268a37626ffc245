"""STAR text (issue 13): everything legal round-trips, everything else is one line naming the line.

Property-based (hypothesis, derandomised so CI is reproducible): any text value is either
written and read back exactly, or refused as unwritable for the stated reason (a control
character, or both quote characters each followed by a space); any table of text, integer and
float columns and any label/value block read back equal to what was written. Then the cases
a fault run found: quoted values with spaces (also read back by RELION's own
``relion_star_handler`` where RELION is installed), duplicated columns, empty particle
blocks, Latin-1 / UTF-16 / binary files.
"""

import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetclass.errors import InputError
from hetclass.io.star import read_star, write_particles_star
from hetclass.io.star_text import (
    UnwritableValue,
    check_text_values,
    format_star,
    parse_star,
    read_star_file,
    star_token,
)

SETTINGS = settings(derandomize=True, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow])

# pieces that stress the quoting rules, mixed with arbitrary text (no surrogates)
PIECES = st.sampled_from([" ", "\t", '"', "'", "#", "_", "data_", "loop_", "@", ";", "$",
                          "é", "\u00a0", "a", "1", ".", "-", "e5", "\n", "\x1f", ""])
TEXT = st.lists(st.one_of(PIECES, st.text(st.characters(blacklist_categories=("Cs",)),
                                          max_size=4)), max_size=6).map("".join)


def _unwritable_reason(value: str):
    """An independent statement of what no STAR quoting can carry."""
    if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
        return "control"
    if re.search(r'"[ \t]', value) and re.search(r"'[ \t]", value):
        return "quotes"
    return None


def _one_cell(value: str) -> str:
    return format_star({"t": pd.DataFrame({"rlnText": [value], "rlnN": [1]})})


@SETTINGS
@given(TEXT)
def test_any_text_value_round_trips_or_is_refused_for_its_reason(value):
    reason = _unwritable_reason(value)
    if reason is not None:
        with pytest.raises(UnwritableValue, match="control" if reason == "control" else "quote"):
            star_token(value)
        with pytest.raises(InputError) as e:
            check_text_values(["ok", value], "x.star", "rlnText")
        assert "row 2" in e.value.one_line() and "\n" not in e.value.one_line()
        return
    back = parse_star(_one_cell(value), "x.star", ["rlnText"])["t"]
    assert back["rlnText"].tolist() == [value]
    assert back["rlnN"].tolist() == [1]


COLUMN = st.tuples(st.sampled_from(["text", "int", "float"]), st.integers(0, 2 ** 31))


def _writable(value: str) -> bool:
    return _unwritable_reason(value) is None


@st.composite
def tables(draw):
    n = draw(st.integers(0, 5))
    kinds = draw(st.lists(st.sampled_from(["text", "int", "float"]), min_size=1, max_size=5))
    cols = {}
    for i, kind in enumerate(kinds):
        name = f"rlnCol{i}{kind}"
        if kind == "text":
            cols[name] = draw(st.lists(TEXT.filter(_writable), min_size=n, max_size=n))
        elif kind == "int":
            cols[name] = draw(st.lists(st.integers(-2 ** 62, 2 ** 62), min_size=n, max_size=n))
        else:
            cols[name] = draw(st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=n,
                                       max_size=n))
    return pd.DataFrame({k: pd.Series(v, dtype=object if k.endswith("text") else
                                      ("int64" if k.endswith("int") else "float64"))
                         for k, v in cols.items()})


def _as_written(x: float) -> float:
    a = abs(x)
    return float(("%.6f" if a == 0 or 1e-3 <= a < 1e9 else "%.6e") % x)


@SETTINGS
@given(tables(), st.dictionaries(st.sampled_from(["rlnA", "rlnB", "rlnC"]),
                                 st.one_of(TEXT.filter(_writable), st.integers(-10 ** 9, 10 ** 9),
                                           st.floats(-1e6, 1e6, allow_nan=False)), max_size=3))
def test_tables_and_pairs_round_trip(table, pairs):
    text_cols = [c for c in table.columns if c.endswith("text")]
    text_pairs = [k for k, v in pairs.items() if isinstance(v, str)]
    blocks = {"general": pairs, "particles": table} if pairs else {"particles": table}
    back = parse_star(format_star(blocks), "x.star", text_cols + text_pairs)
    got = back["particles"]
    assert list(got.columns) == list(table.columns) and len(got) == len(table)
    for c in table.columns:
        want = table[c].tolist()
        if c.endswith("float"):
            want = [_as_written(x) for x in want]
        assert [type(w)(v) for w, v in zip(want, got[c].tolist())] == want, c
    if pairs:
        for k, v in pairs.items():
            expect = _as_written(v) if isinstance(v, float) else v
            assert back["general"][k] == expect, k


# ----- the cases of the fault run ------------------------------------------------------------
QUOTED = '''
data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 "optics one" 300 2.7 0.1 3.0 16 2

data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnAngleRot #3
_rlnAngleTilt #4
_rlnAnglePsi #5
_rlnDefocusU #6
_rlnDefocusV #7
_rlnDefocusAngle #8
_rlnOpticsGroup #9
_rlnGroupName #10
"000001@sp dir/stack.mrcs" "my mic 1.mrc" 10 20 30 10000 9000 5 1 'it"s x'
000002@stack.mrcs mic"2.mrc 11 21 31 10000 9000 5 1 ""
000003@stack.mrcs 'a b' 12 22 32 10000 9000 5 1 "x' y"
'''


def test_quoted_values_read_and_written_back(tmp_path):
    (tmp_path / "q.star").write_text(QUOTED)
    p = read_star(tmp_path / "q.star", project_dir=tmp_path)
    assert p.image_names.tolist() == ["000001@sp dir/stack.mrcs", "000002@stack.mrcs",
                                      "000003@stack.mrcs"]
    assert p.micrograph_names.tolist() == ["my mic 1.mrc", 'mic"2.mrc', "a b"]
    assert p.optics.names.tolist() == ["optics one"]
    write_particles_star(tmp_path / "out.star", p, {"rlnClassNumber": np.array([1, 2, 1])})
    lines = (tmp_path / "out.star").read_text().splitlines()
    assert any(line.startswith('"000001@sp dir/stack.mrcs" "my mic 1.mrc" ') for line in lines)
    back = read_star(tmp_path / "out.star", project_dir=tmp_path)
    assert back.image_names.tolist() == p.image_names.tolist()
    assert back.micrograph_names.tolist() == p.micrograph_names.tolist()
    table = back.source["particles"]
    assert table["rlnGroupName"].tolist() == ['it"s x', "", "x' y"]
    assert table["rlnClassNumber"].tolist() == [1, 2, 1]


def test_relion_reads_our_quoted_values(tmp_path):
    exe = shutil.which("relion_star_handler")
    if exe is None:
        pytest.skip("relion_star_handler (RELION 3.1) is not installed")
    (tmp_path / "q.star").write_text(QUOTED)
    write_particles_star(tmp_path / "ours.star", read_star(tmp_path / "q.star",
                                                           project_dir=tmp_path))
    res = subprocess.run([exe, "--i", "ours.star", "--o", "relion.star"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    relion = read_star(tmp_path / "relion.star", project_dir=tmp_path)
    assert relion.image_names.tolist()[0] == "000001@sp dir/stack.mrcs"
    assert relion.micrograph_names.tolist() == ["my mic 1.mrc", 'mic"2.mrc', "a b"]
    assert relion.source["particles"]["rlnGroupName"].tolist() == ['it"s x', "", "x' y"]


@pytest.mark.parametrize("column", ["rlnMicrographName", "rlnAngleRot", "rlnImageName"])
def test_duplicated_column_refused_naming_it(tmp_path, column):
    text = QUOTED.replace(f"_{column} #", f"_{column} #0\n_{column} #", 1)
    rows = []
    for line in text.split("\n"):
        if line.startswith(('"000001', "000002", "000003")):
            line = line + " 7"          # keep the row length equal to the columns
        rows.append(line)
    (tmp_path / "d.star").write_text("\n".join(rows))
    with pytest.raises(InputError) as e:
        read_star(tmp_path / "d.star", project_dir=tmp_path)
    line = e.value.one_line()
    assert f"field _{column}" in line and "twice" in line and "d.star" in line


@pytest.mark.parametrize("tail", ["", "loop_\n", "loop_\n_rlnImageName #1\n_rlnAngleRot #2\n",
                                  "loop_\n_rlnImageName #1\n\ndata_more\n\n_rlnX 1\n"])
def test_empty_particle_block_is_one_line(tmp_path, tail):
    head = QUOTED[:QUOTED.index("data_particles")]
    (tmp_path / "e.star").write_text(head + "data_particles\n\n" + tail)
    with pytest.raises(InputError) as e:
        read_star(tmp_path / "e.star", project_dir=tmp_path)
    assert "data_particles" in e.value.one_line() and "e.star" in e.value.one_line()


@pytest.mark.parametrize("encoding,needle", [("latin-1", "UTF-8"), ("utf-16", "UTF-16"),
                                             ("utf-16-le", "UTF-16"), ("binary", "binary")])
def test_other_encodings_are_one_line_errors(tmp_path, encoding, needle):
    text = QUOTED.replace("my mic 1.mrc", "mic é.mrc")
    raw = (bytes(range(256)) * 4 if encoding == "binary" else text.encode(encoding))
    (tmp_path / "x.star").write_bytes(raw)
    with pytest.raises(InputError) as e:
        read_star(tmp_path / "x.star", project_dir=tmp_path)
    assert needle in e.value.one_line() and "\n" not in e.value.one_line()


def test_utf8_bom_and_crlf_are_read(tmp_path):
    (tmp_path / "w.star").write_bytes(b"\xef\xbb\xbf" + QUOTED.replace("\n", "\r\n").encode())
    p = read_star(tmp_path / "w.star", project_dir=tmp_path)
    assert p.micrograph_names.tolist() == ["my mic 1.mrc", 'mic"2.mrc', "a b"]


@pytest.mark.parametrize("bad,needle", [
    ('000002@stack.mrcs mic2.mrc 11 21 31 10000 9000 5 1', "9 values"),
    ('000002@stack.mrcs "mic2.mrc 11 21 31 10000 9000 5 1 x', "unterminated quote"),
    ("000002@stack.mrcs mic2.mrc 11 21 31 10000 9000 5 1 x\x07", "control character")])
def test_malformed_rows_name_their_line(tmp_path, bad, needle):
    lines = QUOTED.split("\n")
    row = next(i for i, line in enumerate(lines) if line.startswith("000002"))
    lines[row] = bad
    (tmp_path / "m.star").write_text("\n".join(lines))
    with pytest.raises(InputError) as e:
        read_star_file(str(tmp_path / "m.star"))
    assert needle in e.value.one_line() and f"line {row + 1}" in e.value.one_line()


def test_load_time_check_names_an_unwritable_cs_path(tmp_path):
    from hetclass.io.star import check_writable
    (tmp_path / "q.star").write_text(QUOTED)
    p = read_star(tmp_path / "q.star", project_dir=tmp_path)
    check_writable(p)                                  # everything read from STAR is writable
    names = p.image_names.copy()
    names[1] = "000002@line\nbreak.mrcs"
    from dataclasses import replace
    with pytest.raises(InputError) as e:
        check_writable(replace(p, image_names=names))
    assert "rlnImageName" in e.value.one_line() and "particle 2" in e.value.one_line()
    assert os.path.basename(str(tmp_path / "q.star")) in e.value.one_line()
