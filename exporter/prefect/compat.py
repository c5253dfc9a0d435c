"""What each Prefect release lets the exporter see, and what the doctor says where it cannot.

One table, CAPABILITIES: the release that brought each thing the exporter or the doctor relies
on, read from Prefect's source. The version lab test (tests/lab/test_prefect_versions_lab.py)
asserts, for every release the lab runs, that the real server shows exactly what this table
says; docs/compatibility.md is rendered from it (python -m exporter.prefect.compat) and a unit
test holds the page to it. So the page cannot claim what the servers did not show.

The check (`blind_spots`) is pure: a snapshot and the context in, findings out. A release that
lacks a capability gets a finding that says what the exporter cannot know there and what to do,
never silence that reads as "fine".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from exporter.finding import Check, Context, Finding
from exporter.pgbouncer.snapshot import PgBouncerSnapshot
from exporter.prefect.snapshot import PrefectSnapshot

Version = tuple[int, int, int]
BLIND_SPOT = Check(
    "prefect_version_blind_spot", ("info",),
    "what this Prefect release does not let the exporter see, and what to do instead")
# One check with two sources: the settings (exporter/prefect/checks.py) where the caches can be
# turned off, the release (here) where they cannot.
STATEMENT_CACHE = Check(
    "statement_cache_with_transaction_pooling", ("warning",),
    "PgBouncer pools in transaction mode while Prefect's asyncpg statement caches are on (or "
    "cannot be turned off)")


@dataclass(frozen=True)
class Capability:
    key: str
    since: Version | None  # the first release with it; None: every release the lab runs
    title: str  # the column of docs/compatibility.md
    meaning: str  # what it gives the exporter, for the page


CAPABILITIES = (
    Capability("scheduling_counts", None, "scheduling counts",
               "backlog, Late and upcoming runs per work pool, by POST /flow_runs/count "
               "(every filter the exporter sends exists in 2.x)"),
    Capability("settings", None, "settings read",
               "GET /admin/settings in any of its four shapes, read into the same "
               "prefect_server_setting names"),
    Capability("csrf", (2, 16, 5), "CSRF tokens",
               "servers with PREFECT_SERVER_CSRF_PROTECTION_ENABLED=true refuse POSTs without a "
               "token; the exporter fetches one as Prefect's client does"),
    Capability("outcomes", (3, 0, 4), "ended runs counted",
               "flow runs that ended within the window, by state type and work pool "
               "(prefect_flow_runs_ended and the failure and crash alerts): runs are filtered "
               "on end_time, which older servers refuse"),
    Capability("pool_sizes", (3, 1, 13), "pool sizes reported",
               "pool_size and max_overflow are numbers (5, 10) by default; before, null unless "
               "set, meaning SQLAlchemy's defaults 5 + 10"),
    Capability("application_name", (3, 1, 13), "application_name",
               "Prefect names its sessions (connect_args.application_name), so the connection "
               "budget can count them"),
    Capability("statement_caches", (3, 2, 7), "statement-cache check",
               "asyncpg's statement caches can be turned off and are reported: PgBouncer "
               "transaction pooling is possible, and the doctor can tell when they are on"),
    Capability("listen_services", (3, 4, 6), "duplicated-services check",
               "the background services hold LISTEN \"prefect_automation_changes\", one session "
               "per copy, which the doctor counts"),
)
_BY_KEY = {c.key: c for c in CAPABILITIES}
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> Version | None:
    """'3.4.25' -> (3, 4, 25); pre-releases count as their release ('3.4.6.dev2' -> 3.4.6);
    None for '' (Prefect Cloud has no /admin/version) or anything else."""
    match = _VERSION.match(text)
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def has(version: str | Version, capability: str) -> bool | None:
    """Whether that release has the capability; None when the version is unknown."""
    parsed = parse_version(version) if isinstance(version, str) else version
    since = _BY_KEY[capability].since
    return None if parsed is None else since is None or parsed >= since


def show(version: Version | None) -> str:
    return "every release tested" if version is None else ".".join(map(str, version))


def blind_spots(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    version = parse_version(pf.version)
    if version is None:
        if pf.version:  # '' is Prefect Cloud or a proxy that hides /admin: nothing to say
            yield BLIND_SPOT.finding("info", pf.target,
                          f"cannot tell which Prefect this is (version {pf.version!r})",
                          ("GET /admin/version did not answer a release number",),
                          "The version-dependent checks are skipped for this target.")
        return
    yield from _statement_caches(pf, version, ctx)
    yield from _pool_sizes(pf, version)
    yield from _listen_services(pf, version)
    yield from _outcomes(pf, version)


def _statement_caches(pf: PrefectSnapshot, version: Version, ctx: Context) -> Iterator[Finding]:
    if has(version, "statement_caches"):
        return
    since = show(_BY_KEY["statement_caches"].since)
    pools = sorted({p.database for s in ctx.of(PgBouncerSnapshot)
                    if not s.tracks_prepared_statements for p in s.pools
                    if p.pool_mode == "transaction"})
    if pools:
        # Same check name as the settings-based one (exporter/prefect/checks.py), which is
        # silent on these releases: there is nothing to set here, so the fix is different.
        yield STATEMENT_CACHE.finding(
            "warning", pf.target,
            f"Prefect {pf.version} cannot turn asyncpg's statement caches off, and PgBouncer "
            "pools in transaction mode",
            (f"transaction pooling: {', '.join(pools)}",
             f"the statement cache settings exist from Prefect {since}"),
            "Give this Prefect's database a session-pooling route (pool_mode = session for it "
            "in PgBouncer) or a direct one, or upgrade to Prefect "
            f"{since}+ and set PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_STATEMENT_CACHE_"
            "SIZE=0 and ..._PREPARED_STATEMENT_CACHE_SIZE=0; else expect `prepared statement "
            "\"__asyncpg_stmt_...\" does not exist`.")
        return
    yield BLIND_SPOT.finding(
        "info", pf.target,
        f"Prefect {pf.version}: cannot read whether asyncpg's statement caches are off",
        (f"the statement cache settings exist from Prefect {since}; before, the caches are "
         "always on",),
        "Keep this Prefect's database off PgBouncer transaction pooling (session pooling or "
        f"direct), or upgrade to {since}+ to turn the caches off and have them checked.")


POOL_DEFAULTS = {"pool_size": 5, "max_overflow": 10}  # SQLAlchemy's QueuePool defaults


def _pool_sizes(pf: PrefectSnapshot, version: Version) -> Iterator[Finding]:
    if has(version, "pool_sizes") or not pf.settings:
        return  # reported; or no settings at all (nothing to say about what is missing)
    null = [name for name in POOL_DEFAULTS
            if f"server.database.sqlalchemy.{name}" not in pf.settings]
    if not null:
        return  # both set explicitly, so reported
    # the names that release reads: 2.x and 3.0.0-3.0.10 only the flat ones
    prefix = ("PREFECT_SQLALCHEMY_" if version < (3, 0, 11)
              else "PREFECT_SERVER_DATABASE_SQLALCHEMY_")
    yield BLIND_SPOT.finding(
        "info", pf.target,
        f"Prefect {pf.version} reports {' and '.join(null)} as null",
        ("null means SQLAlchemy's default: "
         + ", ".join(f"{name} {POOL_DEFAULTS[name]}" for name in null)
         + " per server process (Prefect passes the setting only when it is set)",
         "the connection budget cannot count Prefect's processes without both sizes"),
        "Set " + " and ".join(f"{prefix}{name.upper()}" for name in null)
        + " explicitly on every Prefect server process: the exporter then reads them.")


def _listen_services(pf: PrefectSnapshot, version: Version) -> Iterator[Finding]:
    if has(version, "listen_services"):
        return
    since = show(_BY_KEY["listen_services"].since)
    # `prefect server start --no-services` exists from 3.1.13; before, each service is turned
    # off by its variable (the PREFECT_API_SERVICES_ names are read by 2.x and every 3.x)
    stop = ("with --no-services" if version >= (3, 1, 13)
            else "with PREFECT_API_SERVICES_<SERVICE>_ENABLED=false for each service")
    yield BLIND_SPOT.finding(
        "info", pf.target,
        f"Prefect {pf.version}: duplicated background services cannot be detected",
        (f"the services hold LISTEN \"prefect_automation_changes\" (what the check counts) "
         f"from Prefect {since}",),
        f"Make sure one process runs the services: one `prefect server start`, every other API "
        f"replica {stop}. Two schedulers show as runs created twice.")


# ---- docs/compatibility.md -----------------------------------------------------------------

def settings_shape_of(version: Version) -> str:
    if version < (3, 0, 0):
        return "flat `PREFECT_*`"
    if version < (3, 0, 11):
        return "flat lower-case"
    return "nested" if version >= (3, 1, 13) else "nested, pool sizes beside `database`"


def render_markdown(tested: Sequence[str]) -> str:
    """The page: one row per release the lab runs, one column per capability."""
    columns = list(CAPABILITIES)
    head = "| Prefect | " + " | ".join(c.title for c in columns) + " |"
    lines = [
        "# Compatibility",
        "",
        "<!-- Generated by `python -m lab.compatibility > docs/compatibility.md`; "
        "do not edit. -->",
        "",
        "Which Prefect releases the exporter is tested against, and what each lets it see. "
        "Every row is a release the lab runs as a real server "
        "(`tests/lab/test_prefect_versions_lab.py`): the test creates work pools, deployments "
        "and runs through the API and asserts the exact backlog, Late and upcoming counts per "
        "work pool, reads the settings, and checks that the server shows each capability "
        "exactly from the release this table gives (the settings it reports, the "
        "`application_name` of its sessions and its LISTEN session in `pg_stat_activity`, its "
        "refusal of a POST without a CSRF token) and that the doctor names what is missing. "
        "The table is rendered from the "
        "same capability table the test asserts against (`exporter/prefect/compat.py`), and a "
        "unit test holds this page to it, so it cannot claim what the servers did not show.",
        "",
        head,
        "|---|" + "---|" * len(columns),
    ]
    for text in tested:
        version = parse_version(text)
        assert version is not None, text
        cells = []
        for c in columns:
            cell = "✓" if has(version, c.key) else f"✗ (from {show(c.since)})"
            if c.key == "settings":
                cell = f"✓ {settings_shape_of(version)}"
            cells.append(cell)
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines += ["", "What each column means:", ""]
    lines += [f"- **{c.title}** ({'from ' if c.since else ''}{show(c.since)}): {c.meaning}."
              for c in columns]
    lines += ["", *_NOTES]
    return "\n".join(lines) + "\n"


_NOTES = (
    "Where a release lacks something, `prefect-pg-exporter doctor` says so for that target "
    "(check `prefect_version_blind_spot`, info) with what to do, instead of staying silent:",
    "",
    "- before 3.1.13, pool sizes reported null: SQLAlchemy's defaults (5 + 10 overflow) apply; "
    "set them explicitly and the exporter reads them;",
    "- before 3.2.7, asyncpg's statement caches cannot be turned off or read: keep that "
    "Prefect's database off PgBouncer transaction pooling (with transaction pools in sight, "
    "`statement_cache_with_transaction_pooling` warns, as its alert does);",
    "- before 3.4.6, the background services hold no LISTEN session, so two copies of them "
    "cannot be seen in PostgreSQL.",
    "",
    "Also by release, handled without a finding and unit-tested: the settings' four shapes "
    "(2.x flat `PREFECT_*` with durations in seconds, 3.0.0-3.0.10 flat lower-case, "
    "3.0.11-3.1.12 nested with the pool sizes beside `database`, 3.1.13+ nested; the two "
    "shapes no lab row has are read from answers recorded from real 3.0.10 and 3.1.12 "
    "servers), the credentials (when both an API key and an auth string are set, the auth "
    "string is sent, as Prefect's client does from 3.4.1; before, it sent the key), and "
    "`PREFECT_CLIENT_CUSTOM_HEADERS` (a client setting of Prefect 3.4.8+, honoured whatever "
    "the server's release).",
    "",
    "Releases 3.0.0-3.0.10 read the services' settings under their 2.x names "
    "(`PREFECT_API_SERVICES_LATE_RUNS_AFTER_SECONDS`, not `PREFECT_SERVER_SERVICES_...`). "
    "A Prefect from 3.4.6 behind PgBouncer in transaction pooling issues its LISTEN on a "
    "server connection that PgBouncer then hands to other clients, whose statements replace "
    "it in `pg_stat_activity`: the duplicated-services check counts copies reliably only "
    "where the services connect directly or through session pooling (which is why the "
    "version lab connects its servers directly).",
)


def _outcomes(pf: PrefectSnapshot, version: Version) -> Iterator[Finding]:
    if has(version, "outcomes"):
        return
    since = show(_BY_KEY["outcomes"].since)
    yield BLIND_SPOT.finding(
        "info", pf.target,
        f"Prefect {pf.version}: runs that failed or crashed cannot be counted",
        (f"flow runs can be filtered on end_time from Prefect {since}; this server refuses it",),
        f"Watch failures in Prefect's UI, or upgrade to {since}+ for prefect_flow_runs_ended "
        "and the failure and crash alerts.")
