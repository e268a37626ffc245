"""report.html: exists, is self-contained, embeds real PNG figures; no pyplot state."""

import base64
import re
import subprocess
import sys
import textwrap

import numpy as np

from hetclass.stability.analysis import StabilityResult
from hetclass.stability.replicates import ReplicateRun, consensus_maps
from hetclass.stability.report import (fig_tree, figure_to_data_uri, format_key_tables,
                                       write_exhaustive_report, write_stability_report)
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
    header = next(i for i, l in enumerate(lines) if l.strip().startswith("K "))
    assert [l.split()[0] for l in lines[header + 1: header + 4]] == ["1", "2", "3"]
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
                           "resolution_A": 15.0, "star": "b.star", "map": "b.mrc"}]}
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
