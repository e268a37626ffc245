"""``HetClassProtClassify3D``: fixed-pose 3D classification of aligned particles.

Steps: convert the input set (``extra/input_particles.star``) -> run
:func:`hetclass.pipeline.run_classify` into ``extra/classify/`` (RELION Class3D-style files;
resumable) -> register a SetOfClasses3D (labels through ``classifyItems`` keyed on the
particle id) and a SetOfVolumes.
"""

from __future__ import annotations

import os

import numpy as np
from pwem.objects import SetOfClasses3D, SetOfVolumes, Volume
from pwem.protocols import ProtClassify3D
from pyworkflow import BETA
from pyworkflow.object import Float, String

from hetclass.reports.labels import resolution_text

from . import common

CLASSIFY_DIR = "classify"            # run_classify's out_dir inside extra/
RESULT_NPZ = "classify_result.npz"   # labels, max posterior, resolution, fractions


class HetClassProtClassify3D(ProtClassify3D):
    """Classify aligned particles into K 3D classes with poses fixed (hetclass engine).

    Like RELION's 3D classification without alignment, but on Fourier-cropped images, so it
    takes minutes. Outputs the classes (representative map, size and FSC resolution per class)
    and the class maps.
    """

    _label = "classify 3D (fixed poses)"
    _devStatus = BETA
    _possibleOutputs = {"outputClasses": SetOfClasses3D, "outputVolumes": SetOfVolumes}

    # ----- form -------------------------------------------------------------------------
    def _defineParams(self, form):
        common.define_input_params(form, with_references=True)
        common.define_engine_params(form)

    # ----- steps ------------------------------------------------------------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep, self.inputParticles.get().getObjId(),
                                 needsGPU=False)
        self._insertFunctionStep(self.classifyStep, needsGPU=self._usesGpu())
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def _usesGpu(self) -> bool:
        return bool(self.getAttributeValue(common.USE_GPU, False))

    def convertInputStep(self, inputId):
        common.convert_input(self)

    def classifyStep(self):
        """Run (or resume) the classification; skipped when its result file exists."""
        result_path = self._getExtraPath(RESULT_NPZ)
        if os.path.exists(result_path):
            return
        from hetclass.io.atomic import atomic_path
        from hetclass.outputs import POSTERIORS, RUN_JSON
        from hetclass.pipeline import run_classify

        common.select_gpu(self)
        options = common.classify_options(self, self.numberOfClasses.get())
        out_dir = self._getExtraPath(CLASSIFY_DIR)
        resume = os.path.isdir(out_dir)
        common.log_estimate(self, options, "classify", [options.classes])
        if common.mpi_ranks(self) > 1:     # mpirun -np N python -m hetclass_standalone.main
            args = common.cli_arguments("classify", options, out_dir,
                                        self._getExtraPath(common.INPUT_STAR))
            common.run_mpi(self, args + (["--continue"] if resume else []))
            info = common.read_json(os.path.join(out_dir, RUN_JSON), {})
            posteriors = np.load(os.path.join(out_dir, POSTERIORS))
            labels, n_iter = posteriors.argmax(axis=1), len(info.get("iterations", []))
            resolution, fractions = info["resolution_A"], info["class_fractions"]
            status = info.get("resolution_status") or []
        else:
            particles, _ = common.load_input(self)
            result = run_classify(particles, options, out_dir, resume=resume,
                                  progress=common.progress_logger(self))
            posteriors, labels, n_iter = result.posteriors, result.labels, result.n_iter
            resolution, fractions = result.resolution_A, result.class_fractions
            status = list(getattr(result.em, "resolution_status", None) or [])
        with atomic_path(result_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, labels=np.asarray(labels, dtype=np.int64),
                         max_posterior=np.asarray(posteriors).max(axis=1),
                         resolution_A=np.asarray(resolution, dtype=np.float64),
                         resolution_status=np.asarray(
                             status or [""] * len(resolution), dtype=str),
                         class_fractions=np.asarray(fractions, dtype=np.float64),
                         n_iter=int(n_iter))

    def createOutputStep(self):
        ids = np.load(self._getExtraPath(common.INPUT_IDS))
        res = np.load(self._getExtraPath(RESULT_NPZ))
        labels, max_post = res["labels"], res["max_posterior"]
        resolution = res["resolution_A"]
        # "measured" / "crop_limit" (the value is a bound) / "unmeasured" (hetclass.fsc)
        status = (res["resolution_status"].tolist() if "resolution_status" in res.files
                  else [""] * len(resolution))
        k = len(resolution)
        row_of = {int(i): r for r, i in enumerate(ids)}
        maps = [self._mapPath(c) for c in range(k)]
        box_px, voxel_A = common.map_header(maps[0])

        def update_particle(item, _row):
            r = row_of.get(int(item.getObjId()))
            if r is None:              # disabled or added after conversion: leave out
                item._appendItem = False
                return
            item.setClassId(int(labels[r]) + 1)
            item._hetclassMaxPosterior = Float(float(max_post[r]))

        def update_class(cls):
            c = cls.getObjId() - 1
            rep = cls.getRepresentative()
            rep.setLocation(maps[c])
            rep.setSamplingRate(voxel_A)
            cls._hetclassResolution = Float(float(resolution[c]))
            cls._hetclassResolutionStatus = String(status[c] or None)

        classes = self._createSetOfClasses3D(self.inputParticles)
        classes.classifyItems(updateItemCallback=update_particle,
                              updateClassCallback=update_class)
        volumes = self._createSetOfVolumes()
        volumes.setSamplingRate(voxel_A)
        for c in range(k):
            vol = Volume()
            vol.setObjId(c + 1)
            vol.setLocation(maps[c])
            vol.setSamplingRate(voxel_A)
            vol._hetclassResolution = Float(float(resolution[c]))
            vol._hetclassResolutionStatus = String(status[c] or None)
            volumes.append(vol)
        self._defineOutputs(outputClasses=classes, outputVolumes=volumes)
        self._defineSourceRelation(self.inputParticles, classes)
        self._defineSourceRelation(self.inputParticles, volumes)

    def _mapPath(self, c: int) -> str:
        """Class map of 0-based class ``c`` (relative to the project, as Scipion stores it)."""
        from hetclass.outputs import class_map_name
        return self._getExtraPath(CLASSIFY_DIR, class_map_name(c))

    # ----- info -------------------------------------------------------------------------
    def _validate(self):
        k = int(self.numberOfClasses.get() or 0)
        errors = common.validate_particles(self, k)
        try:
            ref = self.referenceVolumes.get()
            if ref is not None and hasattr(ref, "getSize") and ref.getSize() not in (1, k):
                errors.append(f"Give one reference volume or K = {k}; the set has "
                              f"{ref.getSize()}.")
        except Exception as exc:
            errors.append(f"Could not check the reference volumes: {exc}")
        return errors

    def _summary(self):
        if not hasattr(self, "outputClasses"):
            return ["Output classes not ready yet."]
        lines = [f"{self.outputClasses.getSize()} classes of "
                 f"{self.inputParticles.get().getSize()} particles:"]
        for cls in self.outputClasses.iterItems(orderBy="id"):
            res = getattr(cls, "_hetclassResolution", None)
            status = getattr(cls, "_hetclassResolutionStatus", None)
            lines.append(f"  class {cls.getObjId()}: {cls.getSize()} particles, "
                         + resolution_text(None if res is None else res.get(),
                                           None if status is None else status.get()))
        return lines

    def _methods(self):
        if not hasattr(self, "outputClasses"):
            return []
        return [f"{self.inputParticles.get().getSize()} particles were classified into "
                f"{self.numberOfClasses.get()} 3D classes with poses fixed using hetclass "
                f"[hetclass], an expectation-maximisation classifier following RELION "
                f"[Scheres2012a] (T = {self.tau2Fudge.get()}, at most "
                f"{self.maxIterations.get()} iterations, seed {self.randomSeed.get()})."]

    def _citations(self):
        return ["hetclass", "Scheres2012a"]
