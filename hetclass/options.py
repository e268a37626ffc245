"""Every option of classify, stability and exhaustive, defined once.

One :class:`Option` per option: its name (the Python name, also the key of ``run.json``'s
``options``), kind, unit, default, bounds or choices, help, command-line flag and RELION
parameter label. The front ends derive from :data:`OPTIONS`: the ``hetclass`` parsers
(:mod:`hetclass_standalone`), the RELION parameter table, its ``--help`` and the re-launch
argv under MPI (:mod:`hetclass_relion`), the Scipion protocols' defaults, help texts and
argv, and :class:`ClassifyOptions` itself. Adding an option is one entry here (plus the
Scipion form, written by hand).

Values are checked here, with one-line messages that name the option and quote the value
(:class:`hetclass.errors.InputError`, exit code 2 at the front ends).

>>> options = options_from_mapping({"classes": "3", "seed": 7})
>>> options_to_argv(options)[:4]
['--classes', '3', '--max-iter', '25']
>>> options_to_argv(options, "stability", classes=[2, 3, 4], replicates=6)[-4:]
['--classes', '2-4', '--replicates', '6']
>>> parse_k_range("2-4")
[2, 3, 4]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import InputError

KINDS = ("int", "float", "bool", "choice", "text", "path", "paths", "krange", "size")
CLASSIFY = ("classify", "stability", "exhaustive")   # commands that classify
REPLICATES = ("stability", "exhaustive")
_TRUE = {"", "yes", "y", "true", "t", "1", "on"}
_FALSE = {"no", "n", "false", "f", "0", "off"}


@dataclass(frozen=True)
class Option:
    """One option. ``kind`` one of :data:`KINDS`; ``low``/``high`` the accepted range
    (``low_open``: the value must exceed ``low``); ``includes`` K values a ``krange`` must
    contain; ``flag``/``aliases`` the ``hetclass`` flags (None: not on the command line);
    ``relion`` the External job's parameter label (None: not a job parameter);
    ``shown`` the default in words where it is not a plain value (a callable when the
    words come from the code that chooses the default); ``commands`` where it applies."""

    name: str
    kind: str
    default: Any
    help: str
    unit: str = ""
    low: Optional[float] = None
    low_open: bool = False
    high: Optional[float] = None
    choices: Tuple[str, ...] = ()
    includes: Tuple[int, ...] = ()
    flag: Optional[str] = None
    aliases: Tuple[str, ...] = ()
    metavar: Optional[str] = None
    relion: Optional[str] = None
    relion_help: Optional[str] = None
    shown: Union[str, Callable[[], str], None] = None
    commands: Tuple[str, ...] = CLASSIFY
    derived: bool = False      # not given: derived from other options (the CLI default is None)

    @property
    def dest(self) -> str:
        """The argparse attribute of ``flag``."""
        return (self.flag or "--" + self.name).lstrip("-").replace("-", "_")

    @property
    def label(self) -> str:
        """How messages name the option: its flag."""
        return self.flag or f"--{self.name}"

    def default_text(self) -> str:
        """The default in words, as the help texts and READMEs write it."""
        if callable(self.shown):
            return self.shown()
        if self.shown is not None:
            return self.shown
        if self.default is None or self.default == ():
            return "none"
        return format_value(self, self.default)

    def help_text(self) -> str:
        """The help with its default (argparse, ``hetclass_relion --help``, Scipion)."""
        return f"{self.help} (default {self.default_text()})"

    def cli_default(self) -> Any:
        """The argparse default: the value, or its words for kinds parsed after argparse."""
        if self.derived:
            return None
        if self.kind in ("krange", "size"):      # parsed after argparse, from their words
            return format_value(self, self.default)
        return list(self.default) if self.kind == "paths" else self.default

    def parse(self, value: Any, label: Optional[str] = None) -> Any:
        """``value`` (text or a typed value) checked and converted to the option's type;
        None stays None. InputError naming ``label`` (default the flag) and the value."""
        if value is None:
            return None
        return _PARSERS[self.kind](self, value, label or self.label)


def format_value(option: Option, value: Any) -> str:
    """``value`` as a command-line word (a K list as ``KMIN-KMAX``, ``None`` size as auto)."""
    if option.kind == "krange" or isinstance(value, (list, tuple)):     # K values
        ks = [int(k) for k in value]
        if ks != list(range(ks[0], ks[-1] + 1)):
            raise InputError("K values must be consecutive", field=option.label, value=value)
        return f"{ks[0]}-{ks[-1]}" if len(ks) > 1 else str(ks[0])
    if option.kind == "size" and value is None:
        return "auto"
    if option.kind == "bool":
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


def _bounds(option: Option, number: float, label: str, text: Any) -> None:
    low, high = option.low, option.high
    if (low, option.low_open, high) == (0, True, 1) and not 0 < number <= 1:
        raise InputError("expected a fraction in (0, 1]", field=label, value=text)
    if low is not None and (number <= low if option.low_open else number < low):
        word = "greater than" if option.low_open else "at least"
        raise InputError(f"must be {word} {low:g}" + (f" and at most {high:g}" if high is not
                         None else ""), field=label, value=text)
    if high is not None and number > high:
        raise InputError(f"must be at most {high:g}", field=label, value=text)


def _int(option: Option, value: Any, label: str) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise InputError("expected an integer", field=label, value=value)
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise InputError("expected an integer", field=label, value=value) from None
    _bounds(option, number, label, value)
    return number


def _float(option: Option, value: Any, label: str) -> float:
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise InputError("expected a number", field=label, value=value) from None
    if not math.isfinite(number):
        raise InputError("expected a finite number", field=label, value=value)
    _bounds(option, number, label, value)
    return number


def yes_no(value: Any, label: str) -> bool:
    """``yes``/``no`` (``true``, ``on``, ``1``, an empty value = yes, ...) -> bool."""
    return _bool(None, value, label)


def _bool(option: Optional[Option], value: Any, label: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError("expected yes or no", field=label, value=value)


def _choice(option: Option, value: Any, label: str) -> str:
    text = str(value).strip().lower()
    if text not in option.choices:
        raise InputError(f"expected one of {', '.join(option.choices)}", field=label,
                         value=value)
    return text


def _text(option: Option, value: Any, label: str) -> str:
    return str(value)


def _paths(option: Option, value: Any, label: str) -> Tuple[str, ...]:
    return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)


def _krange(option: Option, value: Any, label: str) -> List[int]:
    ks = parse_k_range(value, field=label)
    missing = [k for k in option.includes if k not in ks]
    if missing:
        raise InputError(f"must include {' and '.join(map(str, missing))}", field=label,
                         value=value)
    return ks


def _size(option: Option, value: Any, label: str) -> Optional[int]:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        return _int(option, value, label)
    except InputError:
        raise InputError("expected a number of particles >= 1, or auto", field=label,
                         value=value) from None


_PARSERS: Dict[str, Callable[[Option, Any, str], Any]] = {
    "int": _int, "float": _float, "bool": _bool, "choice": _choice, "text": _text,
    "path": _text, "paths": _paths, "krange": _krange, "size": _size}


def parse_k_range(text: Union[str, int, Sequence[int]], field: str = "--classes") -> List[int]:
    """``"4"`` -> [4]; ``"2-5"`` -> [2, 3, 4, 5]; a list of K stays a sorted list.
    InputError naming ``field`` and the value otherwise (``1 <= KMIN <= KMAX``)."""
    values: List[int] = []
    if isinstance(text, bool):
        values = []
    elif isinstance(text, int) or (hasattr(text, "__index__") and not isinstance(text, str)):
        values = [int(text)]
    elif isinstance(text, str):
        lo, sep, hi = text.strip().partition("-")
        try:
            values = list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            values = []
    else:
        values = sorted({int(v) for v in text})
    if not values or min(values) < 1:
        raise InputError("expected K or KMIN-KMAX with 1 <= KMIN <= KMAX, e.g. 4 or 2-6",
                         field=field, value=text)
    return values


def parse_min_class_size(value: Any) -> Optional[int]:
    """``"auto"`` (or None) -> None (derived from the data); a positive integer otherwise."""
    return OPTIONS["min_class_size"].parse(value)


def _default_target_text() -> str:
    """The default of ``--target-res`` in words, read from the code that chooses it
    (:func:`hetclass.preprocess.default_target_res_A`): ``2x Nyquist, not finer than 8 A``."""
    from .preprocess import default_target_res_A
    coarse_px = 1000.0                 # large pixels: the Nyquist multiple shows
    nyquist_multiple = default_target_res_A(64, coarse_px) / (2 * coarse_px)
    floor_A = default_target_res_A(64, 1e-6)   # tiny pixels: the floor shows
    return f"{nyquist_multiple:g}x Nyquist, not finer than {floor_A:g} A"


def _default_diameter_text() -> str:
    from .masks import DEFAULT_DIAMETER_FRACTION
    return f"{DEFAULT_DIAMETER_FRACTION:.0%} of the box"


NULL_SETS = 4      # null data sets per stability run (hetclass.stability.null)

# ----- the table ------------------------------------------------------------------------
# classification (the fields of ClassifyOptions, in this order)
_CLASSIFY_OPTIONS = (
    Option("classes", "int", 4, "number of classes K", low=1, flag="--classes",
           aliases=("-K",), metavar="K", relion="classes", commands=("classify", "stability"),
           relion_help="number of classes K; stability also takes a range such as 1-5 to scan"),
    Option("target_res_A", "float", None, "resolution limit in A: images are Fourier-cropped "
           "to it", unit="A", low=0, low_open=True, flag="--target-res", metavar="A",
           relion="target_res", shown=_default_target_text),
    Option("max_iter", "int", 25, "maximum EM iterations", low=1, flag="--max-iter",
           relion="max_iter"),
    Option("n_init", "int", 3, "short exploration starts from random references; the one "
           "with the best held-out evidence is refined (1 with K --ref maps)", low=1,
           flag="--starts", metavar="N", relion="starts",
           relion_help="short exploration starts from random references; the best by "
           "held-out evidence is refined (1 with K input references)"),
    Option("convergence_pct", "float", 0.5, "stop when fewer than this % of particles change "
           "class", unit="%", low=0, flag="--convergence", metavar="PCT", relion="convergence"),
    Option("tau2_fudge", "float", 4.0, "regularisation parameter T, RELION's tau2_fudge",
           low=0, low_open=True, flag="--tau2-fudge", aliases=("-T",), relion="tau2_fudge"),
    Option("hard", "bool", False, "hard (winner-takes-all) assignment instead of soft "
           "posteriors", flag="--hard", relion="hard", shown="off"),
    Option("seed", "int", 0, "random seed: the same inputs and seed give the same result",
           low=0, flag="--seed", relion="seed"),
    Option("init", "choice", "random", "random: K reconstructions from random subsets; ref: "
           "from --ref maps", choices=("random", "ref"), flag="--init",
           shown="ref with --ref maps, else random", derived=True),
    Option("init_lowpass_A", "float", 30.0, "low-pass of the initial references in A",
           unit="A", low=0, low_open=True, flag="--init-lowpass", metavar="A"),
    Option("references", "paths", (), "reference map(s): one (K perturbed copies) or K maps; "
           "repeatable", flag="--ref", metavar="MAP"),
    Option("particle_diameter_A", "float", None, "diameter in A of the maps' soft spherical "
           "mask (the images are windowed at the box edge)",
           unit="A", low=0, low_open=True, flag="--particle-diameter", metavar="A",
           relion="particle_diameter", shown=_default_diameter_text),
    Option("solvent_mask", "path", None, "solvent mask for the maps", flag="--solvent-mask",
           metavar="MRC"),
    Option("focus_mask", "path", None, "classes may differ only inside this mask (focused "
           "classification)", flag="--focus-mask", metavar="MRC"),
    Option("device", "choice", "cpu", "where the EM runs: cpu, gpu or auto (a GPU if CuPy "
           "finds one)", choices=("cpu", "gpu", "auto"), flag="--device", relion="gpu",
           relion_help="use a GPU: bare flag or yes = the first visible GPU, numbers (0 or "
           "0,1) = those GPUs as in RELION, no = CPU, auto = GPU if available"),
    Option("threads", "int", 1, "CPU threads", low=1, flag="--threads", aliases=("-j",)),
    Option("batch_size", "int", None, "particles per E-step batch", low=1,
           flag="--batch-size", shown="from the memory bound"),
    Option("max_memory_GB", "float", None, "bound on this process's host memory (per MPI "
           "rank): sets batch sizes, operator caching and whether the data stay in RAM or "
           "stream from the cache on disk (--cache, else a temporary one); too small a bound "
           "is an error that states the minimum", unit="GB", low=0, low_open=True,
           flag="--max-memory", metavar="GB", relion="max_memory", shown="no bound",
           relion_help="bound on host memory in GB (per MPI rank): sets batch sizes and "
           "whether the data stay in RAM or stream from a temporary cache on disk"),
    Option("cache_dir", "path", None, "cropped Fourier cache: written once by preprocessing, "
           "reused without reading any image by later runs and replicates with the same "
           "inputs", flag="--cache", metavar="DIR"),
)

# replicate runs: stability and exhaustive
_REPLICATE_OPTIONS = (
    Option("replicates", "int", 5, "independent classifications per K (per node in "
           "exhaustive)", low=2, flag="--replicates", aliases=("-R",), metavar="R",
           relion="replicates", commands=REPLICATES),
    Option("subsample", "float", None, "each replicate classifies a random fraction F of the "
           "particles (clusterboot-style)", low=0, low_open=True, high=1,
           flag="--subsample", metavar="F", relion="subsample", shown="all",
           commands=REPLICATES),
    Option("null_sets", "int", NULL_SETS, "simulated one-state data sets classified like the "
           "replicates: the null that every test's p-value comes from (0: no null, fixed "
           "thresholds only)", low=0, flag="--null-sets", metavar="N", relion="null_sets",
           commands=REPLICATES),
    Option("jobs", "int", None, "classifications run at the same time", low=1, flag="--jobs",
           metavar="N", shown="one per core", commands=REPLICATES),
    Option("core_stability", "float", 0.8, "a particle is in its class's stable core when at "
           "least this fraction of replicates agree with its consensus class", low=0,
           low_open=True, high=1, flag="--core-stability", metavar="F",
           relion="core_stability", commands=("stability",)),
    Option("min_class_size", "size", None, "smallest accepted child class; auto: the "
           "particles a map needs to resolve the children's difference, from the data", low=1,
           flag="--min-class-size", metavar="N|auto", relion="min_class_size", shown="auto",
           commands=("exhaustive",)),
    Option("max_depth", "int", 3, "deepest level of splitting", low=1, flag="--max-depth",
           metavar="D", relion="max_depth", commands=("exhaustive",)),
    Option("k_scan", "krange", [2, 3], "K values tried at each node, smallest first, until "
           "one is reproducible and distinct; must include 2", includes=(2,), flag="--k-scan",
           metavar="K|KMIN-KMAX", relion="k_scan", commands=("exhaustive",)),
)

OPTIONS: Dict[str, Option] = {o.name: o for o in _CLASSIFY_OPTIONS + _REPLICATE_OPTIONS}
CLASSIFY_NAMES = tuple(o.name for o in _CLASSIFY_OPTIONS)
REPLICATE_NAMES = tuple(o.name for o in _REPLICATE_OPTIONS)


def _default(name: str) -> Any:
    value = OPTIONS[name].default
    return field(default_factory=lambda: type(value)(value)) if isinstance(
        value, (list, dict)) else field(default=value)


@dataclass
class ClassifyOptions:
    """Parameters of one classification; defaults, units and bounds in :data:`OPTIONS`."""

    classes: int = _default("classes")
    target_res_A: Optional[float] = _default("target_res_A")   # None: chosen from the data
    max_iter: int = _default("max_iter")
    n_init: int = _default("n_init")                # exploration starts (hetclass.explore)
    convergence_pct: float = _default("convergence_pct")
    tau2_fudge: float = _default("tau2_fudge")      # RELION's T
    hard: bool = _default("hard")
    seed: int = _default("seed")
    init: str = _default("init")                    # "random" | "ref"
    init_lowpass_A: float = _default("init_lowpass_A")
    references: Sequence[str] = _default("references")   # MRC paths: one map or K maps
    particle_diameter_A: Optional[float] = _default("particle_diameter_A")
    solvent_mask: Optional[str] = _default("solvent_mask")
    focus_mask: Optional[str] = _default("focus_mask")
    device: str = _default("device")                # "cpu" | "gpu" | "auto"
    threads: int = _default("threads")
    batch_size: Optional[int] = _default("batch_size")
    max_memory_GB: Optional[float] = _default("max_memory_GB")
    cache_dir: Optional[str] = _default("cache_dir")


def check_options(options: ClassifyOptions) -> None:
    """InputError (naming the flag and the value) for the first value out of bounds."""
    for name in CLASSIFY_NAMES:
        OPTIONS[name].parse(getattr(options, name))
    if options.init == "ref" and not options.references:
        raise InputError("--init ref needs at least one --ref map", field="--init",
                         value=options.init)


def options_from_mapping(values: Mapping[str, Any],
                         labels: Optional[Mapping[str, str]] = None) -> ClassifyOptions:
    """A checked :class:`ClassifyOptions` from ``{name: value}`` (text or typed; missing
    or None: the default). ``init`` missing: ``ref`` when there are references. Messages
    name ``labels[name]`` (default the option's flag). Unknown names are a KeyError."""
    unknown = set(values) - set(CLASSIFY_NAMES)
    if unknown:
        raise KeyError(f"not options of a classification: {', '.join(sorted(unknown))}")
    labels = labels or {}
    kept = {}
    for name, value in values.items():
        parsed = OPTIONS[name].parse(value, labels.get(name))
        if parsed is not None:
            kept[name] = parsed
    if "init" not in kept:
        kept["init"] = "ref" if kept.get("references") else "random"
    options = ClassifyOptions(**kept)
    check_options(options)
    return options


def options_record(options: ClassifyOptions) -> Dict[str, Any]:
    """``{name: value}`` of every option, JSON-ready (``run.json``'s ``options``);
    :func:`options_from_mapping` reads it back."""
    record = asdict(options)
    record["references"] = list(record["references"])
    return record


def options_to_argv(options: Optional[ClassifyOptions] = None, command: str = "classify",
                    **extra: Any) -> List[str]:
    """``hetclass <command>`` arguments for ``options`` and ``extra`` (replicate options
    by name, e.g. ``replicates=5``; ``classes`` a K list for stability), every option of
    ``command`` that has a value, in :data:`OPTIONS` order. The ``hetclass`` parser reads
    them back to the same values (:mod:`hetclass_standalone.classify_cmd`)."""
    values = {} if options is None else asdict(options)
    if command != "classify":
        values.pop("classes", None)      # the replicate commands take K from ``extra``
    values.update(extra)
    argv: List[str] = []
    for name, value in values.items():
        option = OPTIONS[name]
        if option.flag is None or (command not in option.commands and name not in extra):
            raise KeyError(f"{name} is not an option of hetclass {command}")
        if option.kind == "bool":
            argv += [option.flag] if value else []
        elif option.kind == "paths":
            for path in value:
                argv += [option.flag, str(path)]
        elif value is not None or option.kind == "size":
            argv += [option.flag, format_value(option, value)]
    return argv

