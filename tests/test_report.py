"""report.html: exists, is self-contained, embeds real PNG figures; no pyplot state."""

import base64
import re
import subprocess
import sys
import textwrap

import numpy as np

from hetclass.stability.analysis import StabilityResult
from hetclass.stability.outputs import exhaustive_key_table
from hetclass.stability.replicates import ReplicateRun, consensus_maps
from hetclass.stability.report import (
    fig_tree,
    figure_to_data_uri,
    format_key_tables,
    write_exhaustive_report,
    write_stability_report,
)
from hetclass.stability.scores import score_replicates, single_class_scores
from hetclass.stability.verdict import heterogeneity_verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_result(rng, n=300, r=3, box=12):
    truth = np.repeat([0, 1], [180, 120])
    runs, per_k, maps, halves = {}, {1: single_class_scores(n, r)}, {}, {}
    for k in (2, 3):
        labels = np.array([rng.permutation(k)[np.where(rng.random(n) < 0.9, truth,
                                                        rng.integers(0, k, n))] for _ in range(r)])
        post = np.zeros((r, n, k), np.float32)
        post[np.arange(r)[:, None], np.arange(n)[None, :], labels] = 1.0
        hist = [[{"iteration": i + 1, "class_fractions": list(rng.dirichlet(np.ones(k)))}
                 for i in range(4)] for _ in range(r)]
        run = ReplicateRun(k=k, rows=np.arange(n), labels=labels, posteriors=post,
                           maps=rng.normal(size=(r, k, box, box, box)).astype(np.float32),
                           half_maps=rng.normal(size=(r, 2, k, box, box, box)).astype(np.float32),
                           fsc=np.ones((r, k, box // 2 + 1)), resolution_A=np.full((r, k), 10.0),
                           histories=hist, seconds=np.ones(r), pixel_size_A=4.0, subsample=None)
        s = score_replicates(labels, k, posteriors=list(post), rng=rng)
        runs[k], per_k[k] = run, s
        maps[k], halves[k] = consensus_maps(run, s.perms)
    verdict = heterogeneity_verdict(per_k, maps, halves)
    return StabilityResult(k_values=[1, 2, 3], rows=np.arange(n), per_k=per_k, runs=runs,
                           maps=maps, half_maps=halves, verdict=verdict, chosen_k=2,
                           n_replicates=r, seed=0, subsample=None, pixel_size_A=4.0)


def _summary(result):
    per_k = {str(k): s.to_dict() for k, s in result.per_k.items()}
    classes = per_k["2"]["classes"]
    for c in classes:
        c["core_resolution_A"] = 12.5
    return {"input": {"n_particles": 300, "particles": "p.star"},
            "parameters": {"k_values": [1, 2, 3], "replicates": 3, "subsample": None, "seed": 0},
            "recommended_classes": result.verdict.recommended_k,
            "heterogeneity": result.verdict.heterogeneity, "reasons": result.verdict.reasons,
            "consensus_k": 2, "classes": classes, "per_k": per_k,
            "evidence": result.verdict.evidence, "files": {"summary.json": "summary.json"},
            "continuous_particles": {"star": "continuous_particles.star", "n_particles": 300}}


def _embedded_pngs(text):
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def _assert_self_contained(text):
    # every src/href is a data: URI or an in-page anchor; no scripts or stylesheets from files
    for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert ref.startswith("data:") or ref.startswith("#"), ref
    assert "<script" not in text and "<link" not in text


def test_stability_report_is_self_contained_with_images(tmp_path):
    rng = np.random.default_rng(0)
    result = _fake_result(rng)
    summary = _summary(result)
    maps = [result.maps[2][0], result.maps[2][1]]
    fsc = {"class 1": np.linspace(1, 0, 7), "class 2": np.linspace(1, -0.1, 7)}
    path = tmp_path / "report.html"
    write_stability_report(path, summary, result, maps, fsc, 12, 4.0)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    _assert_self_contained(text)
    pngs = _embedded_pngs(text)
    # stability vs K, class sizes, Jaccard, ARI, NMI, histogram, FSC, slices + 2 for K=3
    assert len(pngs) >= 10
    assert all(p.startswith(PNG_MAGIC) and len(p) > 2000 for p in pngs)
    for needle in ("Recommended classes", summary["heterogeneity"], summary["classes"][0]["band"],
                   "continuous_particles.star", "cryoDRGN"):
        assert needle in text
    assert not list(tmp_path.glob(".tmp-*"))                    # atomic write left nothing


def test_key_tables_text():
    rng = np.random.default_rng(1)
    summary = _summary(_fake_result(rng))
    text = format_key_tables(summary)
    assert "stability per K:" in text and "classes at K = 2" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("K "))
    assert [line.split()[0] for line in lines[header + 1: header + 4]] == ["1", "2", "3"]
    assert f"recommended classes: {summary['recommended_classes']}" in text


def test_exhaustive_report_and_tree_picture(tmp_path):
    leaf = {"id": "1.2", "depth": 1, "n_particles": 40, "decision": "leaf",
            "reason": "too small", "resolution_A": 15.0, "stability": None, "children": []}
    tree = {"id": "1", "depth": 0, "n_particles": 100, "decision": "split", "reason": None,
            "resolution_A": 12.0, "stability": {"min_class_jaccard": 0.9},
            "children": [dict(leaf, id="1.1", n_particles=60, reason="unstable split"), leaf]}
    assert figure_to_data_uri(fig_tree(tree)).startswith("data:image/png;base64,")
    summary = {"tree": tree, "parameters": {"min_class_size": 20, "max_depth": 3, "replicates": 3},
               "leaves": [{"id": "1.1", "n_particles": 60, "reason": "unstable split",
                           "resolution_A": 14.0, "star": "a.star", "map": "a.mrc"},
                          {"id": "1.2", "n_particles": 40, "reason": "too small",
                           "resolution_A": 15.0, "resolution_status": "crop_limit",
                           "star": "b.star", "map": "b.mrc"}]}
    test = {"pairs": [{"children": [1, 2], "fsc_children": [1, 0.8, 0.3, 0.1],
                       "fsc_null_mean": [1, 0.95, 0.7, 0.4], "mean_fsc_deficit": 0.3,
                       "threshold": 0.02}], "box_px": 6, "pixel_size_A": 4.0}
    rng = np.random.default_rng(2)
    path = tmp_path / "report.html"
    write_exhaustive_report(path, summary, [rng.normal(size=(8, 8, 8))] * 2, ["leaf 1", "leaf 2"],
                            {"1": test})
    text = path.read_text()
    _assert_self_contained(text)
    pngs = _embedded_pngs(text)
    assert len(pngs) == 3 and all(p.startswith(PNG_MAGIC) for p in pngs)
    assert "unstable split" in text and "too small" in text
    # a resolution the FSC never reached inside the crop is shown as a bound, not measured
    assert "<td>14.0 Å</td>" in text and "<td>≤ 15.0 Å (crop limit)</td>" in text
    table = exhaustive_key_table(summary)
    assert "14.0 A" in table and "<= 15.0 A (crop limit)" in table


def test_report_uses_no_pyplot():
    code = textwrap.dedent("""
        import sys, numpy as np
        from hetclass.stability.report import fig_matrix, figure_to_data_uri
        figure_to_data_uri(fig_matrix(np.eye(3), "m"))
        assert "matplotlib.pyplot" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----- readable reports (issue 14) ---------------------------------------------------------------
def test_stability_report_tables_not_json(tmp_path):
    """Evidence and files are tables (JSON stays in summary.json); whatever new field or new
    piece of evidence the summary holds appears as a row or column."""
    rng = np.random.default_rng(3)
    result = _fake_result(rng)
    summary = _summary(result)
    summary["evidence"] = dict(summary["evidence"])
    summary["evidence"]["permutation_test"] = {"p_value": 0.0123, "n_permutations": 200,
                                               "per_k": {"2": {"p_value": 0.01, "stat": 3.5},
                                                         "3": {"p_value": 0.4, "stat": 0.2}}}
    summary["per_k"]["2"]["split_p_value"] = 0.0321
    summary["classes"][0]["core_resolution_status"] = "crop_limit"
    summary["files"] = {"consensus_data.star": "consensus_data.star",
                        "stable_core_class001.star": "stable_core_class001.star",
                        "summary.json": "summary.json"}
    path = tmp_path / "report.html"
    write_stability_report(path, summary, result, [], {}, 12, 4.0)
    text = path.read_text(encoding="utf-8")
    assert "<pre>" not in text and '"stability_vs_k"' not in text
    for key in summary["evidence"]:
        assert f"({key})</h3>" in text
    new = text.split("(permutation_test)</h3>", 1)[1].split("<h3>", 1)[0]
    assert "p value" in new and "0.0123" in new and "n permutations" in new and "200" in new
    assert "<th>split p value</th>" in text and "0.032" in text          # new per-K column
    assert "≤ 12.5 Å (crop limit)" in text                                 # core resolution
    files = text.split("<h2>Files</h2>", 1)[1]
    assert "<td>stable_core_class001.star</td><td>the particles of a class" in files


def _chain_tree(n_leaves):
    """A tree of 2 * n_leaves - 1 nodes: a root split into pairs down to n_leaves leaves."""
    def node(i, depth, children=()):
        return {"id": i, "depth": depth, "n_particles": 1000, "decision":
                "split" if children else "leaf", "reason": None if children else
                "no significant map difference", "resolution_A": 9.5,
                "stability": {"min_class_jaccard": 0.91}, "verdict": {"chosen_k": 2},
                "children": list(children)}
    level = [node(f"1.{i}", 3) for i in range(n_leaves)]
    depth = 2
    while len(level) > 1:
        level = [node(f"n{depth}.{i}", depth, level[i:i + 2]) for i in range(0, len(level), 2)]
        depth -= 1
    return level[0]


def test_tree_of_fifteen_nodes_is_readable():
    fig = fig_tree(_chain_tree(8))                              # 15 nodes, 4 levels
    width_in, _ = fig.get_size_inches()
    assert width_in <= 12.0                                     # shown without shrinking
    fig.canvas.draw()
    texts = [t for t in fig.axes[0].texts]
    assert len(texts) == 15 and min(t.get_fontsize() for t in texts) >= 8
    boxes = [t.get_bbox_patch().get_window_extent() for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())


def test_stability_histogram_bins_are_the_attainable_values():
    from hetclass.stability.report import fig_stability_hist, stability_bins
    s = np.array([1.0] * 50 + [0.75] * 10 + [0.25] * 3)
    edges = stability_bins(s, 4)
    np.testing.assert_allclose((edges[:-1] + edges[1:]) / 2, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(stability_bins(np.array([0.33, 0.5, 0.9]), 4),
                               np.linspace(0, 1, 21))
    fig = fig_stability_hist(s, np.linspace(0.5, 1, s.size), 2, 0.8, 4)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [0, 3, 0, 10, 50]
    assert len(fig.axes) == 2                                   # posterior panel


def test_pose_error_text_says_what_the_null_simulated():
    """The report's sentence on pose errors: too small → STAR poses; simulated → moved poses,
    the rigid-motion statistic and, with several starts per null fit, that too."""
    from hetclass.stability.report import pose_error_text
    pose = {"particles": 3000, "rms_displacement_A": 1.9, "likelihood_resolution_A": 13.2,
            "median_rotation_error_deg": 3.7, "median_shift_error_A": 1.0,
            "simulated_in_null": True}
    text = pose_error_text(pose, 3)
    assert "1.9 A" in text and "13.2 A" in text and "best rigid motion" in text
    assert "best of 3 exploration starts" in text
    assert "exploration starts" not in pose_error_text(pose, 1)
    small = pose_error_text(dict(pose, simulated_in_null=False), 1)
    assert "too small to matter" in small and "rigid" not in small
    assert "not measured" in pose_error_text(None)
