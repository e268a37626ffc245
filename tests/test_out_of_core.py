"""Data larger than memory: the cropped Fourier cache (``--cache``) and ``--max-memory``.

* streaming the data from a cache on disk gives exactly the labels, posteriors and map bytes
  of the in-memory default (same seed), also for replicates run in threads;
* a second run with the same inputs reuses the cache without reading a single image; a
  changed input (target resolution, particle metadata, a re-written stack) builds a new one;
* an interrupted build (an exception, or a process killed mid-write) never leaves a cache
  that is taken as complete; a directory that is not a hetclass cache is refused;
* under ``mpirun -n 2`` the ranks build one shared cache that a single process reuses;
* a ``hetclass classify`` child with ``--max-memory`` small enough that the data must stream
  stays under the bound (peak RSS from ``os.wait4``).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hetclass import engine
from hetclass import prepare as prepare_module
from hetclass.errors import AbortRequested, InputError
from hetclass.phantoms import phantom_model
from hetclass.pipeline import ClassifyOptions, load_particles
from hetclass.simulate import simulate_dataset

MPIRUN = shutil.which("mpirun")
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False


def _states():
    return {"open": phantom_model("open", hinge_deg=0.0),
            "swung": phantom_model("open", hinge_deg=90.0)}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """600 particles, box 32 at 6 A/px, two states, stacks of 100 images."""
    return simulate_dataset(tmp_path_factory.mktemp("ooc_small"), _states(),
                            populations=[0.6, 0.4], n_particles=600, box_px=32,
                            pixel_size_A=6.0, snr=0.1, seed=4, threads=2, images_per_stack=100)


def _particles(ds):
    return load_particles(ds.star_path, project_dir=ds.out_dir)


def _options(**kw):
    base = dict(classes=2, max_iter=4, seed=1, batch_size=64)
    base.update(kw)
    return ClassifyOptions(**base)


def _force_streaming(monkeypatch):
    """Make the memory plan stream the data from disk, whatever the budget (undo with
    ``monkeypatch.undo()``)."""
    real = prepare_module.plan_memory

    def plan(*args, **kw):
        out = real(None, *args[1:], **kw)
        out.data_in_memory = False
        out.operator_cache_bytes = 0
        return out
    monkeypatch.setattr(prepare_module, "plan_memory", plan)


class CountingReader:
    def __init__(self, particles):
        from hetclass.io.images import ImageSource
        self.source = ImageSource(particles)
        self.images = 0

    def __call__(self, rows):
        self.images += len(rows)
        return self.source.read(rows)


def test_streamed_from_cache_equals_in_memory(small, tmp_path, monkeypatch):
    particles = _particles(small)
    _force_streaming(monkeypatch)
    cache = tmp_path / "cache"
    streamed = engine.prepare(particles, _options(cache_dir=str(cache)))
    assert not streamed.data.store.in_memory
    assert streamed.data.cache_info["cache"] == "built"
    assert len(streamed.workspace.batches) > 4       # several contiguous reads per pass
    res_disk = engine.fit(streamed, _options())
    monkeypatch.undo()      # the reference: the default, everything in RAM, no cache
    in_ram = engine.prepare(particles, _options())
    assert in_ram.data.store.in_memory and in_ram.data.cache_info["cache"] == "none"
    res_ram = engine.fit(in_ram, _options())
    np.testing.assert_array_equal(res_disk.labels, res_ram.labels)
    np.testing.assert_array_equal(res_disk.posteriors, res_ram.posteriors)
    assert res_disk.maps.tobytes() == res_ram.maps.tobytes()
    assert res_disk.half_maps.tobytes() == res_ram.half_maps.tobytes()
    np.testing.assert_array_equal(streamed.data_power, in_ram.data_power)
    # the rows read back are the rows written
    rows = np.arange(len(in_ram.data))
    x, c = streamed.data.store.read(rows[::7])
    np.testing.assert_array_equal(x, in_ram.data.data[rows[::7]])
    np.testing.assert_array_equal(c, in_ram.data.ctf[rows[::7]])


def test_second_run_reuses_cache_without_reading_images(small, tmp_path):
    particles = _particles(small)
    cache = str(tmp_path / "cache")
    first_reader = CountingReader(particles)
    first = engine.prepare(particles, _options(cache_dir=cache), read_images=first_reader)
    assert first_reader.images == len(particles)
    assert first.data.cache_info["cache"] == "built"
    assert first.data.cache_info["cache_MB"] == pytest.approx(
        len(particles) * first.data.coeffs.size * 12 / 2 ** 20)
    reader = CountingReader(particles)
    again = engine.prepare(particles, _options(cache_dir=cache), read_images=reader)
    assert reader.images == 0
    assert again.data.cache_info["cache"] == "reused"
    assert again.data.store.in_memory          # no budget: the cache is loaded into RAM
    np.testing.assert_array_equal(again.data.data, first.data.data)
    np.testing.assert_array_equal(again.data.ctf, first.data.ctf)
    np.testing.assert_array_equal(again.data_power, first.data_power)


def test_changed_inputs_do_not_reuse_a_stale_cache(small, tmp_path, copy_dataset):
    particles = _particles(small)
    cache = str(tmp_path / "cache")
    first = engine.prepare(particles, _options(cache_dir=cache))
    reader = CountingReader(particles)
    finer = engine.prepare(particles, _options(cache_dir=cache, target_res_A=14.0),
                           read_images=reader)
    assert reader.images == len(particles)
    assert finer.data.cache_info["cache"] == "built"
    assert finer.data.coeffs.size > first.data.coeffs.size
    # only the newest cache is kept
    assert [n for n in os.listdir(cache) if n.startswith("fourier-")] == [
        os.path.basename(finer.data.cache_info["cache_path"])]
    # changed particle metadata (one shift): rebuilt
    moved = _particles(small)
    moved.shifts_A[5, 0] += 1.0
    reader = CountingReader(moved)
    engine.prepare(moved, _options(cache_dir=cache, target_res_A=14.0), read_images=reader)
    assert reader.images == len(particles)
    # a stack re-written with other images under the same name: rebuilt
    data_dir = copy_dataset(small)
    copied = load_particles(os.path.join(data_dir, "particles.star"), project_dir=str(data_dir))
    engine.prepare(copied, _options(cache_dir=cache))
    stack = sorted((data_dir / "Particles").glob("*.mrcs"))[0]
    st = os.stat(stack)
    os.utime(stack, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    reader = CountingReader(copied)
    rebuilt = engine.prepare(copied, _options(cache_dir=cache), read_images=reader)
    assert reader.images == len(copied) and rebuilt.data.cache_info["cache"] == "built"


def test_cache_dir_holding_something_else_is_refused(small, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError) as err:
        engine.prepare(_particles(small), _options(cache_dir=str(other)))
    assert err.value.field == "--cache" and str(other) in str(err.value)
    assert "\n" not in str(err.value)
    assert os.listdir(other) == ["notes.txt"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        engine.prepare(_particles(small), _options(cache_dir=str(a_file)))


def test_interrupted_build_is_not_taken_as_complete(small, tmp_path):
    particles = _particles(small)
    cache = str(tmp_path / "cache")
    calls = []

    def abort_second_batch():
        calls.append(1)
        if len(calls) == 2:
            raise AbortRequested("stop")
    with pytest.raises(AbortRequested):
        engine.prepare(particles, _options(cache_dir=cache, max_memory_GB=8.0),
                       abort_check=abort_second_batch)
    assert len(calls) == 2
    # nothing that looks complete, and the unfinished build was removed
    assert [n for n in os.listdir(cache) if not n.startswith("HETCLASS")] == []
    reader = CountingReader(particles)
    done = engine.prepare(particles, _options(cache_dir=cache), read_images=reader)
    assert reader.images == len(particles) and done.data.cache_info["cache"] == "built"

    # a complete cache with a truncated part file (disk full, a copy cut short) is rebuilt
    part = os.path.join(done.data.cache_info["cache_path"], "part-0000.c64")
    with open(part, "r+b") as fh:
        fh.truncate(os.path.getsize(part) - 8)
    reader = CountingReader(particles)
    again = engine.prepare(particles, _options(cache_dir=cache), read_images=reader)
    assert reader.images == len(particles) and again.data.cache_info["cache"] == "built"
    np.testing.assert_array_equal(again.data.data, done.data.data)


def test_killed_build_leaves_nothing_complete(small, tmp_path):
    """A process killed in the middle of writing (os._exit: no clean-up at all)."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os
        from hetclass import engine
        from hetclass.pipeline import ClassifyOptions, load_particles
        p = load_particles({small.star_path!r}, project_dir={str(small.out_dir)!r})
        def progress(event, **info):
            if event == "batch" and info.get("stage") == "preprocess" and info["done"] >= 200:
                os._exit(9)
        engine.prepare(p, ClassifyOptions(classes=2, cache_dir={str(cache)!r},
                                          max_memory_GB=8.0), progress=progress)
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    left = sorted(os.listdir(cache))
    assert any(n.startswith(".partial-") for n in left)
    assert not any(n.startswith("fourier-") for n in left)
    particles = _particles(small)
    reader = CountingReader(particles)
    prepared = engine.prepare(particles, _options(cache_dir=str(cache)), read_images=reader)
    assert reader.images == len(particles)
    assert prepared.data.cache_info["cache"] == "built"
    # the dead build's leftovers were removed
    assert not any(n.startswith(".partial-") for n in os.listdir(cache))


