#!/usr/bin/env bash
# The GPU check of hetclass, as one prepared run on a lent GPU machine (no network there).
#
#   bash benchmarks/gpu_wheels.sh                      # here first: .whl/ with what the image lacks
#   device run: command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540
#
# Steps (each under its own time limit, so one that hangs leaves the others' results):
#   1. the machine: GPU, driver, CuPy / NumPy / SciPy versions;
#   2. the GPU agreement tests (tests/test_gpu_agreement.py: kernels against their NumPy
#      twins, the device pass against the CPU pass, the M-step, a whole fit) and the
#      emulated-kernel tests beside them;
#   3. benchmarks/bench_gpu.py: one EM iteration at the issue-7 target size (1M particles,
#      box 128, K = 10) and at 200k x box 256 x K = 4 with float16 storage;
#   4. end to end: the demo's data classified on the CPU and with --device gpu (same seed):
#      time of each and the ARI of each against the truth and between the two.
# Everything goes to $OUT (gpu_check.log, JSON and JUnit files); the summary at the end is
# what benchmarks/README.md records ("measured on <GPU>", date, commit).
set -u -o pipefail
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SITE=/tmp/hetclass_site
WORK=/tmp/hetclass_gpu_check
rm -rf "$WORK" && mkdir -p "$WORK"

echo "== 0. install (no network: carried wheels, then this checkout)"
WHEELS=${WHEELS:-.whl}     # another folder (or none) to try the script off the device machine
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || { echo "wheel install failed"; exit 3; }
fi
# this checkout without a build: its packages by their installed names (pyproject.toml's
# package-dir), the repository root for hetclass itself
mkdir -p "$SITE"
ln -sfn "$PWD/standalone" "$SITE/hetclass_standalone"
ln -sfn "$PWD/relion_external" "$SITE/hetclass_relion"
export PYTHONPATH=$PWD:$SITE

echo "== 1. machine"
date -u +%Y-%m-%dT%H:%M:%SZ
git rev-parse --short HEAD 2>/dev/null || echo "(no git metadata)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY - <<'EOF'
import cupy, numpy, scipy
from hetclass.gpu import available
print("cupy", cupy.__version__, "numpy", numpy.__version__, "scipy", scipy.__version__)
print("hetclass.gpu.available():", available())
EOF

echo "== 2. agreement tests"
timeout 240 $PY -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" \
    tests/test_gpu_agreement.py tests/test_gpu_kernels_emulated.py
echo "tests exit code: $?"

echo "== 3. bench_gpu"
timeout 120 $PY benchmarks/bench_gpu.py --n 1000000 --box 128 --classes 10 --precision auto \
    --json "$OUT/bench_gpu_1M_b128_K10.json"
echo "bench_gpu (1M, box 128, K 10) exit code: $?"
timeout 90 $PY benchmarks/bench_gpu.py --n 200000 --box 256 --classes 4 --precision float16 \
    --json "$OUT/bench_gpu_200k_b256_K4.json"
echo "bench_gpu (200k, box 256, K 4) exit code: $?"

echo "== 4. end to end: demo data, CPU and GPU"
timeout 150 $PY -m hetclass_standalone.main demo --out "$WORK/demo" --threads 16
echo "demo (CPU) exit code: $?"
timeout 120 $PY -m hetclass_standalone.main classify --particles "$WORK/demo/data/particles.star" \
    --project-dir "$WORK/demo/data" --classes 3 --device gpu --out "$WORK/gpu" --quiet
echo "classify --device gpu exit code: $?"
$PY - "$WORK" <<'EOF' | tee "$OUT/end_to_end.txt"
import json, os, sys
import pandas as pd
import starfile
from hetclass.stability.scores import adjusted_rand_index as ari
work = sys.argv[1]
truth = pd.read_csv(os.path.join(work, "demo", "data", "truth.csv"))
rows = []
for name, run in (("cpu", os.path.join(work, "demo", "classify")), ("gpu", os.path.join(work, "gpu"))):
    try:
        data = starfile.read(os.path.join(run, "run_data.star"))["particles"]
        info = json.load(open(os.path.join(run, "run.json")))
    except (OSError, KeyError, ValueError) as exc:
        print(f"{name}: no result ({exc})")
        continue
    label = dict(zip(data["rlnImageName"], data["rlnClassNumber"]))
    labels = [label[n] for n in truth["image_name"]]
    rows.append((name, labels))
    print(f"{name}: ARI vs truth {ari(truth['state_index'].to_numpy(), labels):.4f}, "
          f"EM {info['timings_s']['em']:.1f} s, total {info['timings_s']['total']:.1f} s, "
          f"device {info.get('device')}")
if len(rows) == 2:
    print(f"cpu vs gpu labels: ARI {ari(rows[0][1], rows[1][1]):.4f}")
EOF
echo "== done"
