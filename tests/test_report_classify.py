"""report.html of ``classify`` and ``demo`` (issue 14): written by every run, self-contained,
the class table marks crop-limit and unresolved resolutions, the FSC and the other figures
are embedded, the demo adds the truth and the ARI; a figure that fails is one warning line,
never a failed run."""

import base64
import json
import os
import re
from types import SimpleNamespace

import numpy as np

from hetclass.reports.classify import Truth, write_classify_report
from hetclass_standalone.main import main as cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pngs(text):
    return {alt: base64.b64decode(b) for alt, b in
            re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)}


def _assert_self_contained(text):
    for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert ref.startswith("data:") or ref.startswith("#"), ref
    assert "<script" not in text and "<link" not in text


def _class_rows(text):
    """The rows of the class table: [class, particles, fraction, probability, resolution, map]."""
    table = text.split("<h2>Classes</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)]
            for r in rows]


def test_classify_writes_a_self_contained_report(tiny_dataset, tmp_path, capsys):
    ds, out = tiny_dataset, tmp_path / "run"
    rc = cli(["classify", "--particles", str(ds.star_path), "--project-dir", str(ds.out_dir),
              "--classes", "2", "--max-iter", "3", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = out / "report.html"
    # the run ends by printing where the report is
    assert captured.out.strip().splitlines()[-1].startswith(f"report: {report}")
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    _assert_self_contained(text)
    pngs = _pngs(text)
    for alt in ("class sizes per iteration", "posterior histogram", "FSC curves",
                "class map slices and projections"):
        assert alt in pngs and pngs[alt].startswith(PNG_MAGIC) and len(pngs[alt]) > 2000, alt
    assert "could not be drawn" not in text
    info = json.loads((out / "run.json").read_text())
    assert info["files"]["report.html"] == "report.html"
    # the class table agrees with run.json, resolution marked by its status
    rows = _class_rows(text)
    assert len(rows) == 2
    labels = np.asarray([int(v) for v in _star_classes(out / "run_data.star")]) - 1
    for j, row in enumerate(rows):
        assert row[0] == str(j + 1)
        assert int(row[1]) == int(np.sum(labels == j))
        res, status = info["resolution_A"][j], info["resolution_status"][j]
        if status == "crop_limit":
            assert row[4] == f"≤ {res:.1f} Å (crop limit)"
        elif status == "unmeasured":
            assert row[4] == "not resolved"
        else:
            assert row[4] == f"{res:.1f} Å"


def _star_classes(path):
    import starfile
    return starfile.read(path, always_dict=True)["particles"]["rlnClassNumber"]


def _fake_result(status, rng, k=3, box=16, n=90):
    labels = np.arange(n) % k
    post = np.full((n, k), 0.1 / (k - 1), np.float32)
    post[np.arange(n), labels] = 0.9
    stats = [{"iteration": i + 1, "changed_pct": 50.0 / (i + 1),
              "class_fractions": [1 / k] * k} for i in range(4)]
    fsc = np.stack([np.linspace(1, -0.1, box // 2 + 1)] * k)
    return SimpleNamespace(labels=labels, posteriors=post, maps=rng.normal(size=(k, box, box, box)),
                           fsc=fsc, resolution_A=np.array([12.34, 16.0, np.nan]),
                           resolution_status=status, class_fractions=np.full(k, 1 / k),
                           pixel_size_A=4.0, stats=stats)


def test_class_table_marks_crop_limit_and_unresolved(tmp_path):
    rng = np.random.default_rng(0)
    status = ["measured", "crop_limit", "unmeasured"]
    result = _fake_result(status, rng)
    run = {"n_particles": 90, "iterations": result.stats, "converged": True,
           "resolution_status": status, "target_resolution_A": 16.0,
           "options": {"convergence_pct": 0.5, "seed": 0}, "files": {}}
    path = tmp_path / "report.html"
    assert write_classify_report(str(path), result, run) == []
    text = path.read_text(encoding="utf-8")
    rows = _class_rows(text)
    assert [r[4] for r in rows] == ["12.3 Å", "≤ 16.0 Å (crop limit)", "not resolved"]
    assert "its resolution was not measured" in text           # the mark is explained
    assert "Recovered classes versus the truth" not in text     # only with a truth


def test_truth_section_with_ari_and_confusion(tmp_path):
    rng = np.random.default_rng(1)
    result = _fake_result(["measured"] * 3, rng)
    truth = np.asarray(result.labels)[::-1].copy()
    truth[:5] = 0
    run = {"n_particles": 90, "iterations": result.stats, "options": {}, "files": {}}
    path = tmp_path / "report.html"
    write_classify_report(str(path), result, run,
                          Truth(labels=truth, state_names=["open", "closed", "gone"], ari=0.777))
    text = path.read_text(encoding="utf-8")
    assert "Adjusted Rand index versus the truth: <b>0.777</b>" in text
    table = text.split("Recovered classes versus the truth", 1)[1].split("</table>", 1)[0]
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (truth, result.labels), 1)
    for i, name in enumerate(["open", "closed", "gone"]):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", table.split(f"<td>{name}</td>", 1)[1])[:3]
        assert [int(c) for c in cells] == expected[i].tolist()
    assert "confusion matrix" in _pngs(text)


def test_a_failing_figure_is_one_warning_and_the_run_succeeds(tiny_dataset, tmp_path, capsys,
                                                              monkeypatch):
    import hetclass.reports.classify as report_module

    def broken(*args, **kwargs):
        raise RuntimeError("no font\nfor you")
    monkeypatch.setattr(report_module, "fig_fsc", broken)
    out = tmp_path / "run"
    rc = cli(["classify", "--particles", str(tiny_dataset.star_path), "--project-dir",
              str(tiny_dataset.out_dir), "--classes", "2", "--max-iter", "2", "--out", str(out),
              "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0
    warning = [ln for ln in err.splitlines() if "report.html" in ln]
    assert len(warning) == 1 and "no font for you" in warning[0]
    assert warning[0].startswith("hetclass classify: warning: ")
    assert "Traceback" not in err and ".py:" not in err
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "could not be drawn" in text and "FSC curves" not in _pngs(text)
    assert (out / "run_data.star").exists() and (out / "run.json").exists()


def test_demo_report_shows_the_truth_and_the_ari(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli(["demo", "--out", str(out), "--particles", "150", "--box", "32",
              "--pixel-size", "6", "--max-iter", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    ari = float(re.search(r"adjusted Rand index vs truth: ([0-9.\-]+)", captured.out).group(1))
    last = captured.out.strip().splitlines()[-1]
    report = out / "classify" / "report.html"
    assert last.startswith(f"report: {report}")
    text = report.read_text(encoding="utf-8")
    _assert_self_contained(text)
    assert f"Adjusted Rand index versus the truth: <b>{ari:.3f}</b>" in text
    for state in ("open", "closed", "no_subunit"):
        assert f"<td>{state}</td>" in text
    assert {"confusion matrix", "FSC curves"} <= set(_pngs(text))
    assert not [p for p in os.listdir(report.parent) if p.startswith(".tmp")]
    # K = 3: the kept start's merge-and-split move is reported with its score and outcome
    assert re.search(r"Merge-and-split move on start \d: classes \d and \d merged, class \d "
                     r"split in two; held-out log-evidence [+-][0-9.]+ per particle", text)
    assert re.search(r"Merge-and-split move on start \d: the particles of classes \d and \d "
                     r"split anew; held-out log-evidence [+-][0-9.]+ per particle", text)
