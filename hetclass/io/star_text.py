"""STAR text as RELION writes and reads it: parsing into tables, quoting, formatting.

Reading (:func:`read_star_file`, :func:`parse_star`):

* the file must be UTF-8 (or ASCII) text: UTF-16, Latin-1 bytes that are not UTF-8, NUL
  bytes and other control characters are refused with the line they are on;
* ``data_NAME`` starts a block; a block holds one ``loop_`` (labels ``_rlnX``, anything
  after the label on its line such as ``#1`` ignored, then one row per line) or
  ``_label value`` pairs; a block with neither is an empty table;
* values are separated by spaces or tabs; a value may be quoted with ``"`` or ``'`` (it then
  ends at the same quote followed by a space, a tab or the line's end, so ``"it"s"`` is
  ``it"s``); lines whose first character is ``#`` are comments;
* a label twice in one block, a block name twice, a row with a wrong number of values or an
  unterminated quote are refused (:class:`~hetclass.errors.InputError` naming the line);
* columns whose every value is a number become int64 or float64 columns (each value exactly
  as Python's ``float`` reads it); others, and the ``string_columns``, stay text.

Writing (:func:`format_star`): RELION's layout (``# version 30001`` before each block,
``loop_`` with ``_label #i`` lines, one row per line). Text values are written bare when
they can be, else quoted (:func:`star_token`); floats with 6 decimals, or an exponent
outside [1e-3, 1e9) as RELION does. A text value that no quoting can carry (a line break or
control character; both quote characters each followed by a space) raises
:class:`UnwritableValue`; :func:`check_text_values` finds such values at load time.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from ..errors import InputError

VERSION_LINE = "# version 30001"
Block = Union[pd.DataFrame, Dict[str, object]]

# a quoted value ends at its quote followed by a space, a tab or the end of the line
_TOKEN = re.compile(r'"(.*?)"(?=[ \t]|$)|\'(.*?)\'(?=[ \t]|$)|([^ \t]+)')
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")         # in a value: all but tab
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # in a file: all but tab, newline
_BARE_UNSAFE = re.compile(r"[ \t]|^[\"'#_;$\[\]]|^(?:data|loop|save|global|stop)_",
                          re.IGNORECASE)
_ROW_SEP = "\x1f"   # joins tokens for the C parser; refused in values (a control character)
FIXED_RANGE = (1e-3, 1e9)   # RELION prints fixed-point numbers in this range, else exponents
# numbers read exactly as Python's float() reads them: pandas < 3 needs asking (its default
# parser can be off by one unit in the last place); pandas 3 does it by default
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


class UnwritableValue(ValueError):
    """A text value no STAR quoting can carry."""


# ----------------------------------------------------------------------------- decoding
def decode_star_bytes(raw: bytes, path: str) -> str:
    """``raw`` as text, or InputError naming the encoding problem and its line."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 3 and raw[1:2] == b"\0"
                                                      and raw[3:4] == b"\0"):
        raise InputError("the STAR file is UTF-16 text; save it as UTF-8 or ASCII (e.g. "
                         "iconv -f utf-16 -t utf-8)", file=path, field="encoding",
                         value="UTF-16")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise InputError("not a STAR file: binary data (a NUL byte)", file=path,
                         field=f"line {line}", value="\\x00")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"not UTF-8 text (Latin-1 or another encoding?): byte "
                         f"0x{raw[exc.start]:02x}; save the file as UTF-8 (e.g. iconv -f "
                         "latin1 -t utf-8)", file=path, field=f"line {line}",
                         value=raw[max(0, exc.start - 20):exc.start + 20].decode(
                             "utf-8", "replace")) from None
    text = text.replace("\r\n", "\n")
    bad = _CONTROL_IN_TEXT.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise InputError("not a STAR file: a control character in the text", file=path,
                         field=f"line {line}", value=bad.group())
    return text


# ----------------------------------------------------------------------------- parsing
def tokens(line: str, lineno: int, path: str) -> List[str]:
    """The values of one line (quotes removed); InputError for an unterminated quote."""
    out = []
    for m in _TOKEN.finditer(line):
        bare = m.group(3)
        if bare is None:
            out.append(m.group(1) if m.group(1) is not None else m.group(2))
        elif bare[0] in "\"'":
            raise InputError("unterminated quote (a quoted value must end with the same "
                             "quote followed by a space or the line's end)", file=path,
                             field=f"line {lineno}", value=bare)
        else:
            out.append(bare)
    return out


class _Loop:
    def __init__(self, block: str, first_line: int):
        self.block = block
        self.labels: List[str] = []
        self.label_lines: Dict[str, int] = {}
        self.rows: List[Tuple[int, str]] = []
        self.first_line = first_line