def test_replicates_with_streamed_cache(small, tmp_path, monkeypatch):
    """One prepare, several fits in threads reading the same files concurrently."""
    from hetclass.stability.replicates import run_replicates
    particles = _particles(small)
    _force_streaming(monkeypatch)
    opts = _options(cache_dir=str(tmp_path / "cache"))
    streamed = engine.prepare(particles, opts)
    assert not streamed.data.store.in_memory
    on_disk = run_replicates(streamed, opts, k=2, n_replicates=3, seed=5, subsample=0.8,
                             workers=2)
    monkeypatch.undo()
    again = engine.prepare(particles, opts)      # reused, loaded into RAM
    assert again.data.cache_info["cache"] == "reused" and again.data.store.in_memory
    in_ram = run_replicates(again, opts, k=2, n_replicates=3, seed=5, subsample=0.8, workers=2)
    np.testing.assert_array_equal(on_disk.labels, in_ram.labels)
    assert on_disk.maps.tobytes() == in_ram.maps.tobytes()


@pytest.mark.skipif(MPIRUN is None or not HAVE_MPI4PY, reason="needs mpirun and mpi4py")
def test_mpi_ranks_build_one_shared_cache(small, tmp_path):
    cache, out2, out1 = tmp_path / "cache", tmp_path / "mpi", tmp_path / "one"

    def cmd(out):
        return [sys.executable, "-m", "hetclass_standalone.main", "classify", "--particles",
                str(small.star_path), "--project-dir", str(small.out_dir), "--classes", "2",
                "--max-iter", "4", "--seed", "3", "--cache", str(cache), "--out", str(out),
                "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-q", "-n", "2",
                           *cmd(out2)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.load(open(out2 / "run.json"))
    proc = subprocess.run(cmd(out1), capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reused = json.load(open(out1 / "run.json"))
    info_mpi = _store_info(built)
    info_one = _store_info(reused)
    assert info_mpi["cache"] == "built" and info_one["cache"] == "reused"
    manifest = json.load(open(os.path.join(info_one["cache_path"], "manifest.json")))
    assert len(manifest["parts"]) == 2                 # one part per building rank
    import starfile
    labels = [starfile.read(o / "run_data.star", always_dict=True)["particles"]
              ["rlnClassNumber"].to_numpy() for o in (out2, out1)]
    np.testing.assert_array_equal(labels[0], labels[1])


def _store_info(run_json):
    """run.json's record of where the data lived (written by pipeline.run_classify)."""
    return run_json["data_store"]


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """8000 particles, box 64 at 3 A/px: ~46 MB of cropped data at the default 12 A."""
    return simulate_dataset(tmp_path_factory.mktemp("ooc_medium"), _states(),
                            populations=[0.6, 0.4], n_particles=8000, box_px=64,
                            pixel_size_A=3.0, snr=0.05, seed=6, threads=2)


# A child's ru_maxrss starts from its parent's peak RSS (Linux copies the parent's high-water
# mark at fork/exec), and the pytest process is large: measure through a small launcher.
LAUNCHER = ("import json, os, subprocess, sys\n"
            "with open(sys.argv[1], 'w') as log:\n"
            "    p = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)\n"
            "    _, status, usage = os.wait4(p.pid, 0)\n"
            "print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss]))\n")


def _classify_child(ds, out, cache, max_memory_GB):
    """Run ``hetclass classify`` in a child; (returncode, its output, peak RSS in bytes)."""
    argv = [sys.executable, "-m", "hetclass_standalone.main", "classify", "--particles",
            str(ds.star_path), "--project-dir", str(ds.out_dir), "--classes", "2",
            "--max-iter", "2", "--seed", "0", "--out", str(out), "--quiet",
            "--cache", str(cache), "--max-memory", f"{max_memory_GB:.4f}"]
    log = os.path.join(os.path.dirname(out), os.path.basename(out) + ".log")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, log, *argv], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rc, maxrss_kB = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(log) as fh:
        return rc, fh.read(), maxrss_kB * 1024


def test_max_memory_forces_streaming_and_holds_the_bound(medium, tmp_path):
    # a budget below the minimum is a one-line error that states the minimum
    rc, text, _ = _classify_child(medium, tmp_path / "tiny", tmp_path / "cache", 0.01)
    assert rc == 2, text[-2000:]
    found = re.search(r"field --max-memory: value 0\.01: below the ([0-9.]+) GB", text)
    assert found, text[-2000:]
    minimum_GB = float(found.group(1))
    # between the minimum and minimum + data: the data cannot stay in RAM
    from hetclass.plan import workload_for
    m = workload_for(8000, 64, 3.0).n_coefficients     # at the default target resolution
    data_GB = 8000 * m * 12 / 2 ** 30
    bound_GB = minimum_GB + 0.4 * data_GB
    out = tmp_path / "run"
    rc, text, peak = _classify_child(medium, out, tmp_path / "cache", bound_GB)
    assert rc == 0, text[-3000:]
    info = _store_info(json.load(open(out / "run.json")))
    assert info["cache"] == "built" and info["data_in_memory"] is False
    assert info["cache_MB"] == pytest.approx(data_GB * 1024, rel=0.01)
    assert peak <= bound_GB * 2 ** 30, (peak / 2 ** 30, bound_GB, info["memory_plan_MB"])
