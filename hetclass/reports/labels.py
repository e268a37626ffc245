"""Short texts shared by the terminal tables and the HTML reports (no heavy imports)."""

from __future__ import annotations

import math
from typing import Optional

# the values of ``EMResult.resolution_status`` / run.json ``resolution_status``
# (hetclass.fsc.RESOLUTION_MEASURED / RESOLUTION_AT_LIMIT / RESOLUTION_NONE)
MEASURED, CROP_LIMIT, UNMEASURED = "measured", "crop_limit", "unmeasured"


def resolution_text(value_A: Optional[float], status: Optional[str], html: bool = False) -> str:
    """A class resolution as a person should read it.

    ``measured``: ``12.3 A``; ``crop_limit`` (the FSC never fell below 0.143 inside the
    cropped data, so the value is a bound): ``<= 16.0 A (crop limit)``; ``unmeasured`` or no
    value: ``not resolved``. ``html`` uses the symbols ``≤`` and ``Å``.
    """
    unit = "Å" if html else "A"
    if value_A is None or not math.isfinite(float(value_A)) or status == UNMEASURED:
        return "not resolved"
    if status == CROP_LIMIT:
        return f"{'≤' if html else '<='} {float(value_A):.1f} {unit} (crop limit)"
    return f"{float(value_A):.1f} {unit}"