def _numeric_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _loop_frame(loop: _Loop, path: str, string_columns: Sequence[str]) -> pd.DataFrame:
    """The rows of a loop as a DataFrame (numbers parsed where a column holds only numbers)."""
    n_cols = len(loop.labels)
    if not loop.rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in loop.labels})
    lines = []
    for lineno, line in loop.rows:
        simple = line.isascii() and '"' not in line and "'" not in line
        values = line.split() if simple else tokens(line, lineno, path)
        if len(values) != n_cols:
            raise InputError(f"row has {len(values)} values for the {n_cols} columns of "
                             f"data_{loop.block}", file=path, field=f"line {lineno}",
                             value=line.strip()[:60])
        lines.append(_ROW_SEP.join(values))
    text_columns = {i: str for i, c in enumerate(loop.labels) if c in string_columns}
    df = pd.read_csv(io.StringIO("\n".join(lines) + "\n"), sep=_ROW_SEP, header=None,
                     names=list(range(n_cols)), dtype=text_columns, quoting=csv.QUOTE_NONE,
                     na_filter=False, engine="c", skip_blank_lines=False, **_EXACT_FLOATS)
    df.columns = loop.labels
    return df


def _add_pair(pairs: Dict[str, object], line: str, lineno: int, block: str, path: str,
              string_columns: Sequence[str]) -> Dict[str, object]:
    """``pairs`` with the ``_label value`` of ``line`` added (a trailing comment ignored)."""
    values = tokens(line, lineno, path)
    if len(values) > 2 and values[2].startswith("#"):
        values = values[:2]
    if len(values) != 2:
        raise InputError("a label/value line needs exactly one value", file=path,
                         field=f"line {lineno}", value=line[:60])
    label = values[0][1:]
    if label in pairs:
        raise InputError(f"label appears twice in data_{block} (line {lineno}); keep one",
                         file=path, field=f"_{label}")
    pairs[label] = values[1] if label in string_columns else _numeric_value(values[1])
    return pairs


def _close_block(blocks: Dict[str, Block], name: Optional[str], loop: Optional[_Loop],
                 pairs: Optional[Dict[str, object]], path: str, string_columns: Sequence[str]) -> None:
    """Store the block ``name`` just read in ``blocks``: its table, its label/value pairs, or
    an empty DataFrame."""
    if name is None:
        return
    if loop is not None:
        blocks[name] = _loop_frame(loop, path, string_columns)
    elif pairs:
        blocks[name] = pairs
    else:
        blocks[name] = pd.DataFrame()


def parse_star(text: str, path: str, string_columns: Sequence[str] = ()) -> Dict[str, Block]:
    """Blocks of STAR ``text``: name (without ``data_``) -> DataFrame (loops, empty blocks)
    or dict (label/value pairs). See the module docstring for the rules."""
    blocks: Dict[str, Block] = {}
    name: Optional[str] = None
    loop: Optional[_Loop] = None
    pairs: Optional[Dict[str, object]] = None

    def close():
        _close_block(blocks, name, loop, pairs, path, string_columns)

    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t")
        if not line or line[0] == "#":
            continue
        if line.startswith("data_"):
            close()
            name = line.split()[0][5:]
            if name in blocks:
                raise InputError(f"block data_{name} appears twice", file=path,
                                 field=f"line {lineno}", value=f"data_{name}")
            loop, pairs = None, None
        elif name is None:
            raise InputError("not a STAR file: text before the first data_ block", file=path,
                             field=f"line {lineno}", value=line[:60])
        elif line.startswith("loop_"):
            if loop is not None or pairs:
                raise InputError(f"data_{name} holds a second table; one loop_ per block",
                                 file=path, field=f"line {lineno}", value="loop_")
            loop = _Loop(name, lineno)
        elif line[0] == "_" and loop is not None and not loop.rows:
            label = line.split()[0][1:]
            if label in loop.label_lines:
                raise InputError(f"column appears twice in data_{name} (lines "
                                 f"{loop.label_lines[label]} and {lineno}); keep one",
                                 file=path, field=f"_{label}")
            loop.label_lines[label] = lineno
            loop.labels.append(label)
        elif line[0] == "_":
            if loop is not None:
                raise InputError(f"data_{name} mixes a loop_ table and label/value pairs",
                                 file=path, field=f"line {lineno}", value=line[:60])
            pairs = _add_pair({} if pairs is None else pairs, line, lineno, name, path,
                              string_columns)
        elif loop is not None and loop.labels:
            loop.rows.append((lineno, line))
        else:
            raise InputError(f"value outside a table or label in data_{name}", file=path,
                             field=f"line {lineno}", value=line[:60])
    close()
    return blocks


