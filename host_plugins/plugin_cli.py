"""``inpaintd plugin install krita|gimp`` and ``inpaintd plugin bundle krita|gimp``.

``add_plugin_parser(subparsers)`` registers the ``plugin`` command on the main ``inpaintd``
parser; the work is in :mod:`inpaintd.host_plugins.install` (per host). Kept apart so that the CLI
does not import the installer (or pip) until the command runs. ``inpaintd`` finds it through
the ``inpaintd.commands`` entry point (pyproject.toml; ``inpaintd.server.cli.frame``):
nothing here imports the server, nor the server this.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

__all__ = ["add_plugin_parser", "main"]

HOSTS = ("krita", "gimp")


def _numpy(args: argparse.Namespace) -> Optional[bool]:
    return {"auto": None, "yes": True, "no": False}[args.numpy]


def cmd_install(args: argparse.Namespace) -> int:
    from .install.gimp import main_install_gimp
    from .install.krita import main_install

    if args.host == "gimp":
        print(main_install_gimp(args.gimp_dir, args.python_version, args.platform,
                                args.wheels, _numpy(args)))
        return 0
    print(main_install(args.krita_dir, args.python_version, args.platform, args.kritarc,
                       args.wheels, _numpy(args), enable=not args.no_enable))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from .install.gimp import main_bundle_gimp
    from .install.krita import main_bundle

    if args.host == "gimp":
        print(main_bundle_gimp(args.output, args.python_version, args.platform, args.wheels,
                               _numpy(args)))
        return 0
    print(main_bundle(args.output, args.python_version, args.platform, args.wheels,
                      _numpy(args)))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", choices=HOSTS, help="the application: krita or gimp (GIMP 3)")
    p.add_argument("--wheels", metavar="DIR",
                   help="take the dependency wheels from DIR only (offline); by default pip "
                   "downloads them from PyPI")
    p.add_argument("--numpy", choices=("auto", "yes", "no"), default="auto",
                   help="vendor numpy: auto = only when the target Python lacks it (install) "
                   "or always (bundle)")


def add_plugin_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``plugin install`` and ``plugin bundle`` on the ``inpaintd`` parser."""
    p = sub.add_parser("plugin", help="install or bundle the host plug-ins",
                       description="Install the Krita or GIMP 3 plug-in with the libraries "
                       "built for that application's Python, or bundle it as a zip for "
                       "another machine.")
    psub = p.add_subparsers(dest="plugin_command", required=True, metavar="COMMAND")

    inst = psub.add_parser("install", help="install into the local Krita or GIMP",
                           description="Krita: copy the plug-in into Krita's pykrita folder, "
                           "vendor pyzmq, msgpack, zstandard (and numpy if needed) built for "
                           "Krita's Python, and enable it in kritarc. GIMP: the same into "
                           "GIMP 3's plug-ins folder. Restart the application after.")
    _common(inst)
    inst.add_argument("--krita-dir", metavar="DIR",
                      help="Krita's resource folder, the one holding pykrita/ (default: "
                      "detected: ~/.local/share/krita, %%APPDATA%%\\krita, ...)")
    inst.add_argument("--gimp-dir", metavar="DIR",
                      help="GIMP 3's plug-ins folder, instead of the detected ones (default: "
                      "the folder of each GIMP 3.N found: ~/.config/GIMP/3.N/plug-ins, "
                      "%%APPDATA%%\\GIMP\\3.N\\plug-ins, ...; GIMP 3.2 reads 3.2's, not "
                      "3.0's; 3.0's when no GIMP 3 is found)")
    inst.add_argument("--kritarc", metavar="FILE",
                      help="the kritarc to enable the plug-in in (default: detected)")
    inst.add_argument("--python-version", metavar="X.Y",
                      help="the application's Python version (default: detected from the "
                      "local Krita, or /usr/bin/python3 for GIMP)")
    inst.add_argument("--platform", metavar="TAG",
                      help="pip platform tag for that Python, e.g. linux_x86_64, "
                      "win_amd64, macosx_arm64 (with --python-version)")
    inst.add_argument("--no-enable", action="store_true", help="do not edit kritarc")
    inst.set_defaults(func=cmd_install)

    bun = psub.add_parser("bundle", help="a zip of the plug-in for another machine",
                          description="Build the plug-in with its libraries for another "
                          "machine's Krita (Tools > Scripts > Import Python Plugin from "
                          "File takes the zip) or GIMP 3 (unpack the zip into its plug-ins "
                          "folder).")
    _common(bun)
    bun.add_argument("--python-version", required=True, metavar="X.Y", action="append",
                     help="that application's Python (docs/krita.md and docs/gimp.md list "
                     "them, and how to see yours); repeat it "
                     "for one zip that serves several (the plug-in picks at run time)")
    bun.add_argument("--platform", required=True, metavar="TAG",
                     help="win_amd64, macosx_arm64, macosx_x86_64, linux_x86_64, or any "
                     "pip platform tag")
    bun.add_argument("-o", "--output", required=True, metavar="FILE.zip")
    bun.set_defaults(func=cmd_bundle)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The plug-in commands alone (``python -m inpaintd.host_plugins.plugin_cli``)."""
    from inpaintd.protocol.errors import InpaintdError

    parser = argparse.ArgumentParser(prog="inpaintd")
    add_plugin_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="inpaintd: %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except InpaintdError as exc:
        print(f"inpaintd: error: {exc}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
