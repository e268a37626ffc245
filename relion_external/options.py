"""RELION's External-job command line -> a validated :class:`JobConfig`.

RELION launches, from the project directory::

    hetclass_relion --o External/job004/ --in_parts Select/job003/particles.star
        [--in_3dref ref.mrc] [--in_mask mask.mrc] [--<label> <value>] ... --j 4
        [other args] [--pipeline_control External/job004/]

Each "Param label / value" pair of the job becomes ``--label value``; an empty value gives a
bare ``--label`` (= yes for switches, the default for other parameters). Nothing is
quoted, so a value with spaces arrives as several words. Unknown options (and the unused inputs ``--in_movies``, ``--in_mics``,
``--in_coords``) are ignored with a warning, never an error: RELION may add its own.

Example::

    opts, notes = parse_argv(["--o", "External/job004/", "--in_parts", "p.star", "--classes", "3"])
    config, more_notes = build_config(opts)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from hetclass.errors import InputError
from hetclass.stability.settings import OPTIONS as _STAB

MODES = ("classify", "stability", "exhaustive")

# hetclass parameters a user sets as "Param label / value" pairs: name -> (kind, help)
PARAMETERS: Dict[str, Tuple[str, str]] = {
    "mode": ("choice", "classify | stability | exhaustive (default classify)"),
    "classes": ("krange", "number of classes K (default 4); stability also takes a range "
                          "such as 1-5 to scan"),
    "replicates": ("int", "stability, exhaustive: " + _STAB["replicates"].help_text()),
    "target_res": ("float", "target resolution in A: images are Fourier-cropped to it "
                            "(default: chosen from the data)"),
    "max_iter": ("int", "maximum EM iterations (default 25)"),
    "starts": ("int", "short exploration starts from random references; the best by held-out "
                      "evidence is refined (default 3)"),
    "seed": ("int", "random seed; the same seed gives the same result (default 0)"),
    "hard": ("bool", "hard (winner-takes-all) instead of soft assignments"),
    "mask_is_focus": ("bool", "use --in_mask as a focus mask (classify on the masked region) "
                              "instead of a solvent mask"),
    "gpu": ("device", "use a GPU: bare flag or yes = the first visible GPU, numbers (0 or 0,1) = "
                      "those GPUs as in RELION, no = CPU, auto = GPU if available"),
    "tau2_fudge": ("float", "regularisation T as in RELION (default 4)"),
    "particle_diameter": ("float", "particle diameter in A for the circular mask "
                                   "(default: from the box)"),
    "convergence": ("float0", "stop when fewer than this % of particles change class "
                              "(default 0.5)"),
    "max_memory": ("float", "memory budget in GB for cached images (default: automatic)"),
    "subsample": ("fraction", "stability, exhaustive: " + _STAB["subsample"].help_text()),
    "null_sets": ("int0", "stability, exhaustive: " + _STAB["null_sets"].help_text()),
    "core_stability": ("fraction", "stability: " + _STAB["core_stability"].help_text()),
    "min_class_size": ("size", "exhaustive: " + _STAB["min_class_size"].help_text()),
    "max_depth": ("int", "exhaustive: " + _STAB["max_depth"].help_text()),
    "k_scan": ("krange", "exhaustive: " + _STAB["k_scan"].help_text()),
    "mpi_ranks": ("int", "run under MPI with this many processes (particles split across them; "
                         "one GPU each with gpu; replicates on rank groups); default 1"),
    "mpi_launcher": ("words", "MPI launch command, {n} = mpi_ranks (default: srun -n {n} inside "
                              "a SLURM allocation, else mpirun -n {n}; or set "
                              "HETCLASS_MPI_LAUNCHER); write launcher options with one dash"),
}

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

_TRUE = {"", "yes", "y", "true", "t", "1", "on"}
_FALSE = {"no", "n", "false", "f", "0", "off"}


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
    starts: Optional[int] = None
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


def _int(name: str, words: List[str], minimum: int) -> Optional[int]:
    text = _one_word(name, words, required=True)
    try:
        value = int(text)
    except ValueError:
        raise InputError("expected an integer", field=f"--{name}", value=text) from None
    if value < minimum:
        raise InputError(f"must be at least {minimum}", field=f"--{name}", value=text)
    return value


def _float(name: str, words: List[str], positive: bool = True) -> Optional[float]:
    text = _one_word(name, words, required=True)
    try:
        value = float(text)
    except ValueError:
        raise InputError("expected a number", field=f"--{name}", value=text) from None
    if not value == value or value in (float("inf"), float("-inf")) or (positive and value <= 0):
        raise InputError("expected a positive finite number", field=f"--{name}", value=text)
    return value


def _krange(name: str, words: List[str]) -> List[int]:
    """``K`` or ``KMIN-KMAX`` (1 <= KMIN <= KMAX) -> the list of K values."""
    text = _one_word(name, words, required=True)
    lo, sep, hi = text.partition("-")
    try:
        values = list(range(int(lo), int(hi) + 1)) if sep else [int(text)]
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise InputError("expected K or KMIN-KMAX, e.g. 3 or 1-5", field=f"--{name}", value=text)
    return values


def _bool(name: str, words: List[str]) -> bool:
    text = " ".join(words).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError("expected yes or no (or the bare flag)", field=f"--{name}",
                     value=" ".join(words))


def _device(words: List[str]) -> Tuple[str, Optional[str]]:
    """``--gpu`` words -> (device, gpu_ids)."""
    text = " ".join(words).strip().lower()
    ids = [i for i in text.replace(":", ",").replace(" ", ",").split(",") if i]
    if ids and all(i.isdigit() for i in ids):  # as in RELION: "0" is GPU 0, not "no"
        return "gpu", ",".join(ids)
    if text in _TRUE or text in ("gpu", "cuda"):
        return "gpu", None
    if text in _FALSE or text == "cpu":
        return "cpu", None
    if text == "auto":
        return "auto", None
    raise InputError("expected yes, no, auto or GPU numbers such as 0 or 0,1",
                     field="--gpu", value=" ".join(words))


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
        cfg.threads = _int("j", opts["j"], 1)

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
    """Set one parameter. An empty value means "yes" for switches, "default" otherwise."""
    if not words and PARAMETERS[name][0] not in ("bool", "device"):
        return
    if name == "mode":
        text = (_one_word(raw, words, required=True) or "").lower()
        if text not in MODES:
            raise InputError(f"expected one of {', '.join(MODES)}", field=f"--{raw}", value=text)
        cfg.mode = text
    elif name == "classes":
        cfg.k_values = _krange(raw, words)
        cfg.classes = max(cfg.k_values)
    elif name == "k_scan":
        cfg.k_scan = _krange(raw, words)
        if 2 not in cfg.k_scan:
            raise InputError("must include 2", field=f"--{raw}", value=" ".join(words))
    elif name in ("subsample", "core_stability"):
        value = _float(raw, words)
        if value > 1:
            raise InputError("expected a fraction in (0, 1]", field=f"--{raw}",
                             value=" ".join(words))
        setattr(cfg, name, value)
    elif name == "min_class_size":
        from hetclass.stability.settings import parse_min_class_size
        try:
            cfg.min_class_size = parse_min_class_size(_one_word(raw, words, required=True))
        except InputError as exc:
            raise InputError(exc.message, field=f"--{raw}", value=" ".join(words)) from None
    elif name == "max_depth":
        cfg.max_depth = _int(raw, words, 1)
    elif name == "null_sets":
        cfg.null_sets = _int(raw, words, 0)
    elif name == "replicates":
        cfg.replicates = _int(raw, words, 1)
    elif name == "max_iter":
        cfg.max_iter = _int(raw, words, 1)
    elif name == "starts":
        cfg.starts = _int(raw, words, 1)
    elif name == "mpi_ranks":
        cfg.mpi_ranks = _int(raw, words, 1)
    elif name == "mpi_launcher":
        cfg.mpi_launcher = " ".join(words)
    elif name == "seed":
        cfg.seed = _int(raw, words, -(2 ** 63))
    elif name == "target_res":
        cfg.target_res_A = _float(raw, words)
    elif name == "tau2_fudge":
        cfg.tau2_fudge = _float(raw, words)
    elif name == "particle_diameter":
        cfg.particle_diameter_A = _float(raw, words)
    elif name == "convergence":
        cfg.convergence_pct = _float(raw, words, positive=False)
        if cfg.convergence_pct < 0:
            raise InputError("must not be negative", field=f"--{raw}", value=" ".join(words))
    elif name == "max_memory":
        cfg.max_memory_GB = _float(raw, words)
    elif name == "hard":
        cfg.hard = _bool(raw, words)
    elif name == "mask_is_focus":
        cfg.mask_is_focus = _bool(raw, words)
    elif name == "gpu":
        cfg.device, cfg.gpu_ids = _device(words)
    else:  # pragma: no cover - PARAMETERS and _apply out of sync
        raise AssertionError(name)


def check_inputs_exist(cfg: JobConfig) -> None:
    """InputError naming the option when an input file is missing (before heavy work)."""
    for option, path in [("--in_parts", cfg.in_parts), ("--in_mask", cfg.mask)] + [
            ("--in_3dref", p) for p in cfg.references]:
        if path is not None and not os.path.isfile(path):
            raise InputError("file not found (paths are relative to the RELION project directory "
                             f"{os.getcwd()})", file=path, field=option)


def classify_options(cfg: JobConfig):
    """:class:`hetclass.pipeline.ClassifyOptions` for a job (unset fields keep the defaults)."""
    from hetclass.pipeline import ClassifyOptions

    values = dict(references=tuple(cfg.references), init="ref" if cfg.references else "random",
                  hard=cfg.hard, threads=cfg.threads)
    if cfg.mask is not None:
        values["focus_mask" if cfg.mask_is_focus else "solvent_mask"] = cfg.mask
    optional = dict(classes=cfg.classes, target_res_A=cfg.target_res_A, max_iter=cfg.max_iter,
                    n_init=cfg.starts,
                    seed=cfg.seed, tau2_fudge=cfg.tau2_fudge, device=cfg.device,
                    particle_diameter_A=cfg.particle_diameter_A,
                    convergence_pct=cfg.convergence_pct, max_memory_GB=cfg.max_memory_GB)
    values.update({k: v for k, v in optional.items() if v is not None})
    return ClassifyOptions(**values)
