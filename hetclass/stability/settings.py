"""The options of ``stability`` and ``exhaustive``, defined once for every front end.

The command line (:mod:`hetclass_standalone.stability_cmd`), the RELION External job
(:mod:`hetclass_relion.options`) and the Scipion protocol read names, defaults and help texts
from :data:`OPTIONS`, so the three always agree.

``name`` is the Python/RELION name (``null_sets``), ``flag`` the command-line flag
(``--null-sets``); ``default`` is what the library uses when the option is not given;
``shown`` how the default is written in help texts and the README tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

from .null import NULL_SETS


@dataclass(frozen=True)
class Option:
    name: str
    flag: str
    default: Union[int, float, str, None]
    help: str
    commands: tuple = ("stability", "exhaustive")
    metavar: Optional[str] = None

    @property
    def shown(self) -> str:
        return "all" if self.default is None else str(self.default)

    def help_text(self) -> str:
        """The help with its default, as argparse and RELION show it."""
        return f"{self.help} (default {self.shown})"


OPTIONS: Dict[str, Option] = {o.name: o for o in (
    Option("replicates", "--replicates", 5, "independent classifications per K (per node in "
           "exhaustive)", metavar="R"),
    Option("subsample", "--subsample", None, "each replicate classifies a random fraction F "
           "of the particles (clusterboot-style)", metavar="F"),
    Option("null_sets", "--null-sets", NULL_SETS, "simulated one-state data sets classified "
           "like the replicates: the null that every test's p-value comes from (0: no null, "
           "fixed thresholds only)", metavar="N"),
    Option("core_stability", "--core-stability", 0.8, "a particle is in its class's stable "
           "core when at least this fraction of replicates agree with its consensus class",
           commands=("stability",), metavar="F"),
    Option("min_class_size", "--min-class-size", "auto", "smallest accepted child class; auto: "
           "the particles a map needs to resolve the children's difference, from the data",
           commands=("exhaustive",), metavar="N|auto"),
    Option("max_depth", "--max-depth", 3, "deepest level of splitting",
           commands=("exhaustive",), metavar="D"),
    Option("k_scan", "--k-scan", "2-3", "K values tried at each node, smallest first, until one "
           "is reproducible and distinct; must include 2", commands=("exhaustive",),
           metavar="K|KMIN-KMAX"),
)}


def parse_min_class_size(value) -> Optional[int]:
    """``"auto"`` (or None) -> None (derived from the data); a positive integer otherwise."""
    from ..errors import InputError
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise InputError("expected a number of particles or auto", field="--min-class-size",
                         value=value) from None
    if n < 1:
        raise InputError("must be >= 1, or auto", field="--min-class-size", value=value)
    return n
