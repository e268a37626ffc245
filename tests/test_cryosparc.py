"""CryoSPARC .cs I/O against third-party oracles (pyem's csparc2star output and independently
computed values in ../shared/fixtures/cryosparc), plus round trips and bad input."""

import os
import sys

import numpy as np
import pandas as pd
import pytest
import starfile
from shared_fixtures import fixtures_dir

from hetclass.errors import InputError
from hetclass.geometry import euler_to_matrix
from hetclass.io import cryosparc as cs
from hetclass.io.cryosparc_read import MAX_HEADER_BYTES
from hetclass.io.star import read_star, write_particles_star

FIXTURES = fixtures_dir("cryosparc")
PLAIN = os.path.join(FIXTURES, "synthetic_particles.cs")
PASS = os.path.join(FIXTURES, "synthetic_passthrough_particles.cs")
CSDAT = os.path.join(FIXTURES, "synthetic_particles_csdat.cs")
MISMATCH = os.path.join(FIXTURES, "synthetic_particles_psize_mismatch.cs")


def fx(name):
    return os.path.join(FIXTURES, name)


def save_cs(path, table):
    with open(path, "wb") as f:
        np.save(f, table, allow_pickle=False)
    return str(path)


def star_of(particles, tmp_path, name="out.star"):
    """Write the particles as RELION 3.1 STAR (with the CryoSPARC columns) and parse it back."""
    path = tmp_path / name
    write_particles_star(path, particles, extra_columns=cs.star_columns(particles))
    return starfile.read(path, always_dict=True)


def rotations_of(df):
    return euler_to_matrix(df.rlnAngleRot.to_numpy(float), df.rlnAngleTilt.to_numpy(float),
                           df.rlnAnglePsi.to_numpy(float))


# ----------------------------------------------------------------------------- oracle: pyem
CASES = {
    "plain": (PLAIN, [PASS], "pyem_synthetic_particles.star"),
    "csdat": (CSDAT, [PASS], "pyem_synthetic_particles.star"),
    "multiclass_v45": (fx("synthetic_multiclass_v45.cs"), [PASS], "pyem_multiclass_v45.star"),
    "multiclass_v44": (fx("synthetic_multiclass_v44.cs"), [PASS], "pyem_multiclass_v44.star"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_star_matches_pyem(case, tmp_path):
    if case == "csdat":
        pytest.importorskip("cryosparc.dataset", reason="CSDAT needs cryosparc-tools")
    path, passthrough, pyem_name = CASES[case]
    ours = star_of(cs.read_cs(path, passthrough), tmp_path)
    ref = starfile.read(fx(pyem_name), always_dict=True)
    a = ours["particles"].set_index("rlnImageName")
    b = ref["particles"].set_index("rlnImageName").loc[a.index]   # rows matched by name
    assert len(a) == len(b) == 8
    np.testing.assert_allclose(rotations_of(a), rotations_of(b), atol=2e-4)
    for col, tol in (("rlnOriginXAngst", 1e-5), ("rlnOriginYAngst", 1e-5),
                     ("rlnDefocusU", 1e-3), ("rlnDefocusV", 1e-3), ("rlnDefocusAngle", 1e-4),
                     ("rlnPhaseShift", 1e-4), ("rlnCoordinateX", 0), ("rlnCoordinateY", 0)):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), atol=tol,
                                   err_msg=col)
    for col in ("rlnOpticsGroup", "rlnRandomSubset", "rlnClassNumber", "rlnMicrographName"):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)
    oa = ours["optics"].set_index("rlnOpticsGroup").sort_index()
    ob = ref["optics"].set_index("rlnOpticsGroup").sort_index()
    for col in ("rlnVoltage", "rlnImagePixelSize", "rlnSphericalAberration",
                "rlnAmplitudeContrast", "rlnImageSize"):
        np.testing.assert_allclose(oa[col].to_numpy(float), ob[col].to_numpy(float), atol=1e-6)
    np.testing.assert_array_equal(oa["rlnOpticsGroupName"], ob["rlnOpticsGroupName"])


