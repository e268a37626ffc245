"""hetclass protocols in a real Scipion project, on simulated particles with known classes.

Run inside a Scipion environment::

    python -m pyworkflow.apps.pw_run_tests scipion_hetclass.tests.test_protocols

(``tests/test_scipion_plugin.py`` does this in a throw-away headless environment.)
The particles are imported with ``ProtImportParticles`` from a Scipion sqlite whose ids are
non-contiguous; the classification data use ``.mrcs`` stacks, the stability data ``.mrc``.
"""

import os
import shutil

import numpy as np
from pwem.constants import ALIGN_NONE
from pwem.objects import SetOfClasses3D, SetOfParticles
from pwem.protocols import ProtImportParticles
from pyworkflow.tests import BaseTest, setupTestProject

from scipion_hetclass.protocols import HetClassProtClassify3D, HetClassProtStability
from scipion_hetclass.tests.synthetic import make_scipion_dataset

MIN_ARI = 0.95


def ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score
    return float(adjusted_rand_score(a, b))


def labels_by_id(classes: SetOfClasses3D):
    """{particle id: class id} read back from a SetOfClasses3D (its sqlite)."""
    out = {}
    for cls in classes.iterItems(orderBy="id"):
        for p in cls.iterItems(orderBy="id"):
            out[int(p.getObjId())] = int(cls.getObjId())
    return out


