"""What both hetclass protocols share: engine parameters, input conversion, validation.

The form is written by hand (pyworkflow Params), but its defaults, bounds and help texts
come from the one options model, :data:`hetclass.options.OPTIONS`; so do the options and
the ``hetclass`` command line of a run (:func:`classify_options`, :func:`cli_arguments`).
File names inside a run's ``extra/`` folder are defined here, once.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

import numpy as np
import pyworkflow.protocol.params as params
from pyworkflow.protocol.constants import GPU_LIST, USE_GPU

from hetclass.options import OPTIONS, options_from_mapping, options_to_argv

INPUT_STAR = "input_particles.star"       # the input as a RELION 3.1 STAR (absolute stack paths)
INPUT_IDS = "input_ids.npy"               # (n,) int64 Scipion ids, row order of INPUT_STAR


def define_input_params(form, with_references: bool = True) -> None:
    """Input section: particles (3D alignment + CTF), optional references and masks."""
    form.addSection(label="Input")
    form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                  important=True, label="Input particles",
                  help="Particles with a 3D (projection) alignment and CTF, e.g. from a "
                       "consensus refinement. Poses are kept fixed.")
    if with_references:
        form.addParam("referenceVolumes", params.PointerParam, allowsNull=True,
                      pointerClass="Volume,SetOfVolumes", label="Reference volume(s)",
                      help="Optional. One volume: K perturbed low-passed copies start the "
                           "classes. A set of K volumes: one per class. Empty: random start.")
    form.addParam("solventMask", params.PointerParam, pointerClass="VolumeMask",
                  allowsNull=True, label="Solvent mask",
                  help="Optional mask applied to the class maps (same box as the particles).")
    form.addParam("focusMask", params.PointerParam, pointerClass="VolumeMask",
                  allowsNull=True, label="Focus mask",
                  help="Optional: classify on this region only (same box as the particles).")
    form.addParam("particleDiameter", params.FloatParam,
                  expertLevel=params.LEVEL_ADVANCED, label="Particle diameter (A)",
                  **model_param("particle_diameter_A", zero_is_default=True))


# form parameter -> option of hetclass.options.OPTIONS (defaults, bounds, help from there)
FORM_OPTIONS = {"numberOfClasses": "classes", "targetResolution": "target_res_A",
                "maxIterations": "max_iter", "tau2Fudge": "tau2_fudge",
                "hardAssignment": "hard", "randomSeed": "seed", "initLowpass": "init_lowpass_A",
                "convergencePct": "convergence_pct", "particleDiameter": "particle_diameter_A",
                "replicates": "replicates", "coreStability": "core_stability",
                "nullSets": "null_sets", "subsample": "subsample",
                "minClassSize": "min_class_size", "maxDepth": "max_depth"}
# the form parameters that are options of one classification
CLASSIFY_FORM = ("classes", "target_res_A", "max_iter", "tau2_fudge", "hard", "seed",
                 "init_lowpass_A", "convergence_pct", "particle_diameter_A")


def model_param(name: str, zero_is_default: bool = False) -> dict:
    """``default``, ``help`` and (integers) ``validators`` of a form parameter from the
    option ``name``; ``zero_is_default``: the option's default is None, shown as 0."""
    option = OPTIONS[name]
    kwargs = {"default": 0 if zero_is_default else option.default,
              "help": (f"{option.help}; 0 = {option.default_text()}." if zero_is_default
                       else f"{option.help_text()}.")}
    if option.kind == "int" and option.low is not None and not zero_is_default:
        kwargs["validators"] = [params.GE(option.low)]
    return kwargs


def define_engine_params(form, with_classes: bool = True) -> None:
    """Classification parameters shared by both protocols, then GPU and threads."""
    form.addSection(label="Classification")
    if with_classes:
        form.addParam("numberOfClasses", params.IntParam, label="Number of classes (K)",
                      **model_param("classes"))
    form.addParam("targetResolution", params.FloatParam, label="Target resolution (A)",
                  **model_param("target_res_A", zero_is_default=True))
    form.addParam("maxIterations", params.IntParam, label="Maximum iterations",
                  **model_param("max_iter"))
    form.addParam("tau2Fudge", params.FloatParam, label="Regularisation T",
                  **model_param("tau2_fudge"))
    form.addParam("hardAssignment", params.BooleanParam, label="Hard assignment?",
                  **model_param("hard"))
    form.addParam("randomSeed", params.IntParam, label="Random seed", **model_param("seed"))
    form.addParam("initLowpass", params.FloatParam, expertLevel=params.LEVEL_ADVANCED,
                  label="Initial low-pass (A)", **model_param("init_lowpass_A"))
    form.addParam("convergencePct", params.FloatParam, expertLevel=params.LEVEL_ADVANCED,
                  label="Convergence (% changed)", **model_param("convergence_pct"))
    form.addHidden(USE_GPU, params.BooleanParam, default=False, label="Use GPU?",
                   help="Run the EM on a GPU with CuPy (pip install hetclass[gpu]).")
    form.addHidden(GPU_LIST, params.StringParam, default="0", label="GPU id",
                   help="hetclass uses one GPU: the first id of the list.")
    form.addParallelSection(threads=2, mpi=1)


