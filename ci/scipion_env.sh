#!/usr/bin/env bash
# Create .venv-scipion: hetclass + the scipion extra (scipion-pyworkflow, scipion-em) + test deps
# + mpi4py (the mpi extra: the protocols launch MPI runs through Scipion's runJob).
#
# Scipion pins numpy==1.26.1 (and scipy<=1.10 through scipion-em), so this venv is also where
# CI tests hetclass's core on numpy 1.26 / pandas 2. "pandas<3" is given explicitly: without
# it pip first picks pandas 3 (numpy >= 2), then backtracks into scipion-em releases that
# pin biopython versions without Python 3.11 wheels and fails building them from source.
# scipion-em-relion is optional: the convention test checks our converter against it.
#
# Usage: bash ci/scipion_env.sh [venv-dir]      (default .venv-scipion, in the repo root)
# Then:  .venv-scipion/bin/python -m pytest tests/test_scipion_convert.py tests/test_scipion_plugin.py
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${1:-.venv-scipion}"
PY="${PYTHON:-python3}"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[scipion,test,mpi]" \
    "scipion-pyworkflow>=3.11" "scipion-em>=3.11" "pandas<3"
# optional reference for the convention test; never let it change numpy
"$VENV/bin/python" -m pip install --quiet scipion-em-relion "numpy==1.26.1" "pandas<3" \
    || echo "scipion-em-relion not installed: the convention test will skip its cross-check"

"$VENV/bin/python" - <<'EOF'
import numpy, pandas, scipy
import hetclass.pipeline, hetclass.engine          # core imports on numpy 1.26
import pyworkflow, pwem, scipion_hetclass.protocols  # plugin imports
assert numpy.__version__.startswith("1.26"), numpy.__version__
assert int(pandas.__version__.split(".")[0]) < 3, pandas.__version__
print(f"scipion venv ok: numpy {numpy.__version__}, pandas {pandas.__version__}, "
      f"scipy {scipy.__version__}, pyworkflow {pyworkflow.__version__}")
EOF
echo "scipion venv ready in $(( $(date +%s) - start )) s: $VENV"
