"""The allocator setting changes where arrays live, never what a fit computes."""

import subprocess
import sys

import pytest

from hetclass.allocator import reuse_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_reuse_freed_memory_applies_on_linux_and_arrays_still_work():
    # in a child process: the setting is process-wide
    code = ("import numpy as np; from hetclass.allocator import reuse_freed_memory as r; "
            "ok = r(); a = [np.ones(2 ** 24) for _ in range(3)]; del a; "
            "b = np.zeros(2 ** 24); print(ok, float(b.sum()), r())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "0.0", "True"]


def test_reuse_freed_memory_is_a_bool_here():
    assert isinstance(reuse_freed_memory(), bool)