def classify_options(prot, classes: int):
    """A checked :class:`hetclass.options.ClassifyOptions` from the protocol's form (0 in
    the target resolution and diameter: the model's default)."""
    def path_of(pointer):
        obj = pointer.get() if pointer is not None else None
        return None if obj is None else os.path.abspath(obj.getFileName())

    refs = ()
    ref_obj = prot.referenceVolumes.get() if hasattr(prot, "referenceVolumes") else None
    if ref_obj is not None:
        if hasattr(ref_obj, "iterItems"):
            refs = tuple(os.path.abspath(v.getFileName()) for v in ref_obj.iterItems(orderBy="id"))
        else:
            refs = (os.path.abspath(ref_obj.getFileName()),)
    use_gpu = bool(prot.getAttributeValue(USE_GPU, False))
    from scipion_hetclass import HETCLASS_CACHE_DIR
    values = {option: getattr(prot, param).get() for param, option in FORM_OPTIONS.items()
              if option in CLASSIFY_FORM and hasattr(prot, param)}
    values.update(
        classes=int(classes), references=refs,
        target_res_A=float(prot.targetResolution.get() or 0) or None,
        particle_diameter_A=float(prot.particleDiameter.get() or 0) or None,
        solvent_mask=path_of(prot.solventMask), focus_mask=path_of(prot.focusMask),
        device=os.environ.get("HETCLASS_DEVICE", "auto") if use_gpu else "cpu",
        threads=max(1, int(prot.numberOfThreads.get() or 1)),
        cache_dir=os.environ.get(HETCLASS_CACHE_DIR) or None)
    return options_from_mapping(values)


def select_gpu(prot) -> None:
    """Make the form's first GPU id the only visible device (hetclass uses one GPU per
    process); under MPI every listed GPU stays visible and each rank takes one by its local
    rank (:func:`hetclass.gpu.choose_device`)."""
    if prot.getAttributeValue(USE_GPU, False):
        gpus = prot.getGpuList()
        if gpus:
            chosen = gpus if mpi_ranks(prot) > 1 else gpus[:1]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in chosen)


def mpi_ranks(prot) -> int:
    """MPI processes asked for in the form's parallel section (1: no MPI)."""
    value = prot.numberOfMpi.get() if hasattr(prot, "numberOfMpi") else 1
    return max(1, int(value or 1))


def cli_arguments(command: str, options, out_dir: str, star: str, **extra) -> List[str]:
    """``python`` arguments running ``hetclass <command>`` with ``options`` (a
    :class:`hetclass.options.ClassifyOptions`) and ``extra`` (replicate options by name)
    on ``star`` into ``out_dir`` under MPI (:func:`hetclass.options.options_to_argv`)."""
    return (["-m", "hetclass_standalone.main", command, "--particles", os.path.abspath(star),
             "--project-dir", os.getcwd(), "--out", os.path.abspath(out_dir), "--mpi", "on"]
            + options_to_argv(options, command, **extra))


def run_mpi(prot, args: List[str]) -> None:
    """Launch ``python args`` with the form's MPI processes through Scipion's ``runJob``
    (the host's PARALLEL_COMMAND, e.g. ``mpirun -np N``, or the queue system)."""
    import sys
    prot.runJob(sys.executable, args, numberOfMpi=mpi_ranks(prot),
                numberOfThreads=max(1, int(prot.numberOfThreads.get() or 1)))


def convert_input(prot) -> None:
    """Write the input particles as ``extra/input_particles.star`` + ``extra/input_ids.npy``.

    Idempotent: both files are rewritten atomically from the same input.
    """
    from hetclass.io.atomic import atomic_save_npy
    from hetclass.io.star import write_particles_star
    from scipion_hetclass.convert import particles_from_set

    particles, ids = particles_from_set(prot.inputParticles.get(), os.getcwd())
    write_particles_star(prot._getExtraPath(INPUT_STAR), particles,
                         extra_columns={"rlnImageId": ids})
    atomic_save_npy(prot._getExtraPath(INPUT_IDS), ids)