def read_star_file(path: str, string_columns: Sequence[str] = ()) -> Dict[str, Block]:
    """Read and parse a STAR file (see the module docstring); InputError for anything that
    is not a readable STAR file, naming the line."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", file=path) from None
    return parse_star(decode_star_bytes(raw, path), path, string_columns)


# ----------------------------------------------------------------------------- writing
def star_token(value: str) -> str:
    """``value`` as one STAR token: bare when it can be, else quoted (double quotes as
    RELION, single quotes when the value holds a double quote followed by a space).
    Raises :class:`UnwritableValue` when no quoting can carry it."""
    if value and not _BARE_UNSAFE.search(value):
        if _CONTROL.search(value):
            raise UnwritableValue("a line break or control character")
        return value
    if _CONTROL.search(value):
        raise UnwritableValue("a line break or control character")
    for q in '"\'':
        if not re.search(re.escape(q) + r"[ \t]", value):
            return f"{q}{value}{q}"
    raise UnwritableValue("both quote characters, each followed by a space")


def check_text_values(values: Iterable, file, field: str, what: str = "row") -> None:
    """InputError naming the first of ``values`` (text) that a STAR file cannot carry."""
    values = [v if isinstance(v, str) else str(v) for v in values]
    joined = " ".join(values)            # one search over everything first: the usual case
    if not _CONTROL.search(joined) and not (re.search(r'"[ \t]', joined)
                                            and re.search(r"'[ \t]", joined)):
        return
    for i, v in enumerate(values):
        try:
            star_token(v)
        except UnwritableValue as exc:
            raise InputError(f"this value cannot be written to a STAR file ({exc}; {what} "
                             f"{i + 1})", file=file, field=field, value=str(v)) from None


def _format_column(values: pd.Series) -> List[str]:
    kind = values.dtype.kind
    if kind in "iub" and values.isna().any():    # nullable ints: <NA> is nothing RELION reads
        raise UnwritableValue(f"a missing value in column {values.name} (row "
                              f"{int(np.flatnonzero(values.isna().to_numpy())[0]) + 1})")
    if kind == "b":
        return [str(int(v)) for v in values.tolist()]
    if kind in "iu":
        return [str(v) for v in values.tolist()]
    if kind == "f":
        v = values.to_numpy(dtype=np.float64, na_value=np.nan)
        a = np.abs(v)
        fixed = (a == 0) | ((a >= FIXED_RANGE[0]) & (a < FIXED_RANGE[1])) | ~np.isfinite(v)
        if fixed.all():
            return ["%.6f" % x for x in v.tolist()]
        return [("%.6f" if f else "%.6e") % x for x, f in zip(v.tolist(), fixed.tolist())]
    out = []
    for x in values.tolist():
        if isinstance(x, (float, np.floating)):
            out.append(format_value(float(x)))
        elif x is None or x is pd.NA:
            raise UnwritableValue(f"a missing value in column {values.name}")
        else:
            out.append(star_token(str(x)))
    return out


def format_value(value) -> str:
    """One label/value pair's value as RELION writes it."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        a = abs(value)
        fixed = a == 0 or FIXED_RANGE[0] <= a < FIXED_RANGE[1] or not np.isfinite(value)
        return ("%.6f" if fixed else "%.6e") % value
    return star_token(str(value))


def _loop_lines(df: pd.DataFrame) -> List[str]:
    if df.columns.duplicated().any():
        raise UnwritableValue(f"column {df.columns[df.columns.duplicated()][0]} twice")
    lines = ["loop_"] + [f"_{str(c).lstrip('_')} #{i + 1}" for i, c in enumerate(df.columns)]
    if len(df) and len(df.columns):
        columns = [_format_column(df[c]) for c in df.columns]
        lines += [" ".join(row) for row in zip(*columns)]
    return lines


def format_star(blocks: Mapping[str, Block], version_header: bool = True) -> str:
    """STAR text of ``blocks`` (name with or without ``data_`` -> DataFrame for a loop, dict
    for label/value pairs); see the module docstring. Raises :class:`UnwritableValue`."""
    out = [""]
    for name, block in blocks.items():
        name = str(name)
        name = name[5:] if name.startswith("data_") else name
        if version_header:
            out += [VERSION_LINE, ""]
        out += [f"data_{name}", ""]
        if isinstance(block, pd.DataFrame):
            out += _loop_lines(block.reset_index(drop=True))
        elif isinstance(block, Mapping):
            out += [f"{'_' + str(k).lstrip('_'):<40} {format_value(v)}" for k, v in block.items()]
            out.append("")
        else:
            raise TypeError(f"block {name}: expected a DataFrame or a dict, got {type(block)}")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n\n"
