"""The frame of the ``inpaintd`` command: its top-level options, its commands registered
lazily, and every user error as one line on stderr (never a traceback).

Used by :mod:`inpaintd.server.cli` (the table of commands); it imports no command's module
until a command is registered.

Commands from other packages come through the ``inpaintd.commands`` entry-point group: each
entry point names a function that registers one command on the subparsers. That is how the
host plug-ins' installer adds ``inpaintd plugin`` (pyproject.toml:
``inpaintd.host_plugins.plugin_cli:add_plugin_parser``) while the server never imports
``host_plugins`` and ``host_plugins`` never imports the server. The entry points are read
only when a command line needs them (``--help``, or a command that is not built in), and
their functions register in full, so their modules must be cheap to import.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from inpaintd.protocol import __version__
from inpaintd.protocol.errors import InpaintdError

__all__ = ["Adder", "Commands", "ENTRY_POINT_GROUP", "build_parser", "command_in", "run"]

#: Registers commands on the ``inpaintd`` subparsers (what it returns is not used).
Adder = Callable[[argparse._SubParsersAction], object]

#: The entry-point group through which other packages add commands.
ENTRY_POINT_GROUP = "inpaintd.commands"


@dataclass(frozen=True)
class Commands:
    """Commands that one function registers in full."""

    #: name -> the one-line help ``inpaintd --help`` lists, in that order.
    help: Mapping[str, str]
    #: Returns the function that registers them (importing what their options need).
    load: Callable[[], Adder]


def command_in(argv: Sequence[str]) -> Optional[str]:
    """The command word of an ``inpaintd`` command line (the top-level options take no
    values, so it is the first word that is not an option), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def _plugged_in() -> list[Adder]:
    """The registering functions of the ``inpaintd.commands`` entry points, by name."""
    from importlib.metadata import entry_points

    return [ep.load() for ep in sorted(entry_points(group=ENTRY_POINT_GROUP),
                                       key=lambda ep: ep.name)]


def build_parser(groups: Sequence[Commands], command: Optional[str] = None, *,
                 full: bool = True) -> argparse.ArgumentParser:
    """The ``inpaintd`` parser: every command in full, or (``full=False``) only ``command``
    in full and the other built-in ones as their one-line help.

    Why: registering a command imports what its options need (``train`` lists presets that
    import torch; ``eval`` loads numpy and Pillow), so ``inpaintd --help``, ``status`` or
    ``fill --server`` would pay for every other command's imports on each start.
    """
    parser = argparse.ArgumentParser(prog="inpaintd", description="Inpainting server and tools.")
    parser.add_argument("--version", action="version", version=f"inpaintd {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in groups:
        if full or command in group.help:
            group.load()(sub)
        else:
            for name, text in group.help.items():
                sub.add_parser(name, help=text, add_help=False)
    if full or not any(command in group.help for group in groups):
        for adder in _plugged_in():
            adder(sub)
    return parser


def run(groups: Sequence[Commands], argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run its command; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(groups, command_in(argv), full=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="inpaintd: %(levelname)s: %(message)s")
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return status
    except BrokenPipeError:
        # `inpaintd status | head -2`: the reader has what it wanted. Nothing more is
        # written (Python would report the pipe again when it flushes at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except InpaintdError as exc:
        print(f"inpaintd: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("inpaintd: interrupted", file=sys.stderr)
        return 130
