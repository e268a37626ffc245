"""One-line messages of the ``hetclass`` command: argument errors and warnings.

* :class:`OneLineParser` -- argparse errors (``--classes abc``, a missing option) print one
  line, ``hetclass classify: error: argument --classes/-K: invalid int value: 'abc' (see
  hetclass classify --help)``, and exit 2, instead of the usage block.
* :func:`one_line_warnings` -- while a command runs, every warning is printed as one line,
  ``hetclass classify: warning: <text>``, without the source file and line that Python's
  default format shows; lines go through ``tqdm.write`` so they never break a progress bar.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Iterator, Optional, TextIO

from hetclass.errors import HetclassWarning


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit code 2."""

    def error(self, message: str):
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def warning_text(message, category) -> str:
    """The text of a warning in one line; third-party warnings name their kind."""
    text = " ".join(str(message).split()) or category.__name__
    if issubclass(category, HetclassWarning):
        return text
    return f"{text} ({category.__name__})"


@contextlib.contextmanager
def one_line_warnings(prefix: str, stream: Optional[TextIO] = None) -> Iterator[None]:
    """Inside the block, warnings print as ``<prefix>: warning: <text>`` on ``stream``
    (default: the current ``sys.stderr``); which warnings show is left to Python's filters
    (a domain warning once per distinct text)."""
    from tqdm import tqdm

    def show(message, category, filename, lineno, file=None, line=None):
        out = stream if stream is not None else sys.stderr
        tqdm.write(f"{prefix}: warning: {warning_text(message, category)}", file=out)
        out.flush()

    with warnings.catch_warnings():     # Python's filters stay: only the format changes
        warnings.showwarning = show
        yield
