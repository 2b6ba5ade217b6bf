"""The ``kbridge`` command.

Subcommands are found through the ``kbridge.commands`` entry-point group (see setup.cfg), each a
``main(argv) -> int`` function. That keeps the dependency arrow one way: ``workers`` register
``kbridge dispatcher`` and ``kbridge watcher`` themselves, and ``bridge`` never imports them, the
simulator or Kubernetes until the chosen subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

from bridge import __version__
from bridge.errors import UserInputError

COMMAND_GROUP = "kbridge.commands"
EXIT_USAGE = 2


def _commands() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


def _summary(entry_point: EntryPoint) -> str:
    try:
        doc = entry_point.load().__doc__ or ""
    except ImportError as exc:  # an optional extra is missing: say so instead of failing `--help`
        return f"(unavailable: {exc})"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not args or args[0] in ("-h", "--help"):
        width = max(map(len, commands), default=0)
        print("usage: kbridge COMMAND [options]   (kbridge COMMAND --help for a command's options)\n")
        print("Redis-backed bridge between an Airflow scheduler and Kubernetes.\n\ncommands:")
        for name in sorted(commands):
            print(f"  {name.ljust(width)}  {_summary(commands[name])}")
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        print(f"kbridge {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in commands:
        print(
            f"kbridge: unknown command {name!r}; choose one of: {', '.join(sorted(commands))}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    command: Callable[[list[str]], int] = commands[name].load()
    try:
        return command(rest)
    except UserInputError as exc:
        print(f"kbridge {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def config_main(argv: list[str]) -> int:
    """Check a configuration file and print the effective settings."""
    from bridge.config import load_config, render_default_file

    parser = argparse.ArgumentParser(prog="kbridge config", description=config_main.__doc__)
    parser.add_argument("--config", help="INI file (default: $KBRIDGE_CONFIG, else the built-in defaults)")
    parser.add_argument("--json", action="store_true", help="print the effective settings as JSON")
    parser.add_argument(
        "--print-defaults", action="store_true", help="print the commented default file (config/kbridge.cfg)"
    )
    options = parser.parse_args(argv)
    if options.print_defaults:
        print(render_default_file(), end="")
        return 0
    settings = load_config(options.config).as_dict()
    if options.json:
        print(json.dumps(settings, indent=2))
        return 0
    for section, values in settings.items():
        print(f"[{section}]")
        for key, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value)
            print(f"{key} = {text}")
        print()
    return 0
