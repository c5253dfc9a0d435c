"""Command line: `prefect-pg-exporter [run]` serves metrics; `version` prints the version."""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter.config import ConfigError, build_parser, environment_help, load
from exporter.logs import configure

COMMANDS = ("run", "version")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefect-pg-exporter",
        description="Prometheus exporter for self-hosted Prefect on PostgreSQL and PgBouncer.",
        parents=[build_parser()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n  run (default)  poll the targets and serve /metrics\n"
               "  version        print the version\n\nenvironment variables:\n"
               + environment_help(),
    )
    parser.add_argument("command", nargs="?", default="run", choices=COMMANDS,
                        help="run (default) or version")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser




def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"prefect-pg-exporter {__version__}")
        return 0
    try:
        config = load(vars(args))
    except ConfigError as exc:
        print(f"prefect-pg-exporter: error: {exc}", file=sys.stderr)
        return 2
    configure(config.log_level, config.log_format)
    try:
        asyncio.run(_run(config))
    except OSError as exc:  # e.g. the listen address is taken
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        print(f"prefect-pg-exporter: error: cannot listen on {config.listen}: {reason}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


async def _run(config: object) -> None:
    from exporter.app import serve

    await serve(config)  # type: ignore[arg-type]
