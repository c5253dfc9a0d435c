"""Command line: `prefect-pg-exporter [run]` serves metrics; `doctor` reads every target once
and reports what is wrong (exit 0 nothing, 1 warnings, 2 critical); `version`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import sys
import time
from collections.abc import Sequence

from exporter import __version__
from exporter.config import Config, ConfigError, build_parser, environment_help, load
from exporter.logs import configure

COMMANDS = ("run", "doctor", "healthcheck", "version")
# what `<command> --help` says about it
ABOUT = {
    "run": "Poll the targets and serve /metrics, /probe, /incidents, /healthz, /readyz and / "
           "(the default command).",
    "doctor": "Read every target once and print the diagnosis; exit 0 when nothing is wrong, "
              "1 on warnings, 2 on critical findings.",
    "healthcheck": "Ask the running exporter's /healthz (for container HEALTHCHECKs); exit 0 "
                   "when it answers 200. Follows the listen address and TLS settings.",
    "version": "Print the version.",
}


def _parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        add_help=add_help,
        prog="prefect-pg-exporter",
        description="Prometheus exporter for self-hosted Prefect on PostgreSQL and PgBouncer.",
        parents=[build_parser()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n  run (default)  poll the targets and serve /metrics\n"
               "  doctor         read every target once, print the diagnosis; exit 0 when "
               "nothing is wrong,\n                 1 on warnings, 2 on critical findings\n"
               "                 (--since 1h: and the incidents the running exporter "
               "recorded;\n                 --list-checks: what it checks)\n"
               "  healthcheck    ask the running exporter's /healthz (for container "
               "HEALTHCHECKs);\n                 follows the listen address and TLS settings\n"
               "  version        print the version\n\nenvironment variables:\n"
               + environment_help(),
    )
    # None when not given: `--help` alone is the general help, `run --help` run's
    parser.add_argument("command", nargs="?", default=None, choices=COMMANDS,
                        help="run (default), doctor, healthcheck or version")
    _doctor_options(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _doctor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="doctor's report format")
    parser.add_argument("--since", metavar="DURATION",
                        help="doctor: also list the incidents the running exporter recorded "
                             "within DURATION (30m, 1h, 2d), asked at its /incidents")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="doctor: also list the slowest statements (pg_stat_statements)")
    parser.add_argument("--list-checks", action="store_true",
                        help="doctor: list every check (id, severities, what it means) and exit")


def _command_parser(command: str) -> argparse.ArgumentParser:
    """The help of one command: its options only (version has none), and the variables."""
    settings = command != "version"
    parser = argparse.ArgumentParser(
        prog=f"prefect-pg-exporter {command}", description=ABOUT[command],
        parents=[build_parser()] if settings else [],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="environment variables:\n" + environment_help() if settings else None)
    if command == "doctor":
        _doctor_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if "-h" in argv or "--help" in argv:
        given, _ = _parser(add_help=False).parse_known_args(argv)
        if given.command:  # `run --help`: that command's help, not the general one
            _command_parser(given.command).print_help()
            return 0
    args = parser.parse_args(argv)
    args.command = args.command or "run"
    if args.command == "version":
        print(f"prefect-pg-exporter {__version__}")
        return 0
    if args.command == "doctor" and args.list_checks:  # what it looks at: no target needed
        from exporter.diagnosis import list_checks

        print(list_checks(), end="")
        return 0
    try:
        config = load(vars(args))
    except ConfigError as exc:
        print(f"prefect-pg-exporter: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "healthcheck":
        return _healthcheck(config)
    if args.command == "doctor":
        try:
            since = _since(args.since)
        except ValueError as exc:
            print(f"prefect-pg-exporter: error: {exc}", file=sys.stderr)
            return 2
        configure("error" if config.log_level == "info" else config.log_level,
                  config.log_format)
        return asyncio.run(_doctor(config, args.format, since, args.verbose))
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


def _healthcheck(config: Config) -> int:
    """0 if this exporter's /healthz answers on loopback, 1 otherwise. The certificate is not
    verified: the check talks to its own process, by address, over loopback."""
    import ssl
    import urllib.request

    tls = config.web.ssl_context is not None
    host = "[::1]" if ":" in config.listen.host and config.listen.host != "::" else "127.0.0.1"
    url = f"{'https' if tls else 'http'}://{host}:{config.listen.port}/healthz"
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"prefect-pg-exporter: unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


def _since(text: str | None) -> float | None:
    """--since in seconds, None when not given; ValueError with a one-line message if bad."""
    if text is None:
        return None
    from exporter.incidents.remote import parse_since

    return parse_since(text)


async def _doctor(config: Config, fmt: str, since: float | None = None,
                  verbose: bool = False) -> int:
    from exporter.app import build_sources
    from exporter.diagnosis import confirmed, diagnose, to_confirm
    from exporter.finding import Finding, exit_code, render_text
    from exporter.poller import Poller, failures, fresh_snapshots

    poller = Poller(build_sources(config), interval=config.poll_interval_seconds,
                    timeout=config.poll_timeout_seconds)
    states = poller.states

    def diagnosis() -> list[Finding]:
        return diagnose(fresh_snapshots(states, time.time(), float("inf")), failures(states),
                        config.thresholds)

    await asyncio.gather(*(poller.poll_once(state) for state in states))
    findings = diagnosis()
    # a finding on one timing is looked at again: a cold pool's first connection, or a busy
    # second, makes one round trip slow once (the alerts wait minutes for the same reason)
    again = to_confirm(findings)
    if again:
        await asyncio.gather(*(poller.poll_once(s) for s in states if s.target in again))
        findings = confirmed(findings, diagnosis())
    await poller.stop()
    report: dict[str, object] = {"findings": [f.as_dict() for f in findings],
                                 "exit_code": exit_code(findings)}
    text = render_text(findings)
    if verbose:  # what was read for the diagnosis anyway: the slowest statements
        from exporter.postgres.statements import statements_report, statements_text

        statements = statements_report(fresh_snapshots(states, time.time(), float("inf")))
        report["statements"] = statements
        text += "\n" + statements_text(statements)
    if since is not None:  # the recent past beside the present; the exit code is the present's
        from exporter.incidents.remote import recent_report

        recent, text_part = recent_report(config, since, time.time())
        report.update(recent)
        text += "\n" + text_part
    if fmt == "json":
        print(json.dumps(report, indent=2))
    else:
        print(text, end="")
    return exit_code(findings)


async def _run(config: Config) -> None:
    from exporter.app import serve  # imported here: --help and version stay fast

    await serve(config)
