"""One entry point for particle files: RELION STAR (3.0/3.1+) or CryoSPARC ``.cs``."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from ..errors import InputError
from ..particles import ParticleSet
from . import StrPath

STAR_EXTENSIONS = (".star",)
CS_EXTENSIONS = (".cs",)


def load_particles(path: StrPath, project_dir: Optional[StrPath] = None,
                   passthrough: Sequence[str] = (),
                   cs_project_dir: Optional[str] = None) -> ParticleSet:
    """Read aligned particles from ``path``, dispatching on its extension, and check them.

    ``.star``: :func:`hetclass.io.star.read_star` (``project_dir`` resolves stack paths; default
    the current directory). ``.cs``: :func:`hetclass.io.cryosparc.read_cs` with the
    ``passthrough`` files and ``cs_project_dir``. InputError for a missing file, an
    unknown extension, a non-finite or absurd value
    (:func:`hetclass.validate.check_particle_values`) or a text value no STAR file can
    carry (:func:`hetclass.io.star.check_writable`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("particle file not found", file=path)
    ext = os.path.splitext(path)[1].lower()
    if ext in STAR_EXTENSIONS:
        from .star import read_star
        particles = read_star(path, project_dir=project_dir)
    elif ext in CS_EXTENSIONS:
        from .cryosparc import read_cs  # written separately; imported only when needed
        particles = read_cs(path, passthrough=passthrough, project_dir=cs_project_dir)
    else:
        raise InputError("unknown particle file type: expected a RELION .star or a CryoSPARC "
                         ".cs file", file=path, field="extension", value=ext or "(none)")
    if isinstance(particles, ParticleSet):
        from ..validate import check_particle_values
        from .star import check_writable
        check_particle_values(particles)
        check_writable(particles)
    return particles