class TestHetClassProtocols(BaseTest):
    """Classification and stability protocols end to end."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.mrcs = make_scipion_dataset(os.path.join(cls.proj.path, "data_mrcs"),
                                        stack_format=".mrcs", seed=1)
        cls.mrc = make_scipion_dataset(os.path.join(cls.proj.path, "data_mrc"),
                                       stack_format=".mrc", seed=2, states="two")
        cls.import_mrcs = cls.importParticles(cls.mrcs, "mrcs stacks")
        cls.import_mrc = cls.importParticles(cls.mrc, "mrc stacks")

    @classmethod
    def importParticles(cls, data, label):
        prot = cls.newProtocol(ProtImportParticles, objLabel=f"import {label}",
                               importFrom=ProtImportParticles.IMPORT_FROM_SCIPION,
                               sqliteFile=data.sqlite_path, samplingRate=data.pixel_size_A,
                               voltage=data.voltage_kV, sphericalAberration=data.cs_mm,
                               amplitudeContrast=data.amplitude_contrast)
        cls.launchProtocol(prot)
        parts = prot.outputParticles
        assert parts.getSize() == len(data.truth), (parts.getSize(), len(data.truth))
        assert sorted(int(p.getObjId()) for p in parts) == sorted(data.truth)
        return prot

    @staticmethod
    def setInput(prot, importProt):
        """Point ``inputParticles`` at ``importProt.outputParticles`` (extended pointer)."""
        prot.inputParticles.set(importProt)
        prot.inputParticles.setExtended("outputParticles")

    # ------------------------------------------------------------------------------------
    def checkVolume(self, vol, data):
        path = vol.getFileName()
        self.assertTrue(os.path.exists(path), path)
        from scipion_hetclass.protocols.common import map_header
        box, voxel = map_header(path)
        # maps at the particle box and pixel size, and Scipion says so
        self.assertEqual(box, data.box_px)
        self.assertAlmostEqual(voxel, data.pixel_size_A, places=3)
        self.assertAlmostEqual(vol.getSamplingRate(), data.pixel_size_A, places=3)
        self.assertEqual(vol.getDim(), (data.box_px,) * 3)

    def test_classify(self):
        data = self.mrcs
        prot = self.newProtocol(HetClassProtClassify3D, objLabel="hetclass classify",
                                numberOfClasses=data.n_states, randomSeed=3,
                                numberOfThreads=2)
        self.setInput(prot, self.import_mrcs)
        self.assertEqual(prot.validate(), [])
        self.launchProtocol(prot)
        classes = prot.outputClasses
        self.assertIsInstance(classes, SetOfClasses3D)
        got = labels_by_id(classes)
        self.assertEqual(sorted(got), sorted(data.truth))
        ids = sorted(data.truth)
        score = ari([data.truth[i] for i in ids], [got[i] for i in ids])
        self.assertGreaterEqual(score, MIN_ARI, f"ARI {score:.3f}")
        self.assertEqual(sum(c.getSize() for c in classes), len(data.truth))
        for cls in classes:
            self.checkVolume(cls.getRepresentative(), data)
            res = cls._hetclassResolution.get()
            self.assertTrue(2 * data.pixel_size_A <= res < 100, res)
            # a bound (the FSC stayed above 0.143 up to the crop) is said to be one
            status = cls._hetclassResolutionStatus.get()
            self.assertIn(status, ("measured", "crop_limit"))
            self.assertTrue(any(f"class {cls.getObjId()}:" in line
                                and ("(crop limit)" in line) == (status == "crop_limit")
                                for line in prot.summary()))
        self.assertEqual(prot.outputVolumes.getSize(), data.n_states)
        for vol in prot.outputVolumes:
            self.checkVolume(vol, data)
        self.assertTrue(any("classes" in line for line in prot.summary()))
        self.assertIn("hetclass", " ".join(prot.methods()))
        self.checkViewer(prot, expect_report=False)
        self.checkStepsAreIdempotent(prot, got)

    @staticmethod
    def requireMpi():
        """Skip without mpirun / mpi4py; let OpenMPI run as root (CI containers)."""
        import unittest
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("mpi4py not installed (pip install 'hetclass[mpi]')") from None
        if shutil.which("mpirun") is None:
            raise unittest.SkipTest("mpirun not installed (apt-get install openmpi-bin)")
        if hasattr(os, "geteuid") and os.geteuid() == 0:   # OpenMPI refuses root otherwise
            os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")

    def test_classify_mpi(self):
        """numberOfMpi = 2: Scipion's runJob launches ``mpirun -np 2`` (hosts.conf) and the
        labels equal a single-process classification with the same options."""
        self.requireMpi()
        from hetclass.pipeline import run_classify
        from scipion_hetclass.protocols import common
        from scipion_hetclass.protocols.protocol_classify3d import RESULT_NPZ
        data = self.mrcs
        prot = self.newProtocol(HetClassProtClassify3D, objLabel="hetclass classify MPI",
                                numberOfClasses=data.n_states, randomSeed=3, maxIterations=8,
                                numberOfThreads=1, numberOfMpi=2)
        self.setInput(prot, self.import_mrcs)
        self.assertEqual(prot.validate(), [])
        self.launchProtocol(prot)
        got = labels_by_id(prot.outputClasses)
        self.assertEqual(sorted(got), sorted(data.truth))
        info = common.read_json(prot._getExtraPath("classify", "run.json"))
        self.assertEqual(info["mpi_ranks"], 2)
        # the same options in this process, without MPI
        cwd = os.getcwd()
        os.chdir(prot.getProject().getPath())
        try:
            particles, _ = common.load_input(prot)
            options = common.classify_options(prot, data.n_states)
            serial = run_classify(particles, options, self.getOutputPath("serial_classify"))
        finally:
            os.chdir(cwd)
        mpi_labels = np.load(prot._getExtraPath(RESULT_NPZ))["labels"]
        np.testing.assert_array_equal(mpi_labels, serial.labels)

    def checkStepsAreIdempotent(self, prot, labels):
        """Re-running the steps (as a resumed run would) reproduces the same files/labels."""
        from scipion_hetclass.protocols import common
        from scipion_hetclass.protocols.protocol_classify3d import RESULT_NPZ
        star = prot._getExtraPath(common.INPUT_STAR)
        with open(star, "rb") as f:
            before = f.read()
        prot.convertInputStep(prot.inputParticles.get().getObjId())
        with open(star, "rb") as f:
            self.assertEqual(f.read(), before)
        result = prot._getExtraPath(RESULT_NPZ)
        first = np.load(result)["labels"]
        os.remove(result)                  # as if the run died before the step finished
        prot.classifyStep()                # resumes from the engine's checkpoint
        again = np.load(result)["labels"]
        np.testing.assert_array_equal(again, first)
        ids = np.load(prot._getExtraPath(common.INPUT_IDS))
        np.testing.assert_array_equal(again + 1, [labels[int(i)] for i in ids])

    def test_classify_with_reference_volumes(self):
        """K reference volumes (a SetOfVolumes imported into the project) start the classes."""
        from pwem.protocols import ProtImportVolumes
        data = self.mrcs
        refs = self.newProtocol(ProtImportVolumes, objLabel="import references",
                                filesPath=os.path.dirname(next(iter(data.map_paths.values()))),
                                filesPattern="true_*.mrc", samplingRate=data.pixel_size_A)
        self.launchProtocol(refs)
        self.assertEqual(refs.outputVolumes.getSize(), data.n_states)
        prot = self.newProtocol(HetClassProtClassify3D, objLabel="hetclass with references",
                                numberOfClasses=data.n_states, maxIterations=10,
                                numberOfThreads=2)
        self.setInput(prot, self.import_mrcs)
        prot.referenceVolumes.set(refs)
        prot.referenceVolumes.setExtended("outputVolumes")
        self.assertEqual(prot.validate(), [])
        wrong_k = self.newProtocol(HetClassProtClassify3D, numberOfClasses=data.n_states + 1)
        self.setInput(wrong_k, self.import_mrcs)
        wrong_k.referenceVolumes.set(refs)
        wrong_k.referenceVolumes.setExtended("outputVolumes")
        self.assertTrue(any("reference volume" in e for e in wrong_k.validate()))
        self.launchProtocol(prot)
        got = labels_by_id(prot.outputClasses)
        ids = sorted(data.truth)
        score = ari([data.truth[i] for i in ids], [got[i] for i in ids])
        self.assertGreaterEqual(score, MIN_ARI, f"ARI {score:.3f}")

    def test_plugin_registered(self):
        """Found through the pyworkflow.plugin entry point, with protocols, viewer, BibTeX."""
        from pyworkflow import Config
        domain = Config.getDomain()
        self.assertIn("scipion_hetclass", domain.getPlugins())
        protocols = domain.getProtocols()
        for name in ("HetClassProtClassify3D", "HetClassProtStability"):
            self.assertIn(name, protocols)
        self.assertIn("HetClassViewer", domain.getViewers())
        prot = self.newProtocol(HetClassProtStability)
        cites = " ".join(prot.citations())
        self.assertNotIn("not found", cites)
        for text in ("hetclass developers", "Scheres", "Kuhn", "Hubert", "10.1007/BF01908075"):
            self.assertIn(text, cites)

    def test_stability_mpi(self):
        """Stability with numberOfMpi = 2 (replicates on two ranks) gives the consensus of a
        single-process stability run with the same options."""
        self.requireMpi()
        from hetclass.stability.analysis import stability_job
        from scipion_hetclass.protocols import common
        data = self.mrc
        prot = self.newProtocol(HetClassProtStability, objLabel="hetclass stability MPI",
                                kMin=2, kMax=2, replicates=2, randomSeed=5, maxIterations=8,
                                numberOfThreads=1, numberOfMpi=2)
        self.setInput(prot, self.import_mrc)
        self.launchProtocol(prot)
        self.assertEqual(sum(c.getSize() for c in prot.outputClasses), len(data.truth))
        cwd = os.getcwd()
        os.chdir(prot.getProject().getPath())
        try:
            particles, _ = common.load_input(prot)
            options = common.classify_options(prot, classes=2)
            _, serial = stability_job(particles, options, self.getOutputPath("serial_stab"),
                                      [2], 2)
            star = os.path.abspath(prot._outDir("consensus_data.star"))
        finally:
            os.chdir(cwd)
        import starfile
        table = starfile.read(star, always_dict=True)["particles"]
        np.testing.assert_array_equal(table["rlnClassNumber"].to_numpy() - 1,
                                      serial.per_k[2].consensus)

    def test_validate_messages(self):
        data = self.mrcs
        too_many = self.newProtocol(HetClassProtClassify3D, numberOfClasses=len(data.truth) + 1)
        self.setInput(too_many, self.import_mrcs)
        errors = too_many.validate()
        self.assertTrue(any("larger than the number of particles" in e for e in errors), errors)

        # particles without 3D alignment, as after extraction: the set says ALIGN_NONE
        sqlite = os.path.join(self.proj.path, "unaligned.sqlite")
        shutil.copy(data.sqlite_path, sqlite)
        copy = SetOfParticles(filename=sqlite)
        copy.loadAllProperties()
        copy.setAlignment(ALIGN_NONE)
        copy.write()
        copy.close()
        unaligned = self.newProtocol(ProtImportParticles, objLabel="import unaligned",
                                     importFrom=ProtImportParticles.IMPORT_FROM_SCIPION,
                                     sqliteFile=sqlite,
                                     samplingRate=data.pixel_size_A)
        self.launchProtocol(unaligned)
        prot = self.newProtocol(HetClassProtClassify3D, numberOfClasses=2)
        self.setInput(prot, unaligned)
        errors = prot.validate()
        self.assertTrue(any("no 3D alignment" in e for e in errors), errors)

        beyond_nyquist = self.newProtocol(HetClassProtClassify3D, numberOfClasses=2,
                                          targetResolution=data.pixel_size_A)
        self.setInput(beyond_nyquist, self.import_mrcs)
        self.assertTrue(any("Nyquist" in e for e in beyond_nyquist.validate()))

        stab = self.newProtocol(HetClassProtStability, kMin=2, kMax=len(data.truth) + 5)
        self.setInput(stab, self.import_mrcs)
        self.assertTrue(any("larger than the number of particles" in e
                            for e in stab.validate()))
        empty = self.newProtocol(HetClassProtClassify3D)
        self.assertTrue(empty.validate())   # missing input reported, not raised

    def test_stability(self):
        data = self.mrc
        prot = self.newProtocol(HetClassProtStability, objLabel="hetclass stability",
                                kMin=2, kMax=3, replicates=3, randomSeed=5, numberOfThreads=2)
        self.setInput(prot, self.import_mrc)
        self.assertEqual(prot.validate(), [])
        self.launchProtocol(prot)
        classes = prot.outputClasses
        got = labels_by_id(classes)
        ids = sorted(got)
        self.assertGreaterEqual(len(ids), 0.95 * len(data.truth))
        score = ari([data.truth[i] for i in ids], [got[i] for i in ids])
        self.assertGreaterEqual(score, MIN_ARI, f"consensus ARI {score:.3f}")
        # per-particle stability: stored in the classes' sqlite and readable back
        stability = [p._hetclassStability.get() for cls in classes for p in cls]
        self.assertEqual(len(stability), len(ids))
        self.assertTrue(all(0.0 <= s <= 1.0 for s in stability))
        self.assertGreaterEqual(np.mean(stability), 0.9)
        for cls in classes:
            self.assertGreaterEqual(cls._hetclassJaccard.get(), 0.75)
            self.checkVolume(cls.getRepresentative(), data)
            self.assertTrue(2 * data.pixel_size_A <= cls._hetclassResolution.get() < 100)
            core = getattr(prot, f"outputStableCore{cls.getObjId():03d}")
            members = {int(p.getObjId()) for p in cls}
            core_ids = {int(p.getObjId()) for p in core}
            self.assertEqual(len(core_ids), cls._hetclassCoreSize.get())
            self.assertTrue(core_ids <= members)
            self.assertTrue(all(p.hasAlignmentProj() if hasattr(p, "hasAlignmentProj")
                                else p.getTransform() is not None for p in core))
        for vol in prot.outputVolumes:
            self.checkVolume(vol, data)
        self.assertTrue(os.path.exists(prot.reportPath()))
        self.assertTrue(any("Recommended K" in line for line in prot.summary()))
        self.checkViewer(prot, expect_report=True)

    def test_stability_exhaustive(self):
        data = self.mrc
        prot = self.newProtocol(HetClassProtStability, objLabel="hetclass exhaustive",
                                exhaustive=True, minClassSize=100, maxDepth=1, replicates=3,
                                randomSeed=5, numberOfThreads=2)
        self.setInput(prot, self.import_mrc)
        self.assertEqual(prot.validate(), [])
        self.launchProtocol(prot)
        got = labels_by_id(prot.outputClasses)
        ids = sorted(got)
        self.assertEqual(ids, sorted(data.truth))
        score = ari([data.truth[i] for i in ids], [got[i] for i in ids])
        self.assertGreaterEqual(score, MIN_ARI, f"leaves ARI {score:.3f}")
        for cls in prot.outputClasses:
            self.checkVolume(cls.getRepresentative(), data)
            self.assertTrue(cls._hetclassNode.get().startswith("1."))
            self.assertIn(cls._hetclassResolutionStatus.get(),
                          ("measured", "crop_limit", "unmeasured"))
        nodes = prot.treeNodes()
        self.assertEqual(sorted(n["id"] for n in nodes), ["1", "1.1", "1.2"])
        # every particle reassigned among the leaves: a second class set with refined maps,
        # each particle keeping the leaf the tree gave it
        again = prot.outputReassignedClasses
        moved = labels_by_id(again)
        self.assertEqual(sorted(moved), ids)
        score = ari([data.truth[i] for i in ids], [moved[i] for i in ids])
        self.assertGreaterEqual(score, MIN_ARI, f"reassigned ARI {score:.3f}")
        self.assertEqual({int(p._hetclassTreeLeaf.get()) for cls in again for p in cls},
                         set(got.values()))
        for cls in again:
            self.checkVolume(cls.getRepresentative(), data)
        self.assertEqual(prot.outputReassignedVolumes.getSize(), prot.outputClasses.getSize())
        self.checkViewer(prot, expect_report=True)

    def checkViewer(self, prot, expect_report):
        """The viewer draws the summary PNG and offers the report, headless."""
        from scipion_hetclass.viewers import HetClassViewer
        from scipion_hetclass.viewers.viewer import FileView
        views = HetClassViewer(project=self.proj, protocol=prot)._visualize(prot)
        files = [v.path for v in views if isinstance(v, FileView)]
        self.assertTrue(files and files[0].endswith(".png") and os.path.getsize(files[0]) > 1000)
        if expect_report:
            self.assertTrue(any(f.endswith(".html") for f in files), files)
