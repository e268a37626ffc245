"""``hetclass`` command: one module per sub-command, each with ``add_args(parser)`` and ``main(args)``.

Errors a user can fix (:class:`hetclass.errors.InputError`) print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from hetclass import __version__
from hetclass.errors import HetclassError, InputError

# sub-command name -> module inside this package
COMMANDS = {
    "classify": "classify_cmd",
    "demo": "demo_cmd",
    "stability": "stability_cmd",
    "exhaustive": "exhaustive_cmd",
    "convert": "convert_cmd",
}


def _available():
    found = {}
    for name, module in COMMANDS.items():
        try:
            found[name] = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name and exc.name.endswith(module):
                continue
            raise
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hetclass", description="Fixed-pose 3D classification and replicate stability for cryo-EM.")
    parser.add_argument("--version", action="version", version=f"hetclass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available().items():
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else name, description=(module.__doc__ or None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    try:
        result = args._module.main(args)
    except InputError as exc:
        print(f"hetclass {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except HetclassError as exc:
        print(f"hetclass {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hetclass {args.command}: interrupted; rerun with --continue to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
