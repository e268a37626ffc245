"""Command-line options from the one options model (:mod:`hetclass.options`).

``add_option(group, name)`` adds the flag, default, help and type that
:data:`hetclass.options.OPTIONS` gives ``name``; ``options_from_args`` and
``values_from_args`` read parsed arguments back through the model, which checks them (one
line naming the flag and the value, exit code 2).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Iterable

from hetclass.options import CLASSIFY_NAMES, OPTIONS, ClassifyOptions, options_from_mapping

from .mpi_run import add_mpi_option

_TYPES = {"int": int, "float": float}


def add_option(group, name: str, **overrides: Any) -> None:
    """One option of :data:`hetclass.options.OPTIONS` on ``group`` (``overrides`` replace
    argparse keywords, e.g. ``required=True``)."""
    option = OPTIONS[name]
    kwargs: Dict[str, Any] = {"default": option.cli_default(),
                              "help": option.help_text().replace("%", "%%")}
    if option.kind == "bool":
        kwargs["action"] = "store_true"
    elif option.kind == "choice":
        kwargs["choices"] = option.choices
    else:
        kwargs["metavar"] = option.metavar
        if option.kind == "paths":
            kwargs["action"] = "append"
        elif option.kind in _TYPES:
            kwargs["type"] = _TYPES[option.kind]
    kwargs.update(overrides)
    group.add_argument(option.flag, *option.aliases, **kwargs)


def add_classify_options(parser: argparse.ArgumentParser, classes_required: bool = True) -> None:
    """Options of one classification; shared by classify, stability, exhaustive and plan."""
    g = parser.add_argument_group("classification")
    h = parser.add_argument_group("compute")
    for name in CLASSIFY_NAMES:
        if name == "classes" and not classes_required:
            continue        # the replicate commands take K (or a K range) themselves
        group = h if name in ("device", "threads", "batch_size", "max_memory_GB",
                              "cache_dir") else g
        add_option(group, name, **({"required": True, "help": OPTIONS[name].help}
                                   if name == "classes" else {}))
    add_mpi_option(h)


def options_from_args(args, classes=None) -> ClassifyOptions:
    """The checked :class:`ClassifyOptions` of parsed arguments (``classes`` replaces
    ``--classes``: the replicate commands pass the largest K)."""
    values = {name: getattr(args, OPTIONS[name].dest) for name in CLASSIFY_NAMES
              if hasattr(args, OPTIONS[name].dest)}
    values["classes"] = classes if classes is not None else args.classes
    return options_from_mapping(values)


def values_from_args(args, names: Iterable[str]) -> Dict[str, Any]:
    """``{name: checked value}`` of the replicate options ``names`` (``"2-3"`` -> [2, 3],
    ``auto`` -> None, ...)."""
    return {name: OPTIONS[name].parse(getattr(args, OPTIONS[name].dest)) for name in names}
