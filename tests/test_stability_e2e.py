"""End-to-end stability and exhaustive runs on small simulated data with known truth.

Data: the procedural phantom (hetclass.phantoms) projected with CTF and noise by
hetclass.simulate, 32 px boxes at 5.2 A/px (classification at about 21 A). At SNR 0.1, 1500
particles separate the open and closed states (30 deg hinge) reproducibly; a uniform hinge
continuum 0-40 deg bins into reproducible classes whose neighbours, classified again
together, are one spread of particles (continuous); the same path beside a discrete variant
is mixed; one state never splits reproducibly.
"""

import json
import os

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from relion_tools import relion_available, run_relion

from hetclass.io.loader import load_particles
from hetclass.phantoms import phantom_model, phantom_states
from hetclass.pipeline import ClassifyOptions
from hetclass.reports.labels import resolution_text
from hetclass.simulate import continuous_dataset, simulate_dataset
from hetclass.stability.analysis import stability_job
from hetclass.stability.scores import adjusted_rand_index
from hetclass_standalone.main import main as cli

SIM = dict(box_px=32, pixel_size_A=5.2, snr=0.1, seed=7)
N = 1500


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("stability_e2e")


def _map(path):
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float64)


def _masked_cc(volume, reference):
    """Correlation of ``volume`` with ``reference`` over the reference's strongest 20 %."""
    inside = reference > np.percentile(reference, 80)
    return float(np.corrcoef(volume[inside], reference[inside])[0, 1])


def _truth(ds_dir):
    return pd.read_csv(os.path.join(ds_dir, "truth.csv"))


def _options(**kw):
    return ClassifyOptions(classes=2, max_iter=15, seed=7, **kw)


@pytest.fixture(scope="module")
def two_states(data_root):
    return simulate_dataset(data_root / "two", phantom_states("two"), n_particles=N, **SIM)


