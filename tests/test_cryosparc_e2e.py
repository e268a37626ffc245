"""End to end: the same simulated particles as CryoSPARC (.cs + .mrc stacks, alignments at
twice the image pixel size) and as RELION (STAR + .mrcs) classify the same with the same seed,
and the .cs run writes run_particles.cs + per-class subsets CryoSPARC can import."""

import os
import shutil

import numpy as np
import pytest

from hetclass.geometry import matrix_to_rotvec
from hetclass.io import cryosparc as cs
from hetclass.io.star import read_star

pipeline = pytest.importorskip("hetclass.pipeline")
simulate = pytest.importorskip("hetclass.simulate")
phantoms = pytest.importorskip("hetclass.phantoms")
if not hasattr(pipeline, "run_classify"):
    pytest.skip("hetclass.pipeline.run_classify is not available", allow_module_level=True)

N, BOX, PIXEL = 400, 32, 3.0


def cs_table_for(star_particles, stack_names):
    """A CryoSPARC particle table written by hand from the simulated STAR's values.

    Conventions exercised: pose = rotvec(A.T), blob/idx 0-based, shifts stored in pixels of
    an alignment pixel size twice the image pixel size, defocus angle in radians, split 0/1,
    rows in a shuffled order.
    """
    p = star_particles
    n = len(p)
    idx = np.array([int(s.split("@")[0]) - 1 for s in p.image_names])
    stacks = np.array([stack_names[s.split("@")[1]] for s in p.image_names])
    align_psize = 2 * PIXEL
    table = np.zeros(n, dtype=[
        ("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
        ("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4"),
        ("alignments3D/class", "<u4"), ("alignments3D/class_posterior", "<f4")])
    rng = np.random.default_rng(11)
    table["uid"] = rng.integers(1, 2 ** 63, n, dtype=np.int64).astype(np.uint64) * 2 + 1
    table["blob/path"] = np.char.encode(stacks, "utf-8")
    table["blob/idx"] = idx
    table["blob/shape"] = BOX
    table["blob/psize_A"] = PIXEL
    table["ctf/accel_kv"] = p.optics.voltage_kV[p.optics_group]
    table["ctf/cs_mm"] = p.optics.cs_mm[p.optics_group]
    table["ctf/amp_contrast"] = p.optics.amplitude_contrast[p.optics_group]
    table["ctf/df1_A"] = p.defocus_u_A
    table["ctf/df2_A"] = p.defocus_v_A
    table["ctf/df_angle_rad"] = np.deg2rad(p.defocus_angle_deg)
    table["alignments3D/split"] = p.subsets() - 1
    table["alignments3D/shift"] = p.shifts_A / align_psize
    table["alignments3D/pose"] = matrix_to_rotvec(np.transpose(p.rotations, (0, 2, 1)))
    table["alignments3D/psize_A"] = align_psize
    table["alignments3D/class"] = 7          # stale values from an earlier job
    return table


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    states = {s: phantoms.phantom_model(s) for s in ("open", "no_subunit")}
    ds = simulate.simulate_dataset(root / "relion", states, n_particles=N, box_px=BOX,
                                   pixel_size_A=PIXEL, snr=0.5, seed=3, stack_format=".mrcs")
    star = read_star(ds.star_path, project_dir=ds.out_dir)
    # CryoSPARC project: the same stacks as J5/extract/*.mrc, the table in J9
    proj = root / "P1"
    (proj / "J9").mkdir(parents=True)
    (proj / "J5" / "extract").mkdir(parents=True)
    names = {}
    for s in sorted({n.split("@")[1] for n in star.image_names}):
        rel = f"J5/extract/{os.path.basename(s)[:-5]}_particles.mrc"
        shutil.copy(os.path.join(ds.out_dir, s), proj / rel)
        names[s] = rel
    table = cs_table_for(star, names)
    perm = np.random.default_rng(5).permutation(N)
    with open(proj / "J9" / "J9_particles.cs", "wb") as f:
        np.save(f, table[perm], allow_pickle=False)
    return root, ds, star, table, perm


def test_cs_and_star_classify_identically(datasets):
    root, ds, star, table, perm = datasets
    particles_cs = pipeline.load_particles(str(root / "P1" / "J9" / "J9_particles.cs"))
    assert cs.missing_stacks(particles_cs) == []
    # same physical particles (rows of the .cs are shuffled)
    np.testing.assert_allclose(particles_cs.shifts_A, star.shifts_A[perm], atol=1e-5)
    np.testing.assert_allclose(particles_cs.rotations, star.rotations[perm], atol=1e-6)
    np.testing.assert_allclose(particles_cs.defocus_u_A, star.defocus_u_A[perm], atol=5e-3)
    np.testing.assert_array_equal(particles_cs.random_subset, star.random_subset[perm])

    opts = pipeline.ClassifyOptions(classes=2, seed=7, max_iter=10, threads=2)
    star_in_cs_order = star.take(perm)     # same row order, so the same seeded start
    res_star = pipeline.run_classify(star_in_cs_order, opts, str(root / "out_star"))
    res_cs = pipeline.run_classify(particles_cs, opts, str(root / "out_cs"))
    np.testing.assert_array_equal(res_cs.labels, res_star.labels)
    np.testing.assert_allclose(res_cs.posteriors, res_star.posteriors, atol=1e-3)
    truth = ds.labels[perm]
    agree = max(np.mean(res_cs.labels == truth), np.mean(res_cs.labels == 1 - truth))
    assert agree > 0.8, agree                 # and the classification is meaningful

    # results back to CryoSPARC: original uids and fields, new class fields
    out = np.load(os.path.join(root, "out_cs", "run_particles.cs"), allow_pickle=False)
    original = table[perm]
    for name in original.dtype.names:
        if name not in ("alignments3D/class", "alignments3D/class_posterior"):
            assert out[name].tobytes() == original[name].tobytes(), name
    np.testing.assert_array_equal(out["alignments3D/class"], res_cs.labels)
    np.testing.assert_allclose(out["alignments3D/class_posterior"],
                               res_cs.posteriors.max(1), atol=1e-6)
    for k in range(2):
        sub = os.path.join(root, "out_cs", f"run_class{k + 1:03d}_particles.cs")
        if (res_cs.labels == k).any():
            np.testing.assert_array_equal(np.load(sub)["uid"],
                                          original["uid"][res_cs.labels == k])
            assert os.path.exists(sub[:-3] + ".csg")
