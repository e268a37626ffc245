"""High-level entry points shared by every front end (CLI, RELION External job, Scipion).

Front ends parse their arguments, call these functions, and report. Nothing here prints:
progress goes through the ``progress`` callback, cancellation through ``abort_check``.

Contract (stable):

``load_particles(path, project_dir=None, passthrough=(), cs_project_dir=None) -> ParticleSet``
    Dispatches on the file: RELION STAR (3.0/3.1) or CryoSPARC ``.cs``.

``ClassifyOptions``
    Validated parameters of one classification (see the dataclass).

``run_classify(particles, options, out_dir, resume=False, overwrite=False, progress=None,
abort_check=None) -> ClassifyResult``
    Preprocess, run EM, write RELION Class3D-style outputs into ``out_dir`` atomically
    (``run_data.star``, ``run_model.star``, ``run_classNNN.mrc`` + half maps,
    ``run_posteriors.npy``, ``run.json``; ``run_particles.cs`` when the input was a .cs).

``progress(event: str, **info)`` receives e.g. ``("iteration", it=3, max_iter=25,
changed_pct=1.2, class_fractions=[...])`` and ``("batch", done=..., total=..., stage=...)``.
``abort_check()`` is called between batches/iterations and raises
:class:`hetclass.errors.AbortRequested` to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence


@dataclass
class ClassifyOptions:
    classes: int = 4
    target_res_A: Optional[float] = None      # None: chosen from the data
    max_iter: int = 25
    convergence_pct: float = 0.5              # stop when fewer % of particles change class
    tau2_fudge: float = 4.0                   # RELION's T
    hard: bool = False
    seed: int = 0
    init: str = "random"                      # "random" | "ref"
    init_lowpass_A: float = 30.0
    references: Sequence[str] = ()            # MRC paths: one map (perturbed copies) or K maps
    particle_diameter_A: Optional[float] = None
    solvent_mask: Optional[str] = None
    focus_mask: Optional[str] = None
    device: str = "cpu"                       # "cpu" | "gpu" | "auto"
    threads: int = 1
    batch_size: Optional[int] = None
    max_memory_GB: Optional[float] = None
    cache_dir: Optional[str] = None


ProgressFn = Callable[..., None]
AbortFn = Callable[[], None]
