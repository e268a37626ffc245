"""The options of ``stability`` and ``exhaustive``: now in :mod:`hetclass.options` (the one
options model); kept as names for existing imports."""

from ..options import OPTIONS, Option, parse_min_class_size  # noqa: F401