def test_psize_mismatch_uses_alignment_pixel_size(tmp_path):
    """alignments3D/psize_A = 2.6 A vs blob/psize_A = 1.3 A: the origin is shift x 2.6 A."""
    table = np.load(MISMATCH)
    assert np.all(table["alignments3D/psize_A"] == np.float32(2.6))
    assert np.all(table["blob/psize_A"] == np.float32(1.3))
    particles = cs.read_cs(MISMATCH)
    ours = star_of(particles, tmp_path)["particles"].set_index("rlnImageName")
    pyem = starfile.read(fx("pyem_psize_mismatch.star"))["particles"] \
        .set_index("rlnImageName").loc[ours.index]
    right = table["alignments3D/shift"].astype(np.float64) * 2.6
    order = {n: i for i, n in enumerate(particles.image_names)}
    idx = [order[n] for n in ours.index]
    got = ours[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float)
    np.testing.assert_allclose(got, right[idx], atol=1e-5)
    pyem_xy = pyem[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float)
    np.testing.assert_allclose(got, 2 * pyem_xy, atol=1e-5)     # pyem's known-wrong scale
    assert np.abs(got - pyem_xy).max() > 1.0                     # ... and we do not match it
    np.testing.assert_allclose(particles.optics.pixel_size_A, 1.3)   # images stay at 1.3 A/px


