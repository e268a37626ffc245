"""Reading and writing: every file format, converted to and from :class:`hetclass.particles.ParticleSet`."""

import os
from typing import Union

StrPath = Union[str, "os.PathLike[str]"]   # a file or folder name
