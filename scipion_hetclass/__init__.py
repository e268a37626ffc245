"""Scipion 3 plugin for hetclass: fixed-pose 3D classification and replicate stability.

Discovered by pyworkflow through the ``pyworkflow.plugin`` entry point that
``pip install hetclass[scipion]`` registers. The engine is the ``hetclass`` Python package
itself (no binaries to install), so :meth:`Plugin.defineBinaries` does nothing.

Without pyworkflow/pwem (a core-only install) the package still imports, so that
:mod:`scipion_hetclass.convert`'s pure conversion functions stay usable and testable; only
the :class:`Plugin` class is missing then.
"""

import os

from hetclass import __version__  # one version for the engine and the plugin

_logo = None
_references = ["hetclass", "Scheres2012a"]

# Plugin variables (read from the environment or ~/.config/scipion/scipion.conf).
HETCLASS_CACHE_DIR = "HETCLASS_CACHE_DIR"   # scratch for Fourier-cropped images ('' = run dir)
HETCLASS_DEVICE = "HETCLASS_DEVICE"         # "auto" | "cpu" | "gpu" when the form asks for GPU

try:
    import pwem as _pwem
except ImportError:  # core install without the scipion extra
    _pwem = None


if _pwem is not None:
    class Plugin(_pwem.Plugin):
        """hetclass plugin: variables and environment; the engine installs with pip."""

        _url = "https://pypi.org/project/hetclass/"
        _supportedVersions = [__version__]

        @classmethod
        def _defineVariables(cls):
            cls._defineVar(HETCLASS_CACHE_DIR, "",
                           description="Scratch folder for hetclass's pre-processed particle "
                                       "images (empty: inside each run's extra folder).")
            cls._defineVar(HETCLASS_DEVICE, "auto",
                           description="Device used when a protocol's 'Use GPU' is on: "
                                       "auto (GPU when CuPy finds one), gpu or cpu.")

        @classmethod
        def getEnviron(cls):
            """Environment for the run: OpenMP/BLAS threads are set per step by the protocol."""
            import pyworkflow.utils as pwutils
            return pwutils.Environ(os.environ)

        @classmethod
        def defineBinaries(cls, env):
            """Nothing to build: hetclass is a pip-installed Python package."""

        @classmethod
        def validateInstallation(cls):
            """[] when the engine imports, else one message saying how to install it."""
            try:
                import hetclass.pipeline  # noqa: F401
            except Exception as exc:  # report, never raise (called from validate())
                return [f"hetclass engine not importable ({exc}); "
                        f"install it with: pip install hetclass[scipion]"]
            return []
