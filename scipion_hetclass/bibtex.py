"""BibTeX entries of the plugin, read from ``hetclass.bib`` (the one copy).

pyworkflow parses this module's docstring as BibTeX, so the docstring is the .bib file.
"""

import os as _os

with open(_os.path.join(_os.path.dirname(__file__), "hetclass.bib"), encoding="utf-8") as _f:
    __doc__ = _f.read()
