"""hetclass: fixed-pose 3D classification and replicate stability for cryo-EM."""

import re

from setuptools import setup


def _version() -> str:
    """The one version: ``hetclass/__init__.py``'s ``__version__`` (read, not imported)."""
    with open("hetclass/__init__.py", encoding="utf-8") as fh:
        return re.search(r'^__version__ = "([^"]+)"', fh.read(), re.M).group(1)


setup(
    name="hetclass",
    version=_version(),
    description="Fast fixed-pose 3D classification and replicate stability for cryo-EM heterogeneity",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["hetclass", "hetclass.io", "hetclass.stability", "hetclass.gpu", "hetclass.reports",
              "hetclass_standalone", "hetclass_relion",
              "scipion_hetclass", "scipion_hetclass.protocols", "scipion_hetclass.viewers",
              "scipion_hetclass.tests"],
    package_dir={"hetclass_standalone": "standalone", "hetclass_relion": "relion_external"},
    package_data={"scipion_hetclass": ["protocols.conf", "*.bib"]},
    install_requires=["numpy>=1.22", "scipy>=1.8", "mrcfile>=1.4", "starfile>=0.5", "pandas>=2.1.1",
                      "gemmi>=0.6", "matplotlib>=3.5", "threadpoolctl>=3", "tqdm>=4.60"],
    extras_require={
        "gpu": ["cupy-cuda12x"],
        "scipion": ["scipion-pyworkflow>=3.11", "scipion-em>=3.11", "pandas<3"],
        "cryosparc": ["cryosparc-tools>=5.0"],
        "test": ["pytest>=7", "scikit-learn>=1.0", "pyyaml", "hypothesis>=6"],
        "mpi": ["mpi4py>=3.1"],
    },
    entry_points={
        "console_scripts": [
            "hetclass=hetclass_standalone.main:main",
            "hetclass_relion=hetclass_relion.main:main",
        ],
        "pyworkflow.plugin": ["scipion_hetclass = scipion_hetclass"],
    },
)