def test_independent_expected_values():
    expected = pd.read_csv(fx("expected_relion_independent.csv"), dtype={"uid": str})
    particles = cs.read_cs(PLAIN, [PASS])
    uids = [str(u) for u in cs.uids_of(particles)]
    exp = expected.set_index("uid").loc[uids]
    np.testing.assert_array_equal(particles.image_names, exp.rlnImageName.to_numpy())
    np.testing.assert_allclose(particles.rotations, rotations_of(exp), atol=2e-5)
    np.testing.assert_allclose(particles.shifts_A,
                               exp[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(particles.defocus_u_A, exp.rlnDefocusU, atol=1e-3)
    np.testing.assert_allclose(particles.defocus_v_A, exp.rlnDefocusV, atol=1e-3)
    np.testing.assert_allclose(particles.defocus_angle_deg, exp.rlnDefocusAngle, atol=1e-4)
    np.testing.assert_allclose(particles.phase_shift_deg, exp.rlnPhaseShift, atol=1e-4)
    np.testing.assert_array_equal(particles.random_subset, exp.rlnRandomSubset)
    np.testing.assert_array_equal(particles.optics.relion_ids[particles.optics_group],
                                  exp.rlnOpticsGroup)
    np.testing.assert_array_equal(cs.star_columns(particles)["rlnClassNumber"],
                                  exp.rlnClassNumber)


def test_csdat_equals_numpy_container():
    pytest.importorskip("cryosparc.dataset", reason="CSDAT needs cryosparc-tools")
    with pytest.raises(ValueError):
        np.load(CSDAT, allow_pickle=False)       # not numpy-readable: the reader must sniff
    a, b = cs.load_cs_array(CSDAT), cs.load_cs_array(PLAIN)
    assert a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


def test_csdat_without_cryosparc_tools_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cryosparc.dataset", None)   # import fails
    with pytest.raises(InputError, match="pip install cryosparc-tools"):
        cs.read_cs(CSDAT)


def test_multiclass_takes_the_most_probable_class():
    for name, prefix in (("synthetic_multiclass_v45.cs", "alignments3D_multi"),
                         ("synthetic_multiclass_v44.cs", "alignments_class_N")):
        table = np.load(fx(name))
        p = cs.read_cs(fx(name))
        assert p.source["layout"] == prefix
        if prefix == "alignments3D_multi":
            post = table["alignments3D_multi/class_posterior"]
            poses = table["alignments3D_multi/pose"]
        else:
            post = np.stack([table[f"alignments_class_{k}/class_posterior"] for k in range(3)], 1)
            poses = np.stack([table[f"alignments_class_{k}/pose"] for k in range(3)], 1)
        k = post.argmax(1)
        np.testing.assert_array_equal(p.source["input_class"], k)
        from hetclass.geometry import rotvec_to_matrix
        want = rotvec_to_matrix(poses[np.arange(len(k)), k]).transpose(0, 2, 1)
        np.testing.assert_allclose(p.rotations, want, atol=1e-12)


def test_exact_prefix_ignores_lookalike_slots(tmp_path):
    """A slot named like a class block (alignments_class_0_extra) is not a class block."""
    table = np.load(fx("synthetic_multiclass_v44.cs"))
    names = [n.replace("alignments_class_2/", "alignments_class_2x/") for n in table.dtype.names]
    renamed = table.copy()
    renamed.dtype.names = names
    p = cs.read_cs(save_cs(tmp_path / "x.cs", renamed))
    post = np.stack([table[f"alignments_class_{k}/class_posterior"] for k in range(2)], 1)
    np.testing.assert_array_equal(p.source["input_class"], post.argmax(1))


# ----------------------------------------------------------------------------- passthrough
def test_passthrough_joined_by_uid_not_row_order(tmp_path):
    main = np.load(PLAIN)
    pt = np.load(PASS)
    assert not np.array_equal(main["uid"], pt["uid"])            # fixture: reversed rows
    p = cs.read_cs(PLAIN, [PASS])
    by_uid = {int(u): m.decode() for u, m in zip(pt["uid"], pt["location/micrograph_path"])}
    assert list(p.micrograph_names) == [by_uid[int(u)] for u in main["uid"]]
    # a shuffled main file gives the same particles, uid by uid
    perm = np.random.default_rng(3).permutation(len(main))
    q = cs.read_cs(save_cs(tmp_path / "shuffled.cs", main[perm]), [PASS])
    np.testing.assert_array_equal(cs.uids_of(q), main["uid"][perm])
    np.testing.assert_array_equal(q.micrograph_names, p.micrograph_names[perm])
    np.testing.assert_allclose(q.rotations, p.rotations[perm])
    merged = q.source["dataset"]
    for name in pt.dtype.names:
        expect = pt[name][np.argsort(pt["uid"])][np.searchsorted(np.sort(pt["uid"]),
                                                                 merged["uid"])]
        assert merged[name].tobytes() == expect.tobytes(), name


def test_passthrough_main_fields_win(tmp_path):
    pt = np.load(PASS)
    clash = np.empty(len(pt), dtype=pt.dtype.descr + [("ctf/df1_A", "<f4")])
    for n in pt.dtype.names:
        clash[n] = pt[n]
    clash["ctf/df1_A"] = -1.0
    p = cs.read_cs(PLAIN, [save_cs(tmp_path / "pt.cs", clash)])
    np.testing.assert_allclose(p.defocus_u_A, np.load(PLAIN)["ctf/df1_A"])


# ----------------------------------------------------------------------------- paths
def make_stacks(root, table, box=None):
    """Create every stack named by blob/path (relative to root), zero-filled, as MRC."""
    import mrcfile
    for path in set(table["blob/path"]):
        path = os.path.join(root, path.decode().lstrip(">"))
        n = int(table["blob/idx"][table["blob/path"] == path].max(initial=0)) + 8
        box = box or int(table["blob/shape"][0][0])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(np.zeros((n, box, box), np.float32))


def test_project_dir_guessed_from_the_cs_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proj = tmp_path / "P3"
    (proj / "J9").mkdir(parents=True)
    table = np.load(PLAIN)
    make_stacks(proj, table, box=8)
    path = save_cs(proj / "J9" / "J9_particles.cs", table)
    p = cs.read_cs(path)
    assert p.project_dir == str(proj)
    assert cs.missing_stacks(p) == []
    cs.require_stacks(p)
    assert p.image_names[0].startswith("000001@J5/extract/")
    # explicit project dir wins; a wrong one leaves the stacks missing (reported, not raised)
    wrong = cs.read_cs(path, project_dir=tmp_path)
    assert wrong.project_dir == str(tmp_path) and len(cs.missing_stacks(wrong)) == 2
    with pytest.raises(InputError, match="--cs-project-dir"):
        cs.require_stacks(wrong)


def test_missing_stacks_use_cryosparc_layout_guess(tmp_path):
    (tmp_path / "P1" / "J7").mkdir(parents=True)
    p = cs.read_cs(save_cs(tmp_path / "P1" / "J7" / "J7_particles.cs", np.load(PLAIN)))
    assert p.project_dir == str(tmp_path / "P1")
    assert len(cs.missing_stacks(p)) == 2


def test_exported_paths_with_gt_prefix(tmp_path, monkeypatch):
    table = np.load(PLAIN)
    descr = [("blob/path", "S90") if d[0] == "blob/path" else d for d in table.dtype.descr]
    exported = np.empty(len(table), dtype=descr)
    for n in table.dtype.names:
        exported[n] = np.char.add(b">", table[n]) if n == "blob/path" else table[n]
    folder = tmp_path / "exports" / "groups" / "P3_J5_particles"
    folder.mkdir(parents=True)
    make_stacks(folder, exported, box=8)
    path = save_cs(folder / "J5_particles_exported.cs", exported)
    monkeypatch.chdir(tmp_path)       # the reader must not depend on the working directory
    p = cs.read_cs(path)
    assert p.project_dir == str(folder)
    assert cs.missing_stacks(p) == []
    ref = cs.read_cs(PLAIN)
    np.testing.assert_array_equal(p.image_names, ref.image_names)   # '>' stripped


# ----------------------------------------------------------------------------- large headers
def many_class_blocks(k=80, n=6, seed=0):
    rng = np.random.default_rng(seed)
    base = np.load(PLAIN)[:n]
    keep = [d for d in base.dtype.descr if not d[0].startswith("alignments3D/")]
    extra = []
    for j in range(k):
        extra += [(f"alignments_class_{j}/pose", "<f4", (3,)),
                  (f"alignments_class_{j}/shift", "<f4", (2,)),
                  (f"alignments_class_{j}/psize_A", "<f4"),
                  (f"alignments_class_{j}/split", "<u4"),
                  (f"alignments_class_{j}/class_posterior", "<f4"),
                  (f"alignments_class_{j}/class", "<u4")]
    table = np.zeros(n, dtype=keep + extra)
    for d in keep:
        table[d[0]] = base[d[0]]
    for j in range(k):
        table[f"alignments_class_{j}/pose"] = rng.normal(size=(n, 3))
        table[f"alignments_class_{j}/shift"] = rng.normal(size=(n, 2))
        table[f"alignments_class_{j}/psize_A"] = 1.3
        table[f"alignments_class_{j}/split"] = np.arange(n) % 2
        table[f"alignments_class_{j}/class_posterior"] = rng.uniform(size=n)
        table[f"alignments_class_{j}/class"] = j
    return table


def test_large_header(tmp_path):
    table = many_class_blocks()
    path = save_cs(tmp_path / "big.cs", table)
    with open(path, "rb") as f:
        f.read(8)
        header_len = int.from_bytes(f.read(4), "little")
    assert header_len > 10000                          # above numpy's default limit
    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (1, 24):
        with pytest.raises(ValueError):
            np.load(path, allow_pickle=False)          # the trap the reader avoids
    p = cs.read_cs(path)
    post = np.stack([table[f"alignments_class_{j}/class_posterior"] for j in range(80)], 1)
    np.testing.assert_array_equal(p.source["input_class"], post.argmax(1))
    assert MAX_HEADER_BYTES > header_len
    # written back with the huge header, and readable by np.load (given the limit)
    out = cs.write_cs(tmp_path / "back.cs", p, labels=np.zeros(len(p), int))
    back = np.load(out, allow_pickle=False, max_header_size=MAX_HEADER_BYTES) \
        if "max_header_size" in np.load.__code__.co_varnames else np.load(out)
    assert back["uid"].tobytes() == table["uid"].tobytes()


# ----------------------------------------------------------------------------- writing
def test_round_trip_keeps_uids_and_untouched_fields_bit_identical(tmp_path):
    p = cs.read_cs(PLAIN, [PASS])
    merged = p.source["dataset"]
    rng = np.random.default_rng(0)
    post = rng.dirichlet(np.ones(3), size=len(p)).astype(np.float32)
    labels = post.argmax(1)
    out = cs.write_cs(tmp_path / "run_particles.cs", p, labels=labels, posteriors=post)
    back = np.load(out, allow_pickle=False)
    assert back.dtype.names == merged.dtype.names          # same fields, same order
    changed = {"alignments3D/class", "alignments3D/class_posterior"}
    for name in merged.dtype.names:
        if name not in changed:
            assert back[name].tobytes() == merged[name].tobytes(), name
            assert back.dtype[name] == merged.dtype[name]
    assert back.dtype["alignments3D/class"] == np.dtype("<u4")
    assert back.dtype["alignments3D/class_posterior"] == np.dtype("<f4")
    np.testing.assert_array_equal(back["alignments3D/class"], labels)
    np.testing.assert_array_equal(back["alignments3D/class_posterior"],
                                  post[np.arange(len(p)), labels])
    # read again: same particles
    again = cs.read_cs(out)
    np.testing.assert_array_equal(again.image_names, p.image_names)
    np.testing.assert_allclose(again.rotations, p.rotations, atol=0)
    # a subset (take) writes exactly its rows
    sub = p.take(np.array([5, 1, 6]))
    rows = np.load(cs.write_cs(tmp_path / "sub.cs", sub), allow_pickle=False)
    assert rows.tobytes() == merged[[5, 1, 6]].tobytes()


def test_written_files_load_with_cryosparc_tools(tmp_path):
    Dataset = pytest.importorskip("cryosparc.dataset", reason="needs cryosparc-tools").Dataset
    p = cs.read_cs(PLAIN, [PASS])
    labels = np.arange(len(p)) % 2
    files = cs.write_class_subsets(tmp_path, p, labels, prefix="run")
    for cs_path, _ in files.values():
        d = Dataset.load(cs_path)
        table = np.load(cs_path, allow_pickle=False)
        assert len(d) == len(table)
        np.testing.assert_array_equal(np.asarray(d["uid"]), table["uid"])
        np.testing.assert_array_equal(np.asarray(d["alignments3D/class"]),
                                      table["alignments3D/class"])


def test_class_subsets_and_csg(tmp_path):
    p = cs.read_cs(PLAIN, [PASS])
    labels = np.array([0, 2, 2, 0, 0, 2, 0, 2])          # class 2 (index 1) stays empty
    post = np.eye(3)[labels] * 0.9 + 0.1 / 3
    core = np.array([True, False, True, True, False, True, True, False])
    files = cs.write_class_subsets(tmp_path, p, labels, post, prefix="run",
                                   subsets={"stable_core": core})
    assert sorted(files) == ["all", "class001", "class003", "stable_core"]
    uids = cs.uids_of(p)
    for key, rows in (("all", np.arange(8)), ("class001", labels == 0),
                      ("class003", labels == 2), ("stable_core", core)):
        table = np.load(files[key][0], allow_pickle=False)
        np.testing.assert_array_equal(table["uid"], uids[rows])
        np.testing.assert_array_equal(table["alignments3D/class"], labels[rows])
        text = open(files[key][1]).read()
        name = os.path.basename(files[key][0])
        slots = sorted({n.split("/")[0] for n in table.dtype.names if "/" in n})
        try:
            import yaml
        except ImportError:
            assert text.count(f"metafile: '>{name}'") == len(slots)
            continue
        doc = yaml.safe_load(text)
        assert doc["group"]["type"] == "particle"
        assert sorted(doc["results"]) == slots
        for slot, entry in doc["results"].items():
            assert entry["metafile"] == ">" + name
            assert os.path.exists(os.path.join(os.path.dirname(files[key][1]),
                                               entry["metafile"][1:]))
            assert entry["num_items"] == len(table)
            assert entry["type"] == f"particle.{slot}"


def test_multiclass_input_gets_alignments3d_on_write(tmp_path):
    p = cs.read_cs(fx("synthetic_multiclass_v44.cs"))
    table = np.load(fx("synthetic_multiclass_v44.cs"))
    out = np.load(cs.write_cs(tmp_path / "o.cs", p, labels=np.zeros(8, int)))
    k = p.source["input_class"]
    poses = np.stack([table[f"alignments_class_{j}/pose"] for j in range(3)], 1)
    assert out["alignments3D/pose"].tobytes() == poses[np.arange(8), k].tobytes()
    for name in table.dtype.names:
        assert out[name].tobytes() == table[name].tobytes()
    again = cs.read_cs(tmp_path / "o.cs")             # now a plain alignments3D file
    np.testing.assert_allclose(again.rotations, p.rotations, atol=0)
    np.testing.assert_allclose(again.shifts_A, p.shifts_A, atol=0)


def test_star_with_uids_goes_back_to_cs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = cs.read_cs(PLAIN, [PASS])
    write_particles_star("p.star", p, extra_columns=cs.star_columns(p))
    s = read_star("p.star")
    np.testing.assert_array_equal(cs.uids_of(s), cs.uids_of(p))
    out = np.load(cs.write_cs("back.cs", s), allow_pickle=False)
    orig = np.load(PLAIN)
    np.testing.assert_array_equal(out["uid"], orig["uid"])
    np.testing.assert_array_equal(out["blob/idx"], orig["blob/idx"])
    np.testing.assert_array_equal(out["blob/path"], orig["blob/path"])
    back = cs.read_cs("back.cs")
    np.testing.assert_allclose(back.rotations, p.rotations, atol=2e-5)
    np.testing.assert_allclose(back.shifts_A, p.shifts_A, atol=1e-5)
    np.testing.assert_allclose(back.defocus_u_A, p.defocus_u_A, atol=1e-2)
    np.testing.assert_allclose(back.defocus_angle_deg, p.defocus_angle_deg, atol=1e-4)
    np.testing.assert_array_equal(back.random_subset, p.random_subset)
    np.testing.assert_array_equal(back.optics_group, p.optics_group)


def test_uid_beyond_int64_survives_star(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = np.load(PLAIN)
    table["uid"][0] = np.iinfo(np.uint64).max
    table["uid"][1] = 2 ** 63 + 12345
    p = cs.read_cs(save_cs("u.cs", table))
    write_particles_star("u.star", p, extra_columns=cs.star_columns(p))
    np.testing.assert_array_equal(cs.uids_of(read_star("u.star")), table["uid"])


def test_star_without_uids_cannot_become_cs(tmp_path):
    s = read_star(fx("pyem_synthetic_particles.star"))
    with pytest.raises(InputError, match="rlnHetclassUid"):
        cs.write_cs(tmp_path / "x.cs", s)
    assert not os.path.exists(tmp_path / "x.cs")


def test_relion_stack_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proj = tmp_path / "P3"
    (proj / "J9").mkdir(parents=True)
    make_stacks(proj, np.load(PLAIN), box=8)
    p = cs.read_cs(save_cs(proj / "J9" / "J9_particles.cs", np.load(PLAIN)))
    linked, links = cs.relion_stack_paths(p, tmp_path / "out_stacks")
    assert len(links) == 2
    assert all(n.split("@")[1].startswith("out_stacks/J5/extract/") and n.endswith(".mrcs")
               for n in linked.image_names)
    for link in links:
        assert os.path.realpath(link).startswith(str(proj / "J5"))
    linked2, links2 = cs.relion_stack_paths(p, tmp_path / "out_stacks")   # idempotent
    assert links2 == links
    plain, none = cs.relion_stack_paths(p)                 # no links: paths from the cwd
    assert none == [] and all("@P3/J5/extract/" in n for n in plain.image_names)


# ----------------------------------------------------------------------------- bad input
def one_line_error(fn, *args, match=None, **kw):
    with pytest.raises(InputError) as err:
        fn(*args, **kw)
    text = err.value.one_line()
    assert "\n" not in text
    if match:
        assert match in text, text
    return text


def test_bad_input(tmp_path):
    data = open(PLAIN, "rb").read()
    trunc = tmp_path / "truncated.cs"
    trunc.write_bytes(data[: len(data) // 2])
    assert "truncated.cs" in one_line_error(cs.read_cs, trunc, match="truncated")
    text = tmp_path / "notes.cs"
    text.write_text("uid,blob/path\n1,a.mrc\n")
    one_line_error(cs.read_cs, text, match="not a CryoSPARC .cs file")
    empty = tmp_path / "empty.cs"
    empty.write_bytes(b"")
    one_line_error(cs.read_cs, empty, match="not a CryoSPARC .cs file")
    one_line_error(cs.read_cs, tmp_path / "absent.cs", match="not found")

    pt = np.load(PASS)
    short = save_cs(tmp_path / "short_pt.cs", pt[:5])
    msg = one_line_error(cs.read_cs, PLAIN, [short], match="lacks 3 of the 8")
    assert "short_pt.cs" in msg

    table = np.load(PLAIN)
    dup = table.copy()
    dup["uid"][3] = dup["uid"][0]
    one_line_error(cs.read_cs, save_cs(tmp_path / "dup.cs", dup), match="duplicated uid")
    dup_pt = pt.copy()
    dup_pt["uid"][1] = dup_pt["uid"][0]
    one_line_error(cs.read_cs, PLAIN, [save_cs(tmp_path / "dup_pt.cs", dup_pt)],
                   match="duplicated uid")

    no_df = table[[n for n in table.dtype.names if n != "ctf/df1_A"]]
    msg = one_line_error(cs.read_cs, save_cs(tmp_path / "nodf.cs", no_df),
                         match="field ctf/df1_A")
    no_pose = table[[n for n in table.dtype.names if not n.startswith("alignments3D/")]]
    one_line_error(cs.read_cs, save_cs(tmp_path / "nopose.cs", no_pose),
                   match="needs particles with poses from a 3D refinement")
    no_uid = table[[n for n in table.dtype.names if n != "uid"]]
    one_line_error(cs.read_cs, save_cs(tmp_path / "nouid.cs", no_uid), match="field uid")
    nan = table.copy()
    nan["alignments3D/pose"][2] = np.nan
    one_line_error(cs.read_cs, save_cs(tmp_path / "nan.cs", nan), match="alignments3D/pose")
    save_cs(tmp_path / "plain_array.cs", np.arange(5))
    one_line_error(cs.read_cs, tmp_path / "plain_array.cs", match="named fields")


def test_truncated_csdat(tmp_path):
    """Cut in the header, in a column, in the string heap: one-line errors, no crash."""
    pytest.importorskip("cryosparc.dataset", reason="CSDAT needs cryosparc-tools")
    data = open(CSDAT, "rb").read()
    header_end = 10 + int.from_bytes(data[6:10], "little")
    heap_nul_cut = data.rindex(b"\0", 0, len(data) - 1) - 10   # inside the string heap
    for cut in (8, header_end - 5, header_end + 40, len(data) - 200, len(data) - 3,
                heap_nul_cut):
        bad = tmp_path / f"t{cut}.cs"
        bad.write_bytes(data[:cut])
        one_line_error(cs.read_cs, bad, match="CSDAT")
    # a cut just after a NUL of the heap leaves strings empty: caught as an empty stack path
    first_path_end = data.index(b"particles.mrc\0") + len(b"particles.mrc\0")
    bad = tmp_path / "heap.cs"
    bad.write_bytes(data[:first_path_end])
    one_line_error(cs.read_cs, bad, match="empty stack path")
