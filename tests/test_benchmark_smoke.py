"""Smoke test of benchmarks/bench_classify.py: a tiny run end to end (no timing assertions).

Runs the script as a user would (a subprocess, ``--quick``) on 200 simulated particles: it
must exit 0, print the table with a hetclass row (and a relion_refine row plus the ratio line
where RELION is installed) and write the JSON with finite timings, a peak RSS and an ARI.
"""

import json
import os
import shutil
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_classify.py")


def test_benchmark_quick_prints_table(tmp_path):
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, SCRIPT, "--n", "200", "--box", "32", "--classes", "2", "--quick",
           "--threads", "2", "--workdir", str(tmp_path / "work"), "--json", str(out_json)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    for col in ("tool", "s/iter", "total_s", "peak_RSS_MB", "cropped_MB", "ARI"):
        assert col in header
    rows = {ln.split()[0]: ln.split() for ln in lines[1:] if len(ln.split()) == len(header)
            and ln.split()[0] in ("hetclass", "relion_refine")}
    assert "hetclass" in rows
    assert rows["hetclass"][header.index("n")] == "200"
    assert rows["hetclass"][header.index("K")] == "2"

    doc = json.loads(out_json.read_text())
    het = [r for r in doc["rows"] if r["tool"] == "hetclass"][0]
    assert het["iterations"] >= 1 and het["s_per_iter"] > 0 and het["time_to_result_s"] > 0
    assert het["peak_rss_bytes"] > 10 * 1024 ** 2          # a Python process with numpy loaded
    assert het["n_coefficients"] > 0 and het["throughput"] > 0
    assert het["ari"] is not None and -1.0 <= het["ari"] <= 1.0
    assert os.path.exists(os.path.join(tmp_path, "work", "runs_n200_K2", "hetclass_K2", "run.json"))

    if shutil.which("relion_refine") and shutil.which("relion_reconstruct"):
        assert "relion_refine" in rows
        rel = [r for r in doc["rows"] if r["tool"] == "relion_refine"][0]
        assert rel["iterations"] == 2 and rel["ari"] is not None
        assert len(doc["ratios"]) == 1 and doc["ratios"][0]["time_ratio"] > 0
        assert any(ln.startswith("n=200 K=2: time RELION/hetclass") for ln in lines)
    assert any(ln.startswith("code: hetclass") for ln in lines)
