"""The small machinery behind both command lines (``landmark-kaggle``, ``tfrec-builder``).

A command is a module with ``add_arguments(parser)`` and ``run(args) -> int``.
The registry holds the module's dotted name and its one-line help, so
``--help`` lists every command without importing TensorFlow; a command's own
module is imported only when that command (or its ``--help``) is asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from landmark_kaggle.errors import UserError


def build_parser(prog: str, description: str, commands: dict[str, tuple[str, str]],
                 argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from landmark_kaggle import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_line) in commands.items():
        p = sub.add_parser(name, help=help_line, description=help_line,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        # Only the chosen command's module is imported: its arguments are all
        # argparse needs, and the others may pull in TensorFlow.
        if name == wanted:
            mod = importlib.import_module(module)
            if mod.__doc__:
                p.description = mod.__doc__.strip()
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main_for(prog: str, description: str, commands: dict[str, tuple[str, str]],
             argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog, description, commands, argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted; rerun the same command to resume.",
              file=sys.stderr)
        return 130
