"""Where the shared third-party reference fixtures live (``../shared/fixtures`` in CI)."""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def fixtures_dir(sub: str) -> str:
    """``<fixtures>/<sub>``: $HETCLASS_FIXTURES, else ``<repo>/shared``, ``<repo>/../shared``."""
    candidates = [os.environ.get("HETCLASS_FIXTURES", ""),
                  os.path.join(_HERE, "..", "shared", "fixtures"),
                  os.path.join(_HERE, "..", "..", "shared", "fixtures"),
                  "/work/shared/fixtures"]
    for base in candidates:
        if base and os.path.isdir(os.path.join(base, sub)):
            return os.path.normpath(os.path.join(base, sub))
    return os.path.normpath(os.path.join(candidates[2], sub))