def load_input(prot):
    """``(ParticleSet, ids)`` written by :func:`convert_input`."""
    from hetclass.pipeline import load_particles
    particles = load_particles(prot._getExtraPath(INPUT_STAR), project_dir=os.getcwd())
    return particles, np.load(prot._getExtraPath(INPUT_IDS))


def log_estimate(prot, options, mode: str, k_values, replicates: Optional[int] = None,
                 max_depth: Optional[int] = None, jobs=None, subsample=None) -> None:
    """Log the run's expected time and memory (:func:`hetclass.plan_report.log_estimate`);
    ``replicates`` / ``max_depth`` None: the defaults of :data:`hetclass.options.OPTIONS`."""
    from hetclass.plan_report import PlanRequest
    from hetclass.plan_report import log_estimate as estimate
    replicates = OPTIONS["replicates"].default if replicates is None else replicates
    max_depth = OPTIONS["max_depth"].default if max_depth is None else max_depth
    particles, _ = load_input(prot)
    estimate(particles, options, PlanRequest(mode, list(k_values), replicates, max_depth, jobs,
                                             subsample), prot.info, ranks=mpi_ranks(prot))


def progress_logger(prot):
    """A hetclass ``progress(event, **info)`` callback writing one log line per iteration."""
    def progress(event, **info):
        if event == "iteration":
            fractions = ", ".join(f"{f:.3f}" for f in info.get("class_fractions", []))
            first = (f"{int(info['first_assigned'])} assigned for the first time; "
                     if info.get("first_assigned") else "")
            prot.info(f"hetclass iteration {info.get('it')}/{info.get('max_iter')}: "
                      f"{info.get('changed_pct', float('nan')):.2f} % changed; {first}"
                      f"class fractions [{fractions}]")
        elif event == "explore_done":
            scores = ", ".join(f"{s:.2f}" for s in info.get("scores", []))
            prot.info(f"hetclass: start {int(info.get('selected', 0)) + 1} of "
                      f"{len(info.get('scores', []))} kept (held-out log-evidence per "
                      f"particle {scores}); refining it with soft assignments")
        elif event == "batch" and info.get("done") == info.get("total"):
            prot.info(f"hetclass {info.get('stage', 'batch')}: {info.get('total')} done")
    return progress


def validate_particles(prot, k_max: int) -> List[str]:
    """Messages for unusable inputs (never raises): alignment, CTF, K vs size, boxes, GPU."""
    errors: List[str] = []
    try:
        parts = prot.inputParticles.get()
        if parts is None:
            return errors                      # pyworkflow reports the empty pointer itself
        if not parts.hasAlignmentProj():
            errors.append("The input particles have no 3D alignment (projection angles "
                          "and shifts): run a 3D refinement first.")
        if not parts.hasCTF():
            errors.append("The input particles have no CTF information.")
        size = parts.getSize()
        if k_max > size:
            errors.append(f"The number of classes ({k_max}) is larger than the number of "
                          f"particles ({size}).")
        box = (parts.getDim() or (0,))[0]
        for name in ("solventMask", "focusMask"):
            mask = getattr(prot, name).get()
            if mask is not None and box and mask.getDim() is not None \
                    and mask.getDim()[0] != box:
                errors.append(f"The {name} box ({mask.getDim()[0]} px) differs from the "
                              f"particle box ({box} px).")
        target = float(prot.targetResolution.get() or 0)
        pixel = float(parts.getSamplingRate() or 0)
        if target and pixel and target < 2 * pixel:
            errors.append(f"Target resolution {target} A is beyond Nyquist "
                          f"({2 * pixel:.2f} A for {pixel} A pixels).")
        if float(prot.tau2Fudge.get() or 0) <= 0:
            errors.append("The regularisation T must be positive.")
        if prot.getAttributeValue(USE_GPU, False):
            try:
                import cupy  # noqa: F401
            except Exception:
                errors.append("GPU requested but CuPy is not installed "
                              "(pip install hetclass[gpu]); switch 'Use GPU' off.")
    except Exception as exc:  # _validate must report, never raise
        errors.append(f"Could not check the inputs: {exc}")
    return errors


def read_json(path: str, default=None):
    """Parsed JSON file, or ``default`` when it is missing."""
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def map_header(path: str):
    """``(box_px, voxel_size_A)`` of an MRC map from its header."""
    import mrcfile
    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        return int(mrc.header.nx), float(mrc.voxel_size.x)
