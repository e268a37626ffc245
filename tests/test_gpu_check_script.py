"""benchmarks/gpu_check.sh, the prepared run for a lent GPU machine, must work there first time.

It cannot run on CI (no GPU, and the run itself takes minutes), so what can break silently is
checked here: both scripts parse, and the build-free import of this checkout that the check
uses (the front ends linked under their installed names, as pyproject.toml's package-dir
maps them) gives the same modules a ``pip install`` would.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SCRIPTS = [os.path.join(ROOT, "benchmarks", name) for name in ("gpu_check.sh", "gpu_wheels.sh")]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_build_free_import_finds_every_front_end(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    with open(SCRIPTS[0]) as fh:
        text = fh.read()
    links = {}
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["ln", "-sfn"]:
            source = words[2].strip('"').replace("$PWD/", "")
            target = os.path.basename(words[3].strip('"'))
            links[target] = source
    assert links == {"hetclass_standalone": "standalone", "hetclass_relion": "relion_external"}
    for target, source in links.items():
        os.symlink(os.path.join(ROOT, source), site / target)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(site)]))
    code = ("import hetclass, hetclass_standalone.main, hetclass_relion.main; "
            "print(hetclass.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert os.path.dirname(os.path.abspath(proc.stdout.strip())) == os.path.join(ROOT, "hetclass")
