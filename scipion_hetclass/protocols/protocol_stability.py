"""``HetClassProtStability``: replicate classifications, per-particle stability, consensus.

Steps: convert the input (``extra/input_particles.star``) -> run
:func:`hetclass.stability.analysis.stability_job` (a K range, R replicates) or, in exhaustive
mode, :func:`hetclass.stability.exhaustive.exhaustive_job` into ``extra/stability/`` (file
names: :mod:`hetclass.stability.outputs`) -> register the consensus classes, their maps and
the stable-core subsets. Particles are matched to the output STAR rows by ``rlnImageId``
(the Scipion id written at conversion).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import SetOfClasses3D, SetOfParticles, SetOfVolumes, Volume
from pwem.protocols import ProtClassify3D
from pyworkflow import BETA
from pyworkflow.object import Float, Integer, String

from hetclass.options import OPTIONS

from . import common

STABILITY_DIR = "stability"
ID_COLUMN = "rlnImageId"


def _class_assigner(label: dict, tree_leaf: Optional[dict] = None):
    """A ``classifyItems`` particle callback: each particle's class from ``label`` (particle
    id -> 1-based class; absent or 0: left out of the classes) and, with ``tree_leaf``, its
    exhaustive-tree leaf in ``_hetclassTreeLeaf``."""
    def update_particle(item, _row):
        pid = int(item.getObjId())
        if label.get(pid, 0) == 0:
            item._appendItem = False
            return
        item.setClassId(int(label[pid]))
        if tree_leaf is not None:
            item._hetclassTreeLeaf = Integer(int(tree_leaf[pid]))
    return update_particle


class HetClassProtStability(ProtClassify3D):
    """Are the 3D classes real? R independent classifications per K, matched and scored.

    Gives a per-particle stability (fraction of replicates agreeing with the consensus), a
    per-class Jaccard index over replicate pairs, a recommended K and a heterogeneity verdict
    (homogeneous / discrete / continuous / mixed). Exhaustive mode splits classes recursively
    until every leaf is reproducible and distinct.
    """

    _label = "classification stability"
    _devStatus = BETA
    _possibleOutputs = {"outputClasses": SetOfClasses3D, "outputVolumes": SetOfVolumes,
                        "outputReassignedClasses": SetOfClasses3D,
                        "outputReassignedVolumes": SetOfVolumes}

    # ----- form -------------------------------------------------------------------------
    def _defineParams(self, form):
        model = common.model_param
        common.define_input_params(form, with_references=False)
        form.addSection(label="Stability")
        form.addParam("exhaustive", params.BooleanParam, default=False,
                      label="Exhaustive splitting?",
                      help="No: scan K from 'minimum K' to 'maximum K'. Yes: split into two "
                           "recursively while the split is stable and the maps differ.")
        line = form.addLine("Classes (K)", condition="not exhaustive",
                            help="K range to scan; the consensus uses the recommended K "
                                 "(or K when minimum = maximum).")
        line.addParam("kMin", params.IntParam, default=2, label="minimum")
        line.addParam("kMax", params.IntParam, default=4, label="maximum")
        form.addParam("replicates", params.IntParam, label="Replicates per K",
                      **model("replicates"))
        form.addParam("coreStability", params.FloatParam, condition="not exhaustive",
                      label="Stable-core threshold", **model("core_stability"))
        form.addParam("nullSets", params.IntParam, expertLevel=params.LEVEL_ADVANCED,
                      label="Null data sets", **model("null_sets"))
        form.addParam("subsample", params.FloatParam, expertLevel=params.LEVEL_ADVANCED,
                      label="Subsample fraction", **model("subsample", zero_is_default=True))
        form.addParam("minClassSize", params.IntParam, condition="exhaustive",
                      validators=[params.GE(0)], label="Minimum class size (0 = auto)",
                      **model("min_class_size", zero_is_default=True))
        form.addParam("maxDepth", params.IntParam, condition="exhaustive",
                      label="Maximum depth", **model("max_depth"))
        common.define_engine_params(form, with_classes=False)

    # ----- steps ------------------------------------------------------------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep, self.inputParticles.get().getObjId(),
                                 needsGPU=False)
        self._insertFunctionStep(self.stabilityStep,
                                 needsGPU=bool(self.getAttributeValue(common.USE_GPU, False)))
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def convertInputStep(self, inputId):
        common.convert_input(self)

    def _outDir(self, *names) -> str:
        return self._getExtraPath(STABILITY_DIR, *names)

    def _summaryName(self) -> str:
        from hetclass.stability.outputs import SUMMARY_JSON, TREE_JSON
        return TREE_JSON if self.exhaustive.get() else SUMMARY_JSON

    def stabilityStep(self):
        """Run the replicates; skipped when the run's summary (written last) exists."""
        if os.path.exists(self._outDir(self._summaryName())):
            return
        from hetclass.stability.analysis import stability_job
        from hetclass.stability.exhaustive import exhaustive_job

        common.select_gpu(self)
        resume = os.path.isdir(self._outDir())     # an interrupted run: keep its finished work
        options = common.classify_options(self, classes=2)
        subsample = float(self.subsample.get() or 0) or None
        workers = max(1, int(self.numberOfThreads.get() or 1))
        star = os.path.abspath(self._getExtraPath(common.INPUT_STAR))
        common.log_estimate(self, options, "exhaustive" if self.exhaustive.get() else "stability",
                            [2] if self.exhaustive.get() else self._kValues(),
                            int(self.replicates.get()), int(self.maxDepth.get()), workers,
                            subsample)
        if common.mpi_ranks(self) > 1:     # replicates on MPI rank groups
            self._runMpi(options, subsample, workers, star)
            return
        particles, _ = common.load_input(self)
        progress = common.progress_logger(self)
        if self.exhaustive.get():
            exhaustive_job(particles, options, self._outDir(), self._minClassSize(),
                           int(self.maxDepth.get()), int(self.replicates.get()), subsample,
                           k_scan=OPTIONS["k_scan"].default, null_sets=self._nullSets(),
                           workers=workers, particles_path=star, progress=progress,
                           resume=resume)
        else:
            stability_job(particles, options, self._outDir(), self._kValues(),
                          int(self.replicates.get()), subsample, workers,
                          float(self.coreStability.get()), particles_path=star,
                          progress=progress, resume=resume, null_sets=self._nullSets())

    def _minClassSize(self):
        """None (auto, derived from the data) for 0."""
        value = int(self.minClassSize.get() or 0)
        return value if value > 0 else None

    def _nullSets(self) -> int:
        value = self.getAttributeValue("nullSets", None)
        return OPTIONS["null_sets"].default if value is None else int(value)

    def _runMpi(self, options, subsample, workers, star):
        """``hetclass stability|exhaustive`` under Scipion's MPI launcher (same arguments)."""
        command = "exhaustive" if self.exhaustive.get() else "stability"
        extra = dict(replicates=int(self.replicates.get()), jobs=workers,
                     null_sets=self._nullSets(), subsample=subsample)
        if self.exhaustive.get():
            extra.update(min_class_size=self._minClassSize(),
                         max_depth=int(self.maxDepth.get()), k_scan=OPTIONS["k_scan"].default)
        else:
            extra.update(classes=self._kValues(),
                         core_stability=float(self.coreStability.get()))
        args = common.cli_arguments(command, options, self._outDir(), star, **extra)
        if os.path.isdir(self._outDir()):
            args.append("--continue")
        common.run_mpi(self, args)

    def _kValues(self):
        return list(range(int(self.kMin.get()), int(self.kMax.get()) + 1))

    def createOutputStep(self):
        if self.exhaustive.get():
            self._createExhaustiveOutputs()
        else:
            self._createStabilityOutputs()

    def _readStar(self, name: str):
        """(ids, table) of an output STAR file: ids from rlnImageId."""
        from hetclass.io.star import read_star
        parts = read_star(self._outDir(name), project_dir=os.getcwd())
        table = parts.source["particles"]
        return table[ID_COLUMN].to_numpy(dtype=np.int64), table

    def _createStabilityOutputs(self):
        from hetclass.stability.outputs import CONSENSUS_STAR, CONTINUOUS_STAR, STABILITY_COLUMN
        summary = common.read_json(self._outDir(self._summaryName()))
        ids, table = self._readStar(CONSENSUS_STAR)
        label = dict(zip(ids.tolist(), table["rlnClassNumber"].to_numpy(dtype=np.int64)))
        stab = dict(zip(ids.tolist(), table[STABILITY_COLUMN].to_numpy(dtype=np.float64)))
        post = dict(zip(ids.tolist(),
                        table["rlnMaxValueProbDistribution"].to_numpy(dtype=np.float64)))
        classes_info = {c["class_number"]: c for c in summary["classes"]}

        def update_particle(item, _row):
            pid = int(item.getObjId())
            if label.get(pid, 0) == 0:       # not converted, or in no replicate (subsample)
                item._appendItem = False
                return
            item.setClassId(int(label[pid]))
            item._hetclassStability = Float(float(stab[pid]))
            item._hetclassMaxPosterior = Float(float(post[pid]))

        def update_class(cls):
            info = classes_info.get(cls.getObjId(), {})
            if info.get("map"):
                cls.getRepresentative().setLocation(self._outDir(info["map"]))
                cls.getRepresentative().setSamplingRate(summary["map_pixel_size_A"])
            cls._hetclassJaccard = Float(info.get("jaccard_mean"))
            cls._hetclassResolution = Float(info.get("core_resolution_A"))
            cls._hetclassResolutionStatus = String(info.get("core_resolution_status"))
            cls._hetclassCoreSize = Integer(info.get("core_size"))
            cls._hetclassBand = String(info.get("band"))

        outputs = {"outputClasses": self._classes(update_particle, update_class)}
        outputs["outputVolumes"] = self._volumes(
            [(c["class_number"], c["map"], c.get("core_resolution_A"))
             for c in summary["classes"] if c.get("map")], summary["map_pixel_size_A"])
        for c in summary["classes"]:
            if c.get("core_star"):
                outputs[f"outputStableCore{c['class_number']:03d}"] = self._subset(
                    c["core_star"], f"core{c['class_number']:03d}")
        if summary.get("continuous_particles"):
            outputs["outputContinuousParticles"] = self._subset(CONTINUOUS_STAR, "continuous")
        self._register(outputs)

    def _createExhaustiveOutputs(self):
        tree = common.read_json(self._outDir(self._summaryName()))
        ids, table = self._readStar(tree["leaves_star"])
        label = dict(zip(ids.tolist(), table["rlnClassNumber"].to_numpy(dtype=np.int64)))
        leaves = tree["leaves"]
        pixel = float(self.inputParticles.get().getSamplingRate())
        update_particle = _class_assigner(label)

        def update_class(cls):
            leaf = leaves[cls.getObjId() - 1]
            if leaf.get("map"):
                cls.getRepresentative().setLocation(self._outDir(leaf["map"]))
                cls.getRepresentative().setSamplingRate(pixel)
            cls._hetclassResolution = Float(leaf.get("resolution_A"))
            cls._hetclassResolutionStatus = String(leaf.get("resolution_status"))
            cls._hetclassNode = String(leaf["id"])
            cls._hetclassReason = String(leaf.get("reason"))

        outputs = {"outputClasses": self._classes(update_particle, update_class),
                   "outputVolumes": self._volumes(
                       [(i + 1, lf["map"], lf.get("resolution_A"))
                        for i, lf in enumerate(leaves) if lf.get("map")], pixel)}
        if tree.get("reassigned"):
            outputs.update(self._reassignedOutputs(tree["reassigned"], pixel))
        self._register(outputs)

    def _reassignedOutputs(self, again: dict, pixel: float) -> dict:
        """Every particle reassigned among the leaves (``leaves_reassigned_data.star``): its
        classes, with the refined maps as representatives, and those maps."""
        ids, table = self._readStar(again["star"])
        label = dict(zip(ids.tolist(), table["rlnClassNumber"].to_numpy(dtype=np.int64)))
        leaf = dict(zip(ids.tolist(), table["rlnHetclassTreeLeaf"].to_numpy(dtype=np.int64)))
        maps = again.get("maps") or []
        res = again.get("resolution_A") or [None] * len(maps)
        status = again.get("resolution_status") or [None] * len(maps)
        update_particle = _class_assigner(label, tree_leaf=leaf)

        def update_class(cls):
            number = cls.getObjId()
            if number <= len(maps):
                cls.getRepresentative().setLocation(self._outDir(maps[number - 1]))
                cls.getRepresentative().setSamplingRate(pixel)
                cls._hetclassResolution = Float(res[number - 1])
                cls._hetclassResolutionStatus = String(status[number - 1])

        return {"outputReassignedClasses": self._classes(update_particle, update_class,
                                                         "reassigned"),
                "outputReassignedVolumes": self._volumes(
                    [(c + 1, name, res[c]) for c, name in enumerate(maps)], pixel, "reassigned")}

    def _classes(self, update_particle, update_class, suffix: str = ""):
        classes = self._createSetOfClasses3D(self.inputParticles, suffix)
        classes.classifyItems(updateItemCallback=update_particle,
                              updateClassCallback=update_class)
        return classes

    def _volumes(self, entries, pixel_A, suffix: str = ""):
        """SetOfVolumes from ``[(class number, map file, resolution)]``."""
        volumes = self._createSetOfVolumes(suffix)
        volumes.setSamplingRate(pixel_A)
        for number, name, res in entries:
            vol = Volume()
            vol.setObjId(int(number))
            vol.setLocation(self._outDir(name))
            vol.setSamplingRate(pixel_A)
            vol._hetclassResolution = Float(res)
            volumes.append(vol)
        return volumes

    def _subset(self, star_name: str, suffix: str) -> SetOfParticles:
        """The input particles whose ids are listed in ``star_name``."""
        keep = set(self._readStar(star_name)[0].tolist())
        subset = self._createSetOfParticles(suffix)
        subset.copyInfo(self.inputParticles.get())
        subset.copyItems(self.inputParticles.get(),
                         updateItemCallback=lambda item, _row: setattr(
                             item, "_appendItem", int(item.getObjId()) in keep))
        return subset

    def _register(self, outputs):
        self._defineOutputs(**outputs)
        for out in outputs.values():
            self._defineSourceRelation(self.inputParticles, out)

    # ----- viewer helpers ---------------------------------------------------------------
    def reportPath(self):
        """The run's HTML report (None before it exists)."""
        from hetclass.stability.outputs import REPORT_HTML
        path = self._outDir(REPORT_HTML)
        return path if os.path.exists(path) else None

    def treeNodes(self):
        """Exhaustive mode: ``[{"id", "size", "leaf", "reason"}]`` of every node, else None."""
        if not self.exhaustive.get():
            return None
        tree = common.read_json(self._outDir(self._summaryName()))
        if not tree:
            return None
        nodes, todo = [], [tree["tree"]]
        while todo:
            node = todo.pop()
            nodes.append({"id": node["id"], "size": node["n_particles"],
                          "leaf": not node["children"], "reason": node.get("reason")})
            todo.extend(node["children"])
        return nodes

    # ----- info -------------------------------------------------------------------------
    def _validate(self):
        errors = []
        try:
            exhaustive = bool(self.exhaustive.get())
            k_min, k_max = int(self.kMin.get() or 0), int(self.kMax.get() or 0)
            if not exhaustive and (k_min < 1 or k_max < max(2, k_min)):
                errors.append(f"Give 1 <= minimum K <= maximum K and maximum K >= 2 "
                              f"(got {k_min}-{k_max}).")
            sub = float(self.subsample.get() or 0)
            if not 0 <= sub <= 1:
                errors.append(f"Subsample fraction must be in (0, 1] or 0 (got {sub}).")
            if not exhaustive and not 0 < float(self.coreStability.get() or 0) <= 1:
                errors.append("The stable-core threshold must be in (0, 1].")
            errors += common.validate_particles(self, 2 if exhaustive else k_max)
            parts = self.inputParticles.get()
            if exhaustive and parts is not None and \
                    parts.getSize() < 2 * int(self.minClassSize.get() or 0):
                errors.append(f"{parts.getSize()} particles cannot be split into two classes "
                              f"of at least {self.minClassSize.get()}: lower the minimum "
                              f"class size.")
        except Exception as exc:   # _validate must report, never raise
            errors.append(f"Could not check the parameters: {exc}")
        return errors

    def _summary(self):
        summary = common.read_json(self._outDir(self._summaryName())) \
            if hasattr(self, "outputClasses") else None
        if not summary:
            return ["Output classes not ready yet."]
        if self.exhaustive.get():
            lines = [f"Exhaustive splitting: {len(summary['leaves'])} leaves."]
            lines += [f"  leaf {i + 1} (node {lf['id']}): {lf['n_particles']} particles, "
                      f"{lf['reason']}" for i, lf in enumerate(summary["leaves"])]
            return lines
        lines = [f"Recommended K = {summary['recommended_classes']} "
                 f"({summary['heterogeneity']}); consensus with K = {summary['consensus_k']}:"]
        for c in summary["classes"]:
            jac = c.get("jaccard_mean")
            lines.append(f"  class {c['class_number']}: {c['size']} particles, "
                         f"Jaccard {'-' if jac is None else f'{jac:.2f}'} ({c['band']}), "
                         f"stable core {c['core_size']}")
        return lines

    def _methods(self):
        if not hasattr(self, "outputClasses"):
            return []
        what = ("split recursively (exhaustive mode)" if self.exhaustive.get()
                else f"classified with K = {self.kMin.get()} to {self.kMax.get()}")
        return [f"{self.inputParticles.get().getSize()} particles were {what} in "
                f"{self.replicates.get()} independent replicates with hetclass [hetclass] "
                f"(fixed poses, EM following [Scheres2012a]); classes were matched across "
                f"replicates with the Hungarian method [Kuhn1955] and scored by Jaccard index "
                f"and adjusted Rand index [Hubert1985]."]

    def _citations(self):
        return ["hetclass", "Scheres2012a", "Kuhn1955", "Hubert1985"]
