"""hetclass: fixed-pose 3D classification and replicate stability for cryo-EM.

The core package imports only numpy, scipy, mrcfile, starfile and gemmi at module level.
Conventions are stated once in ``docs/conventions.md`` and in :mod:`hetclass.particles`.
"""

__version__ = "0.1.0"
