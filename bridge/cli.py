"""The ``kbridge`` command.

Subcommands are found through the ``kbridge.commands`` entry-point group (see setup.cfg), each a
``main(argv) -> int`` function. That keeps the dependency arrow one way: ``workers`` register
``kbridge dispatcher`` and ``kbridge watcher`` themselves, and ``bridge`` never imports them, the
simulator or Kubernetes until the chosen subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

from bridge import __version__
from bridge.errors import UserInputError

COMMAND_GROUP = "kbridge.commands"
DISTRIBUTION = "kube-redis-bridge"
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 1


def _commands() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


def _summary(entry_point: EntryPoint) -> str:
    try:
        doc = entry_point.load().__doc__ or ""
    except ImportError as exc:  # an optional extra is missing: say so instead of failing `--help`
        return f"(unavailable: {_missing_dependency(entry_point, exc)})"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _missing_dependency(entry_point: EntryPoint, exc: ImportError) -> str:
    """What to install so that ``entry_point`` loads: its extra if it declares one, else the module."""
    missing = f"the module {exc.name!r} is not installed" if exc.name else str(exc)
    if entry_point.extras:
        return f"{missing}; install it with: pip install '{DISTRIBUTION}[{','.join(entry_point.extras)}]'"
    return f"{missing}; install the package that provides it with pip"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``kbridge`` command; the exit status is 0 on success and 2 for a usage or input error."""
    try:
        status = _run(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # inside the try: a closed pipe (`kbridge config | head`) surfaces here
    except BrokenPipeError:
        # The reader went away. Point stdout at devnull so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def _run(args: list[str]) -> int:
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
    try:
        command: Callable[[list[str]], int] = commands[name].load()
    except ImportError as exc:
        print(f"kbridge {name}: unavailable, {_missing_dependency(commands[name], exc)}", file=sys.stderr)
        return EXIT_USAGE
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
    config = load_config(options.config)
    if options.json:
        print(json.dumps(config.as_dict(), indent=2))
    else:  # an INI file that `kbridge config --config` loads back
        print(config.as_ini(), end="")
    return 0
