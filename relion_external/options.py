"""RELION's External-job command line -> a validated :class:`JobConfig`.

RELION launches, from the project directory::

    hetclass_relion --o External/job004/ --in_parts Select/job003/particles.star
        [--in_3dref ref.mrc] [--in_mask mask.mrc] [--<label> <value>] ... --j 4
        [other args] [--pipeline_control External/job004/]

Each "Param label / value" pair of the job becomes ``--label value``; an empty value gives a
bare ``--label`` (= yes for switches, the default for other parameters). Nothing is
quoted, so a value with spaces arrives as several words. Unknown options (and the unused
inputs ``--in_movies``, ``--in_mics``, ``--in_coords``) are ignored with a warning, never an
error: RELION may add its own.

Example::

    opts, notes = parse_argv(["--o", "External/job004/", "--in_parts", "p.star", "--classes", "3"])
    config, more_notes = build_config(opts)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hetclass.errors import InputError
from hetclass.options import (
    CLASSIFY_NAMES,
    OPTIONS,
    ClassifyOptions,
    Option,
    options_from_mapping,
    parse_k_range,
    yes_no,
)

MODES = ("classify", "stability", "exhaustive")

# parameters of the External job itself (the rest come from hetclass.options.OPTIONS)
JOB_OPTIONS: Dict[str, Option] = {o.name: o for o in (
    Option("mode", "choice", "classify", "classify | stability | exhaustive", choices=MODES,
           relion="mode", commands=MODES),
    Option("mask_is_focus", "bool", False, "use --in_mask as a focus mask (classify on the "
           "masked region) instead of a solvent mask", relion="mask_is_focus", shown="no",
           commands=MODES),
    Option("mpi_ranks", "int", 1, "run under MPI with this many processes (particles split "
           "across them; one GPU each with gpu; replicates on rank groups)", low=1,
           relion="mpi_ranks", commands=MODES),
    Option("mpi_launcher", "text", None, "MPI launch command, {n} = mpi_ranks; write launcher "
           "options with one dash", relion="mpi_launcher", commands=MODES,
           shown="srun -n {n} inside a SLURM allocation, else mpirun -n {n}; or set "
           "HETCLASS_MPI_LAUNCHER"),
)}

# the job's "Param label"s in the order --help and the README list them
_LABELS = ("mode", "classes", "replicates", "target_res", "max_iter", "starts", "seed", "hard",
           "mask_is_focus", "gpu", "tau2_fudge", "particle_diameter", "convergence",
           "max_memory", "subsample", "null_sets", "core_stability", "min_class_size",
           "max_depth", "k_scan", "mpi_ranks", "mpi_launcher")
_BY_LABEL = {o.relion: o for o in list(OPTIONS.values()) + list(JOB_OPTIONS.values())
             if o.relion}
# hetclass parameters a user sets as "Param label / value" pairs: label -> option
PARAMETERS: Dict[str, Option] = {label: _BY_LABEL[label] for label in _LABELS}
# how a label's words are read where it differs from the option's kind
# (classes: K, or a range to scan for mode stability; gpu: yes/no/auto or GPU numbers)
RELION_KINDS = {"classes": "k_values", "gpu": "device", "mpi_launcher": "words"}


def parameter_help(label: str) -> str:
    """The help of a job parameter with its default (``--help``, the README table)."""
    option = PARAMETERS[label]
    where = "" if "classify" in option.commands else ", ".join(option.commands) + ": "
    return f"{where}{option.relion_help or option.help} (default {option.default_text()})"


# accepted spellings -> canonical parameter name (labels are compared lower-case, '-' = '_')
ALIASES = {
    "k": "classes", "n_classes": "classes", "nr_classes": "classes", "k_classes": "classes",
    "n_replicates": "replicates", "nr_replicates": "replicates",
    "target_res_a": "target_res", "target_resolution": "target_res",
    "iter": "max_iter", "n_iter": "max_iter", "random_seed": "seed",
    "tau_fudge": "tau2_fudge", "particle_diameter_a": "particle_diameter",
    "focus": "mask_is_focus", "device": "gpu",
    "mpi": "mpi_ranks", "np": "mpi_ranks", "nr_mpi": "mpi_ranks", "ranks": "mpi_ranks",
    "launcher": "mpi_launcher", "null_splits": "null_sets",
}

# RELION's own arguments that we read
RELION_ARGS = ("o", "in_parts", "in_3dref", "in_mask", "j", "pipeline_control")
# RELION inputs a classification does not use (accepted, warned about)
UNUSED_INPUTS = ("in_movies", "in_mics", "in_coords")


@dataclass
class JobConfig:
    """Everything the executable needs, validated. Paths are as given (project-relative)."""

    job_dir: str
    in_parts: str
    references: List[str] = field(default_factory=list)
    mask: Optional[str] = None
    threads: int = 1
    mode: str = "classify"
    classes: Optional[int] = None         # K for classify; max of k_values otherwise
    k_values: Optional[List[int]] = None  # K (or the scanned range) as given
    replicates: Optional[int] = None
    target_res_A: Optional[float] = None
    max_iter: Optional[int] = None
    n_init: Optional[int] = None
    seed: Optional[int] = None
    hard: bool = False
    mask_is_focus: bool = False
    device: Optional[str] = None          # None: the engine's default (cpu)
    gpu_ids: Optional[str] = None         # e.g. "1" or "0,1": restrict CUDA_VISIBLE_DEVICES
    tau2_fudge: Optional[float] = None
    particle_diameter_A: Optional[float] = None
    convergence_pct: Optional[float] = None
    max_memory_GB: Optional[float] = None
    subsample: Optional[float] = None
    core_stability: Optional[float] = None
    min_class_size: Optional[int] = None   # None: auto (derived from the data)
    max_depth: Optional[int] = None
    k_scan: Optional[List[int]] = None
    null_sets: Optional[int] = None
    mpi_ranks: Optional[int] = None       # > 1: re-launch under MPI (relion_external.mpi_launch)
    mpi_launcher: Optional[str] = None    # e.g. "mpirun -n {n}"


def canonical(label: str) -> str:
    """Canonical option name of a label (lower case, '-' -> '_', aliases resolved)."""
    key = label.strip().lower().replace("-", "_")
    return ALIASES.get(key, key)


def parse_argv(argv: Sequence[str]) -> Tuple[Dict[str, List[str]], List[str]]:
    """Split RELION's argv into ``{option: [words]}`` (``[]`` for a bare flag).

    A token starting with ``--`` starts an option (``--key=value`` is accepted too); the
    words up to the next option are its value. Negative numbers (``-1``) are values. Returns
    the options and notes (words outside any option, repeated options: the last one wins).
    """
    opts: Dict[str, List[str]] = {}
    notes: List[str] = []
    current: Optional[str] = None
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            current = name
            if current in opts:
                notes.append(f"option --{current} given twice; using the last value")
            opts[current] = [value] if eq else []
        elif current is None:
            notes.append(f"ignoring stray argument {token!r}")
        else:
            opts[current].append(token)
    return opts, notes


def _one_word(name: str, words: List[str], required: bool = False) -> Optional[str]:
    if not words:
        if required:
            raise InputError("a value is required", field=f"--{name}", value="")
        return None
    if len(words) > 1:
        raise InputError("expected one value, got several words (RELION does not quote values)",
                         field=f"--{name}", value=" ".join(words))
    return words[0]


def _device(words: List[str], label: str = "--gpu") -> Tuple[str, Optional[str]]:
    """``--gpu`` words -> (device, gpu_ids)."""
    text = " ".join(words).strip().lower()
    ids = [i for i in text.replace(":", ",").replace(" ", ",").split(",") if i]
    if ids and all(i.isdigit() for i in ids):  # as in RELION: "0" is GPU 0, not "no"
        return "gpu", ",".join(ids)
    named = {"gpu": "gpu", "cuda": "gpu", "cpu": "cpu", "auto": "auto"}
    if text in named:
        return named[text], None
    try:
        return ("gpu" if yes_no(text, label) else "cpu"), None
    except InputError:
        raise InputError("expected yes, no, auto or GPU numbers such as 0 or 0,1",
                         field=label, value=" ".join(words)) from None


def build_config(opts: Dict[str, List[str]]) -> Tuple[JobConfig, List[str]]:
    """Validate parsed options; returns the config and warnings about ignored options.

    Raises :class:`InputError` (naming the option and the value) for bad values or a
    missing ``--in_parts``.
    """
    notes: List[str] = []
    job_dir = _one_word("o", opts.get("o", []), required=True)
    in_parts = _one_word("in_parts", opts.get("in_parts", []))
    if in_parts is None:
        raise InputError("no input particles: fill in 'Input particles' (--in_parts) in the job",
                         field="--in_parts", value="")
    cfg = JobConfig(job_dir=job_dir, in_parts=in_parts)
    cfg.references = list(opts.get("in_3dref", []))
    cfg.mask = _one_word("in_mask", opts.get("in_mask", []))
    if "j" in opts:
        cfg.threads = OPTIONS["threads"].parse(_one_word("j", opts["j"], required=True), "--j")

    seen: Dict[str, str] = {}
    for raw, words in opts.items():
        if raw in RELION_ARGS:
            continue
        if raw in UNUSED_INPUTS:
            notes.append(f"--{raw} {' '.join(words)} is not used by hetclass; ignored")
            continue
        name = canonical(raw)
        if name not in PARAMETERS:
            shown = f"--{raw} {' '.join(words)}".strip()
            notes.append(f"unknown option {shown!r} ignored (known: {', '.join(PARAMETERS)})")
            continue
        if name in seen:
            notes.append(f"--{raw} repeats --{seen[name]}; using --{raw}")
        seen[name] = raw
        _apply(cfg, name, raw, words)
    if cfg.k_values is not None and len(cfg.k_values) > 1 and cfg.mode != "stability":
        raise InputError("a range of K is only for mode stability; give one number",
                         field=f"--{seen['classes']}", value=" ".join(opts[seen["classes"]]))
    if cfg.mode == "stability" and cfg.k_values is None:
        raise InputError("mode stability needs classes: K (e.g. 3) or a range to scan "
                         "(e.g. 1-5)", field="--classes", value="")
    if cfg.mode == "exhaustive" and cfg.k_values is not None:
        notes.append("classes is not used by mode exhaustive (it splits into 2 at each node; "
                     "see k_scan)")
    return cfg, notes


def _apply(cfg: JobConfig, name: str, raw: str, words: List[str]) -> None:
    """Set one parameter from its words, read as its kind says (:data:`RELION_KINDS`, else
    the option's own). An empty value means "yes" for switches, "default" otherwise."""
    option, label = PARAMETERS[name], f"--{raw}"
    kind = RELION_KINDS.get(name, option.kind)
    if not words and kind not in ("bool", "device"):
        return
    if kind == "device":
        cfg.device, cfg.gpu_ids = _device(words, label)
    elif kind == "words":
        setattr(cfg, option.name, " ".join(words))
    elif kind == "bool":
        setattr(cfg, option.name, option.parse(" ".join(words), label))
    elif kind == "k_values":
        cfg.k_values = parse_k_range(_one_word(raw, words, required=True), field=label)
        cfg.classes = max(cfg.k_values)
    else:
        setattr(cfg, option.name, option.parse(_one_word(raw, words, required=True), label))


def check_inputs_exist(cfg: JobConfig) -> None:
    """InputError naming the option when an input file is missing (before heavy work)."""
    for option, path in [("--in_parts", cfg.in_parts), ("--in_mask", cfg.mask)] + [
            ("--in_3dref", p) for p in cfg.references]:
        if path is not None and not os.path.isfile(path):
            raise InputError("file not found (paths are relative to the RELION project directory "
                             f"{os.getcwd()})", file=path, field=option)


def classify_options(cfg: JobConfig) -> ClassifyOptions:
    """:class:`hetclass.options.ClassifyOptions` for a job (unset fields keep the defaults)."""
    values: Dict[str, Any] = {name: getattr(cfg, name) for name in CLASSIFY_NAMES
                              if getattr(cfg, name, None) is not None}
    values["references"] = tuple(cfg.references)
    if cfg.mask is not None:
        values["focus_mask" if cfg.mask_is_focus else "solvent_mask"] = cfg.mask
    return options_from_mapping(values)


def replicate_values(cfg: JobConfig) -> Dict[str, Any]:
    """The options of stability / exhaustive for a job: as set, else the defaults of
    :data:`hetclass.options.OPTIONS` (``jobs``: the job's threads)."""
    names = ("replicates", "subsample", "null_sets", "core_stability", "min_class_size",
             "max_depth", "k_scan")
    values = {name: OPTIONS[name].default if getattr(cfg, name) is None else getattr(cfg, name)
              for name in names if name != "min_class_size"}
    values["min_class_size"] = cfg.min_class_size          # None: auto, from the data
    values["jobs"] = cfg.threads
    return values