def test_two_states_recommend_two_stable_classes(two_states, data_root, capsys):
    ds = two_states
    out = data_root / "two_out"
    rc = cli(["stability", "--particles", ds.star_path, "--project-dir", ds.out_dir,
              "--classes", "1-4", "--replicates", "4", "--max-iter", "15", "--seed", "7",
              "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "recommended classes: 2" in printed and "heterogeneity: discrete" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "hetclass.stability/1"
    assert summary["recommended_classes"] == 2
    assert summary["heterogeneity"] == "discrete"
    assert summary["consensus_k"] == 2
    for c in summary["classes"]:
        assert c["band"] in ("stable", "highly stable") and c["random_overlap_pass_fraction"] == 1.0
        assert c["core_resolution_A"] is not None and c["core_resolution_A"] < 40.0
    # forcing K = 4 on two states: the extra classes are unstable
    k4 = summary["per_k"]["4"]
    assert not k4["all_stable"]
    assert sum(c["band"] == "unstable" for c in k4["classes"]) >= 2
    assert summary["per_k"]["2"]["mean_ari"] > 0.8 > summary["per_k"]["4"]["mean_ari"]

    # consensus_data.star: input columns + consensus + stability + max posterior
    star = starfile.read(out / "consensus_data.star", always_dict=True)
    parts = star["particles"]
    original = starfile.read(ds.star_path, always_dict=True)["particles"]
    assert len(parts) == N
    assert set(original.columns) <= set(parts.columns)
    np.testing.assert_array_equal(parts["rlnImageName"], original["rlnImageName"])
    assert {"rlnClassNumber", "rlnHetclassStability", "rlnMaxValueProbDistribution"} <= set(parts.columns)
    labels = parts["rlnClassNumber"].to_numpy() - 1
    truth = _truth(ds.out_dir)["state_index"].to_numpy()
    assert adjusted_rand_index(labels, truth) > 0.6
    stab = parts["rlnHetclassStability"].to_numpy()
    assert stab.min() >= 0 and stab.max() == 1.0 and np.mean(stab >= 0.75) > 0.9
    # stable cores and their maps at the input box and pixel size
    for c in summary["classes"]:
        core = starfile.read(out / c["core_star"], always_dict=True)["particles"]
        assert len(core) == c["core_size"] > 0.5 * c["size"]
        with mrcfile.open(out / c["map"]) as m:
            assert m.data.shape == (32, 32, 32)
            assert float(m.voxel_size.x) == pytest.approx(5.2)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8
    if relion_available("relion_star_handler"):
        # RELION reads the file (keeping the unknown stability column) and selects a class
        sel = data_root / "class2.star"
        run_relion(["relion_star_handler", "--i", str(out / "consensus_data.star"), "--o",
                    str(sel), "--select", "rlnClassNumber", "--minval", "2", "--maxval", "2"])
        back = starfile.read(sel, always_dict=True)["particles"]
        assert len(back) == summary["classes"][1]["size"]
        assert "rlnHetclassStability" in back.columns


def test_one_state_is_homogeneous(data_root):
    ds = simulate_dataset(data_root / "one", {"open": phantom_model("open")}, n_particles=N, **SIM)
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    summary, result = stability_job(particles, _options(), str(data_root / "one_out"), [1, 2, 3],
                                    n_replicates=3, particles_path=ds.star_path)
    assert summary["recommended_classes"] == 1
    assert summary["heterogeneity"] == "homogeneous", summary["reasons"]
    # a split of one state is not reproducible (doubtful at best: EM cuts the same noise
    # direction again from different seeds)
    assert summary["per_k"]["2"]["classes"][0]["band"] in ("unstable", "doubtful")
    # the K=2 maps differ no more than the classes of simulated one-state data (the calibrated
    # null; against half-map noise alone they do differ: the classification selects noise)
    assert not summary["evidence"]["heterogeneity_test"]["beyond_null"]
    assert summary["continuous_particles"] is None
    assert not os.path.exists(data_root / "one_out" / "continuous_particles.star")
    # K = 1 consensus: every particle in class 1, one map from all of them
    assert summary["consensus_k"] == 1 and summary["classes"][0]["size"] == N


def test_hinge_continuum_is_continuous(data_root):
    ds = continuous_dataset(data_root / "cont", n_particles=N, hinge_range_deg=(0.0, 40.0), **SIM)
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    out = data_root / "cont_out"
    summary, result = stability_job(particles, _options(), str(out), [1, 2, 3, 4],
                                    n_replicates=3, particles_path=ds.star_path)
    assert summary["heterogeneity"] == "continuous", (summary["reasons"], summary["evidence"])
    cont = summary["continuous_particles"]
    assert cont is not None and cont["n_particles"] == N
    back = starfile.read(out / cont["star"], always_dict=True)["particles"]
    assert len(back) == N and {"rlnAngleRot", "rlnDefocusU", "rlnImageName"} <= set(back.columns)
    # the consensus classes order the particles along the hinge
    hinge = _truth(ds.out_dir)["hinge_deg"].to_numpy()
    k = summary["consensus_k"]
    if k >= 2:
        means = [hinge[result.per_k[k].consensus == c].mean() for c in range(k)]
        assert max(means) - min(means) > 10.0


def test_hinge_continuum_plus_discrete_variant_is_mixed(data_root):
    # 60 % on a 0-40 deg hinge path (11 conformations), 40 % a variant without subunit D
    angles = np.linspace(0.0, 40.0, 11)
    states = {f"hinge{a:04.1f}": phantom_model("open", hinge_deg=a) for a in angles}
    states["no_subunit"] = phantom_model("no_subunit")
    pops = [0.6 / angles.size] * angles.size + [0.4]
    n = 2000
    ds = simulate_dataset(data_root / "mixed", states, populations=pops, n_particles=n, **SIM)
    particles = load_particles(ds.star_path, project_dir=ds.out_dir)
    out = data_root / "mixed_out"
    summary, _ = stability_job(particles, _options(), str(out), [1, 2, 3, 4], n_replicates=3,
                               particles_path=ds.star_path)
    assert summary["heterogeneity"] == "mixed", (summary["reasons"], summary["evidence"])
    cont = summary["continuous_particles"]
    back = starfile.read(out / cont["star"], always_dict=True)["particles"]
    truth = _truth(ds.out_dir).set_index("image_name").loc[back["rlnImageName"]]
    on_path = truth["state_name"].str.startswith("hinge").to_numpy()
    assert on_path.mean() >= 0.85                 # the continuous part is the hinge path (60 % of all) ...
    assert on_path.sum() >= 0.8 * 0.6 * n         # ... and holds most of it


def test_exhaustive_three_states_two_levels(data_root, capsys):
    # open / closed / no_subunit: the hinge (closed) separates first, the subunit second
    ds = simulate_dataset(data_root / "three", phantom_states("demo"),
                          populations=[0.3, 0.4, 0.3], n_particles=2400,
                          **dict(SIM, snr=0.25, seed=18))
    out = data_root / "three_out"
    rc = cli(["exhaustive", "--particles", ds.star_path, "--project-dir", ds.out_dir,
              "--min-class-size", "400", "--max-depth", "3", "--replicates", "3",
              "--max-iter", "15", "--seed", "4", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "leaves:" in printed and "reassigned among the leaves:" in printed
    tree = json.loads((out / "tree.json").read_text())
    assert tree["schema"] == "hetclass.exhaustive/1"
    leaves = tree["leaves"]
    assert len(leaves) == 3, [(lf["id"], lf["reason"]) for lf in leaves]
    # each leaf is one state: it stops because its split is not reproducible, its halves'
    # maps do not differ beyond the null, or it is too small to split further
    assert {lf["reason"] for lf in leaves} <= {"unstable split", "too small",
                                               "no significant map difference"}
    # each leaf's resolution says what it is: measured, or a bound where the FSC stayed above
    # 0.143 up to the crop, as printed
    for lf in leaves:
        assert lf["resolution_status"] in ("measured", "crop_limit", "unmeasured")
        assert resolution_text(lf["resolution_A"], lf["resolution_status"]) in printed
    root = tree["tree"]
    assert root["decision"] == "split" and root["map_test"]["significant"]
    # first level separates the hinge (closed) from the two open forms
    truth = _truth(ds.out_dir)["state_name"].to_numpy()
    index_of = {name: i for i, name in enumerate(ds.image_names)}
    dominant = []
    total = 0
    for lf in leaves:
        rows = starfile.read(out / lf["star"], always_dict=True)["particles"]
        idx = np.array([index_of[name] for name in rows["rlnImageName"]])
        states, counts = np.unique(truth[idx], return_counts=True)
        assert counts.max() / counts.sum() > 0.75
        dominant.append(states[np.argmax(counts)])
        total += len(rows)
        assert os.path.exists(out / lf["map"])
    assert sorted(dominant) == ["closed", "no_subunit", "open"]
    assert total == 2400
    # every particle classified once more among the leaves: the tree's leaf kept beside the
    # new one, as accurate against the truth as the leaves at least
    tree_leaf = starfile.read(out / "leaves_data.star", always_dict=True)["particles"]
    again = starfile.read(out / "leaves_reassigned_data.star", always_dict=True)["particles"]
    assert list(again["rlnImageName"]) == list(tree_leaf["rlnImageName"])
    assert np.array_equal(again["rlnHetclassTreeLeaf"], tree_leaf["rlnClassNumber"])
    moved = tree["reassigned"]
    assert moved["particles_moved"] == int(np.sum(again["rlnClassNumber"] != again["rlnHetclassTreeLeaf"]))
    assert sum(moved["class_sizes"]) == 2400 and moved["classes"] == 3
    assert len(moved["resolution_A"]) == len(moved["resolution_status"]) == 3
    # the reassigned classes' maps beside it, at the input's box and pixel size: each is
    # nearest the true map of its own class's dominant state, and as close to it as that
    # state's leaf map
    true_maps = {name: _map(path) for name, path in ds.map_paths.items()}
    leaf_state = {i + 1: st for i, st in enumerate(dominant)}
    for c, name in enumerate(moved["maps"]):
        assert name == f"leaves_reassigned_class{c + 1:03d}.mrc"
        for path in [name] + moved["half_maps"][c]:
            with mrcfile.open(out / path, permissive=True) as m:
                assert m.data.shape == (SIM["box_px"],) * 3
                assert abs(float(m.voxel_size.x) - SIM["pixel_size_A"]) < 1e-3
        members = again["rlnClassNumber"].to_numpy() == c + 1
        states, counts = np.unique(truth[[index_of[n] for n in again["rlnImageName"][members]]],
                                   return_counts=True)
        own = states[np.argmax(counts)]
        cc = {st: _masked_cc(_map(out / name), ref) for st, ref in true_maps.items()}
        assert max(cc, key=cc.get) == own, (c, own, cc)
        leaf = next(j for j, st in leaf_state.items() if st == own)
        assert cc[own] >= _masked_cc(_map(out / leaves[leaf - 1]["map"]), true_maps[own]) - 0.01
    state = np.unique(truth[[index_of[name] for name in again["rlnImageName"]]],
                      return_inverse=True)[1]
    ari_tree = adjusted_rand_index(tree_leaf["rlnClassNumber"].to_numpy(), state)
    ari_again = adjusted_rand_index(again["rlnClassNumber"].to_numpy(), state)
    assert ari_again >= ari_tree - 0.01, (ari_tree, ari_again)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    # the report's Files table names every map a user gets, the reassigned ones included
    for name in moved["maps"] + [h for pair in moved["half_maps"] for h in pair]:
        assert f"<td>{name}</td>" in html, name
    assert "map of a reassigned class" in html
