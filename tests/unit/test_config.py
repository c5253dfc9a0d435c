"""Configuration: precedence, every malformed value refused with one line, secrets from files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter.config import SETTINGS, ConfigError, Listen, build_parser, load

DSN = "postgresql://mon:s3cret-pw@db.example:5433/prefect"
API = "http://prefect:4200/api"


def test_defaults_and_environment() -> None:
    config = load({}, {"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN,
                       "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "30",
                       "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": ":9999"})
    assert [t.name for t in config.postgres_targets] == ["db.example:5433/prefect"]
    assert config.poll_interval_seconds == 30
    assert config.poll_timeout_seconds == 10
    assert config.listen == Listen("0.0.0.0", 9999)
    assert config.statement_timeout_ms == 8000


@pytest.mark.parametrize(("interval", "timeout"), [("5", 5.0), ("2", 2.0), ("1", 1.0),
                                                   ("15", 10.0), ("60", 10.0)])
def test_the_default_timeout_follows_a_short_interval(interval: str, timeout: float) -> None:
    """Only the interval set: the default timeout is the smaller of 10 s and the interval
    (it was a fixed 10 s, and a 5 s interval alone refused to start)."""
    config = load({}, {"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN,
                       "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": interval})
    assert config.poll_timeout_seconds == timeout
    assert config.statement_timeout_ms == max(100, int(timeout * 800))


def test_only_a_timeout_the_user_set_can_conflict_with_the_interval() -> None:
    with pytest.raises(ConfigError, match=r"POLL_TIMEOUT_SECONDS \(6\) must not exceed"):
        load({"poll_timeout_seconds": "6"},
             {"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN,
              "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "5"})
    assert load({"poll_timeout_seconds": "3"},
                {"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN}).poll_timeout_seconds == 3


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    file = tmp_path / "exporter.toml"
    file.write_text('poll_interval_seconds = 60\nlabel_top_n = 7\nlog_level = "debug"\n'
                    f'postgres_dsn = "{DSN}"\n')
    env = {"PREFECT_PG_EXPORTER_CONFIG_FILE": str(file),
           "PREFECT_PG_EXPORTER_LABEL_TOP_N": "9"}
    config = load({"log_level": "error"}, env)
    assert (config.poll_interval_seconds, config.label_top_n, config.log_level) == (60, 9, "error")


def test_named_targets_and_key_value_dsn() -> None:
    config = load({"postgres_dsn": f"primary={DSN}; host=/var/run/postgresql dbname=prefect"}, {})
    assert [t.name for t in config.postgres_targets] == ["primary", "socket:5432/prefect"]
    uri = config.postgres_targets[1].asyncpg_dsn()
    assert uri == "postgresql:///prefect?host=%2Fvar%2Frun%2Fpostgresql"


def test_dsn_from_file_is_read_and_both_forms_conflict(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text(DSN + "\n")
    config = load({}, {"PREFECT_PG_EXPORTER_POSTGRES_DSN_FILE": str(secret)})
    assert config.postgres_targets[0].password == "s3cret-pw"
    with pytest.raises(ConfigError, match="either"):
        load({}, {"PREFECT_PG_EXPORTER_POSTGRES_DSN_FILE": str(secret),
                  "PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN})


BAD = [
    ({"stuck_run_seconds": "an hour"}, "STUCK_RUN_SECONDS='an hour'"),
    ({"heartbeat_timeout_seconds": "0"}, "positive"),
    ({"outcome_window_seconds": "-5"}, "positive"),
    ({"poll_interval_seconds": "soon"}, "POLL_INTERVAL_SECONDS='soon'"),
    ({"poll_interval_seconds": "-1"}, "positive"),
    ({"poll_interval_seconds": "nan"}, "positive"),
    ({"poll_timeout_seconds": "0"}, "positive"),
    ({"poll_interval_seconds": "5", "poll_timeout_seconds": "10"}, "must not exceed"),
    ({"listen_address": "localhost"}, "host:port"),
    ({"listen_address": "1.2.3.4:99999"}, "host:port"),
    ({"log_level": "loud"}, "one of"),
    ({"log_level": "warnings"}, "one of"),
    ({"telemetry_path": "metrics"}, "starting with /"),
    ({"telemetry_path": "/my metrics"}, "URL path"),
    ({"telemetry_path": "/healthz"}, "must not be"),
    ({"telemetry_path": "/"}, "must not be"),
    ({"telemetry_path": "/probe"}, "must not be"),
    ({"log_format": "xml"}, "one of"),
    ({"label_top_n": "0"}, ">= 1"),
    ({"label_top_n": "ten"}, "whole number"),
    ({"top_transactions": "-3"}, "whole number"),
    ({"top_statements": "ten"}, "whole number"),
    ({"database_size_interval_seconds": "0.5"}, "at least 1 second"),
    ({"database_size_interval_seconds": "hourly"}, "could not convert"),
    ({"hot_tables": "task_run,drop table"}, "not a table name"),
    ({"postgres_dsn": "host=db bogus"}, "invalid DSN"),
    ({"postgres_dsn": "nonsense=1"}, "invalid DSN"),
    ({"postgres_dsn": f"{DSN};{DSN}"}, "unique"),
    ({"postgres_dsn": "bad name!=postgresql://x@h/db"}, "invalid DSN"),
    ({"pgbouncer_dsn": "host=pgb port"}, "invalid DSN"),
    ({"prefect_api_url": "ftp://prefect/api"}, "http\\(s\\) URL"),
    ({"prefect_api_url": "http://admin:s3cret-pw@prefect:4200/api"}, "credentials go in"),
    ({"prefect_api_url": f"{API};v=1"}, "part 2 of 2 .*';' separates APIs"),
    ({"prefect_api_url": f"a={API};a=http://other:4200/api"}, "unique, repeated: a"),
    ({"prefect_api_url": f"{API};http://prefect:4200/other/api"}, "repeated: prefect:4200"),
    ({"prefect_api_key": "k"}, "no PREFECT_PG_EXPORTER_PREFECT_API_URL"),
    ({"prefect_api_url": API, "prefect_api_auth_string": "no-colon"}, "user:password"),
    ({"prefect_api_url": API, "prefect_api_headers": "X-Team: data"}, "JSON object"),
    ({"prefect_api_url": API, "prefect_api_headers": '{"X": 1}'}, "JSON object of strings"),
    ({"prefect_api_url": API, "prefect_api_headers": '{"user-agent": "x"}'}, "set by the exporter"),
    ({"prefect_api_url": API, "prefect_api_headers": '{"Prefect-Csrf-Token": "t"}'},
     "CSRF headers cannot be overridden"),
    ({"prefect_api_url": API, "prefect_api_ca_file": "/nonexistent/ca.pem"}, "no such file"),
    ({"prefect_api_url": API, "prefect_api_tls_insecure_skip_verify": "maybe"}, "true or false"),
    ({"prefect_api_url": API, "prefect_api_tls_insecure_skip_verify": "true",
      "prefect_api_ca_file": "/etc/hostname"}, "either a Prefect API CA file"),
    ({"prefect_upcoming_horizon_seconds": "-5"}, "positive"),
    ({"prefect_max_concurrent_requests": "0"}, ">= 1"),
    ({"web_config_file": "/nonexistent/web.yml"}, "web config"),
    ({"no_statements": "perhaps"}, "true or false"),
    ({"recent_incidents": "many"}, "whole number"),
    ({"state_dir": "/dev/null"}, "not a directory"),
    # issue 22: settings that passed startup and then failed every poll
    ({"poll_interval_seconds": "0.01"}, "at least 1 second"),
    ({"poll_interval_seconds": "1e-9"}, "at least 1 second"),
    ({"poll_interval_seconds": "0.99", "poll_timeout_seconds": "0.99"}, "at least 1 second"),
    ({"poll_timeout_seconds": "0.5"}, "POLL_TIMEOUT_SECONDS='0.5': must be at least 1 second"),
    ({"stuck_run_seconds": "1e300"}, "at most"),
    ({"prefect_upcoming_horizon_seconds": "1e300"}, "at most"),  # now + 1e300 s: OverflowError
    ({"postgres_dsn": "postgresql://mon:s3cret-pw@db:abc/prefect"}, "port must be a number"),
    ({"postgres_dsn": "host=db port=99999 password=s3cret-pw"}, "port must be a number"),
    ({"postgres_dsn": "postgresql://mon:s3cret-pw@db1,db2/p?port=1,2,3"}, "3 ports for 2 hosts"),
    ({"pgbouncer_dsn": "host=pgb port=0 password=s3cret-pw"}, "port must be a number"),
    ({"postgres_dsn": f"{DSN}?sslmode=bogus"}, "sslmode must be one of disable, allow"),
    ({"pgbouncer_dsn": "host=pgb sslmode=Require password=s3cret-pw"}, "sslmode must be one of"),
    ({"postgres_dsn": f"{DSN}?target_session_attrs=bogus"},
     r"^PREFECT_PG_EXPORTER_POSTGRES_DSN: invalid DSN: target_session_attrs must be one of any, "
     r"read-write, read-only, primary, standby, prefer-standby$"),
    ({"pgbouncer_dsn": "host=pgb dbname=pgbouncer target_session_attrs=read-write"},
     "target_session_attrs must be any"),
    ({"postgres_dsn": f"{DSN}?hostaddr=10.0.0.1"}, "not supported for PostgreSQL: hostaddr"),
    ({"postgres_dsn": f"{DSN}?options=-c%20work_mem%3D1MB"}, "not supported .*: options"),
    ({"pgbouncer_dsn": "host=pgb hostaddr=pgb.internal password=s3cret-pw"},
     "hostaddr must be IP addresses"),
    ({"pgbouncer_dsn": "host=a,b hostaddr=10.0.0.1 password=s3cret-pw"}, "1 hostaddr for 2 hosts"),
    ({"pgbouncer_dsn": "host=pgb keepalives_idle=soon password=s3cret-pw"}, "whole number"),
    ({"postgres_dsn": f"{DSN}?ssl_min_protocol_version=tlsv1.2"}, "must be one of TLSv1,"),
    ({"prefect_api_url": f"{API}?token=s3cret-pw"}, "must not have a \\?query"),
    ({"prefect_api_url": f"{API}#s3cret-pw"}, "#fragment"),
    ({"prefect_api_url": "http://prefect:99999/api"}, "a port from 1 to 65535"),
    ({"prefect_api_url": "http://prefect:abc/api"}, "a port from 1 to 65535"),
    ({"prefect_api_url": "http://:4200/api"}, "must have a host"),
    ({"prefect_api_url": f"a={API};b=http://p2:4200/api?x=s3cret-pw"}, "part 2 of 2.*\\?query"),
    ({"redis_url": "redis://:s3cret-pw@r:6379/db1"}, "database must be a number"),
    ({"redis_url": "memcached://r:11211"}, "must be redis://"),
    ({"redis_consumer_idle_seconds": "0"}, "positive"),
]


@pytest.mark.parametrize(("flags", "message"), BAD)
def test_malformed_values_are_refused(flags: dict[str, str], message: str) -> None:
    flags = {"postgres_dsn": DSN, **flags}
    with pytest.raises(ConfigError, match=message) as info:
        load(flags, {})
    assert "\n" not in str(info.value)
    assert "s3cret-pw" not in str(info.value)


def test_every_setting_has_a_malformed_case() -> None:
    covered = {key for flags, _ in BAD for key in flags}
    assert covered >= {s.key for s in SETTINGS}


def test_prefect_falls_back_to_prefects_own_variables(tmp_path: Path) -> None:
    config = load({}, {"PREFECT_API_URL": "https://api.prefect.cloud/api/accounts/a/workspaces/w/",
                       "PREFECT_API_KEY": "pnu_secret"})
    (target,) = config.prefect_targets
    assert config.sources == ("prefect",)
    assert target.api_url == "https://api.prefect.cloud/api/accounts/a/workspaces/w"
    assert target.name == "api.prefect.cloud" and target.auth.api_key == "pnu_secret"
    assert "pnu_secret" not in repr(config)
    secret = tmp_path / "auth"
    secret.write_text("admin:pw\n")
    config = load({"prefect_api_url": "lab=http://127.0.0.1:4200/api"},
                  {"PREFECT_API_KEY": "ignored-when-ours-is-set",
                   "PREFECT_PG_EXPORTER_PREFECT_API_AUTH_STRING_FILE": str(secret)})
    (target,) = config.prefect_targets
    assert target.name == "lab"
    assert target.auth.auth_string == "admin:pw"


def test_several_prefect_apis_each_a_target_with_the_same_credentials() -> None:
    config = load({"prefect_api_url": f"old=http://p2:4200/api; new={API}\nhttp://p3:4200/api",
                   "prefect_api_auth_string": "admin:pw", "prefect_api_headers": '{"X-T": "1"}',
                   "prefect_api_tls_insecure_skip_verify": "true"}, {})
    assert [(t.name, t.api_url) for t in config.prefect_targets] == [
        ("old", "http://p2:4200/api"), ("new", API), ("p3:4200", "http://p3:4200/api")]
    assert {(t.auth.auth_string, t.headers["X-T"], t.verify)
            for t in config.prefect_targets} == {("admin:pw", "1", False)}
    # a single URL may still end with a ';'
    assert len(load({"prefect_api_url": API + ";"}, {}).prefect_targets) == 1


@pytest.mark.parametrize(("flags", "env", "origin", "unused"), [
    ({"prefect_api_key": "pnu_k", "prefect_api_auth_string": "admin:pw"}, {},
     "PREFECT_PG_EXPORTER_PREFECT_API_AUTH_STRING", "PREFECT_PG_EXPORTER_PREFECT_API_KEY"),
    ({}, {"PREFECT_API_KEY": "pnu_k", "PREFECT_API_AUTH_STRING": "admin:pw"},
     "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY"),
])
def test_key_and_auth_string_both_set_send_the_auth_string(
        flags: dict[str, str], env: dict[str, str], origin: str, unused: str) -> None:
    config = load({"prefect_api_url": API, **flags}, env)
    (target,) = config.prefect_targets
    # what Prefect's client does from 3.4.1 (before, it sent the key)
    assert (target.auth.auth_string, target.auth.api_key) == ("admin:pw", None)
    assert (target.auth.origin, target.auth.unused) == (origin, unused)
    assert "pnu_k" not in repr(config) and "admin:pw" not in repr(config)


def test_which_credential_is_sent_is_logged_without_secrets() -> None:
    from structlog.testing import capture_logs

    from exporter.prefect import KIND

    config = load({"prefect_api_url": API, "prefect_api_key": "pnu_secret-key",
                   "prefect_api_auth_string": "admin:secret-pw"}, {})
    with capture_logs() as logs:
        (source,) = KIND.sources(config)
    (entry,) = logs
    assert entry["log_level"] == "info"
    assert entry["using"] == "PREFECT_PG_EXPORTER_PREFECT_API_AUTH_STRING"
    assert entry["ignored"] == "PREFECT_PG_EXPORTER_PREFECT_API_KEY"
    assert "secret" not in repr(logs)
    assert source._api.auth.auth_string == "admin:secret-pw"  # type: ignore[attr-defined]
    with capture_logs() as logs:
        KIND.sources(load({"prefect_api_url": API, "prefect_api_key": "k"}, {}))
    assert logs == []  # one credential: nothing to choose


def test_prefects_custom_headers_under_ours_header_by_header() -> None:
    env = {"PREFECT_CLIENT_CUSTOM_HEADERS":
           '{"X-Team": "theirs", "X-Proxy": "p", "User-Agent": "ua", "prefect-csrf-client": "c"}'}
    config = load({"prefect_api_url": API, "prefect_api_headers": '{"x-team": "ours"}'}, env)
    (target,) = config.prefect_targets
    assert target.headers == {"X-Proxy": "p", "x-team": "ours"}
    # dropped as Prefect's client drops them (with a warning), not refused
    assert target.ignored_headers == ("User-Agent", "prefect-csrf-client")
    (target,) = load({"prefect_api_url": API}, env).prefect_targets
    assert target.headers == {"X-Team": "theirs", "X-Proxy": "p"}
    with pytest.raises(ConfigError, match=r"^PREFECT_CLIENT_CUSTOM_HEADERS: must be a JSON") as e:
        load({"prefect_api_url": API}, {"PREFECT_CLIENT_CUSTOM_HEADERS": "X-Team: s3cret-pw"})
    assert "s3cret-pw" not in str(e.value)
    # without a Prefect API, Prefect's headers are nobody's business
    assert load({"postgres_dsn": DSN}, {"PREFECT_CLIENT_CUSTOM_HEADERS": "nonsense"})


def test_kubernetes_service_links_are_not_unknown_variables() -> None:
    config = load({}, {"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN,
                       "PREFECT_PG_EXPORTER_SERVICE_HOST": "10.0.0.1",
                       "PREFECT_PG_EXPORTER_SERVICE_PORT": "10816",
                       "PREFECT_PG_EXPORTER_SERVICE_PORT_METRICS": "10816",
                       "PREFECT_PG_EXPORTER_PORT": "tcp://10.0.0.1:10816",
                       "PREFECT_PG_EXPORTER_PORT_10816_TCP_ADDR": "10.0.0.1"})
    assert config.listen.port == 10816


def test_unknown_variables_and_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown environment variable"):
        load({}, {"PREFECT_PG_EXPORTER_POSTGRES_DNS": DSN})
    file = tmp_path / "c.toml"
    file.write_text("pol_interval = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'pol_interval'"):
        load({"config_file": str(file)}, {})
    file.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({"config_file": str(file)}, {})
    with pytest.raises(ConfigError, match="cannot read"):
        load({}, {"PREFECT_PG_EXPORTER_POSTGRES_DSN_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="nothing to watch"):
        load({}, {})


# Issue 22: DSNs that libpq cannot read, and where it cuts them: the parts around the cut
# (Xq7 before, Zk9 after) are pieces of the password and must not be in the message.
MALFORMED_DSNS = [
    ("postgresql:/mon:Xq7Zk9@db/prefect", "a URI must start with postgresql://"),
    ("postgresql//mon:Xq7Zk9@db/prefect", "a URI must start with postgresql://"),
    ("postgres:mon:Xq7Zk9@db/prefect", "a URI must start with postgresql://"),
    ("postgresql://mon:Xq7/Zk9@db/prefect", "port must be a number"),  # '/' ends the host
    ("postgresql://mon:123/Xq7Zk9@db/prefect", "cannot name the target .* %2F"),
    ("postgresql://mon:Xq7;Zk9@db/prefect", "part 1 of 2 .*%3B"),
    ("host=db password=Xq7 Zk9 dbname=prefect", "a word without \"=\".*password='a b'"),
    ("host=db password=Xq7 Zk9=1 dbname=prefect", "a keyword libpq does not know$"),
    ("host=db password=Xq7 sslmod=Zk9", "does not know \\(did you mean \"sslmode\"\\?\\)"),
    ("postgresql://mon:Xq7%zzZk9@db/prefect", "percent-encoding"),
    ("postgresql://mon:Xq7%00Zk9@db/prefect", "%00"),
    ("postgresql://mon:Xq7@db/prefect?Zk9", "query parameter without"),
    ("postgresql://mon:Xq7@[::1/Zk9", "without its closing"),
]


@pytest.mark.parametrize("kind", ["postgres", "pgbouncer"])
@pytest.mark.parametrize(("dsn", "message"), MALFORMED_DSNS)
def test_a_malformed_dsn_names_the_problem_never_the_password(kind: str, dsn: str,
                                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load({f"{kind}_dsn": dsn}, {})
    text = str(info.value)
    assert text.startswith(f"PREFECT_PG_EXPORTER_{kind.upper()}_DSN: ")
    assert "Xq7" not in text and "Zk9" not in text and "\n" not in text


def test_a_dsn_file_that_does_not_parse_is_named_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("host=db dbname=prefect\npassword=Xq7 Zk9\n")
    with pytest.raises(ConfigError) as info:
        load({}, {"PREFECT_PG_EXPORTER_PGBOUNCER_DSN_FILE": str(secret)})
    text = str(info.value)
    assert text.startswith("PREFECT_PG_EXPORTER_PGBOUNCER_DSN_FILE: part 2 of 2")
    assert "Xq7" not in text and "Zk9" not in text and "\n" not in text
    secret.write_text("Xq7Zk9-key\nsecond-line\n")  # a key file with two lines
    with pytest.raises(ConfigError) as info:
        load({"prefect_api_url": API}, {"PREFECT_PG_EXPORTER_PREFECT_API_KEY_FILE": str(secret)})
    assert str(info.value).startswith("PREFECT_PG_EXPORTER_PREFECT_API_KEY_FILE: must be")
    assert "Xq7" not in str(info.value) and "second" not in str(info.value)


# Issue 22: a credential or header httpx cannot send failed every request, and its error
# showed the value escaped ("Illegal header value b'Bearer Xq7\\nZk9'"). Refused at startup.
@pytest.mark.parametrize(("flags", "env", "message"), [
    ({"prefect_api_key": "Xq7\nZk9"}, {}, "^PREFECT_PG_EXPORTER_PREFECT_API_KEY: must be "
     "printable ASCII"),
    ({"prefect_api_key": "Xq7\rZk9"}, {}, "PREFECT_API_KEY: must be printable ASCII"),
    ({"prefect_api_key": "Xq7 Zk9"}, {}, "PREFECT_API_KEY: must be printable ASCII"),
    ({"prefect_api_key": "Xq7\u00e9Zk9"}, {}, "PREFECT_API_KEY: must be printable ASCII"),
    ({}, {"PREFECT_API_KEY": "Xq7\nZk9"}, "^PREFECT_API_KEY: must be printable ASCII"),
    ({"prefect_api_auth_string": "admin:Xq7\nZk9"}, {}, "AUTH_STRING: must be one line"),
    ({}, {"PREFECT_API_AUTH_STRING": "admin:Xq7\x00Zk9"}, "^PREFECT_API_AUTH_STRING: must be"),
    ({"prefect_api_headers": '{"X-Token": "Xq7\\r\\nZk9"}'}, {},
     "^PREFECT_PG_EXPORTER_PREFECT_API_HEADERS: the value of X-Token must be printable ASCII"),
    ({"prefect_api_headers": '{"X-Token": "Xq7\\nZk9"}'}, {}, "the value of X-Token"),
    ({"prefect_api_headers": '{"X-Token": " Xq7Zk9"}'}, {}, "the value of X-Token"),
    ({"prefect_api_headers": '{"X Token": "Xq7Zk9"}'}, {}, "a header name may hold"),
    ({}, {"PREFECT_CLIENT_CUSTOM_HEADERS": '{"X-Token": "Xq7\\nZk9"}'},
     "^PREFECT_CLIENT_CUSTOM_HEADERS: the value of X-Token"),
])
def test_credentials_and_headers_that_cannot_be_sent_are_refused_unnamed(
        flags: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load({"prefect_api_url": API, **flags}, env)
    assert "Xq7" not in str(info.value) and "Zk9" not in str(info.value)
    assert "\n" not in str(info.value)


def test_what_can_be_sent_is_still_accepted() -> None:
    (target,) = load({"prefect_api_url": API, "prefect_api_key": "pnu_AbC-123.x~",
                      "prefect_api_headers": '{"X-Team": "data team\\tone", "X-Empty": ""}'},
                     {}).prefect_targets
    assert target.auth.api_key == "pnu_AbC-123.x~" and target.headers["X-Empty"] == ""
    (target,) = load({"prefect_api_url": API, "prefect_api_auth_string": "admin:p\u00e4ss w"},
                     {}).prefect_targets
    assert target.auth.auth_string == "admin:p\u00e4ss w"  # sent base64-encoded: any text
    # a key that is not sent (the auth string is) is not checked: it reaches no header
    (target,) = load({"prefect_api_url": API, "prefect_api_auth_string": "admin:pw",
                      "prefect_api_key": "k\nk"}, {}).prefect_targets
    assert target.auth.api_key is None and target.auth.auth_string == "admin:pw"
    config = load({"pgbouncer_dsn": "host=a,b port=6432 hostaddr=10.0.0.1,::1 "
                                    "sslmode=verify-full keepalives_idle=30",
                   "postgres_dsn": f"{DSN}?target_session_attrs=read-write&sslmode=verify-ca"
                                   "&ssl_min_protocol_version=TLSv1.3",
                   "poll_interval_seconds": "1"}, {})
    assert config.poll_interval_seconds == config.poll_timeout_seconds == 1
    assert len(config.pgbouncer_targets) == len(config.postgres_targets) == 1


def test_password_in_a_refused_dsn_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load({"postgres_dsn": "host=db password=hunter2-secret bogus"}, {})
    assert "hunter2-secret" not in str(info.value)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", **(env or {})}, timeout=30)


def test_cli_bad_input_is_one_line_and_exit_2() -> None:
    done = _cli(env={"PREFECT_PG_EXPORTER_POSTGRES_DSN": "host=db password=pw-xyz oops"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("prefect-pg-exporter: error: ")
    assert "pw-xyz" not in done.stderr
    done = _cli("--poll-interval-seconds", "x", "--postgres-dsn", DSN)
    assert done.returncode == 2 and "POLL_INTERVAL_SECONDS='x'" in done.stderr


def test_cli_help_and_version() -> None:
    done = _cli("--help")
    assert done.returncode == 0
    for setting in SETTINGS:
        assert setting.flag in done.stdout and setting.env in done.stdout
        if setting.toolkit_flag:
            assert setting.toolkit_flag in done.stdout
    from exporter import __version__

    assert _cli("--version").stdout.strip() == f"prefect-pg-exporter {__version__}"
    assert _cli("version").stdout.strip() == f"prefect-pg-exporter {__version__}"


def test_cli_help_lists_every_variable_it_reads() -> None:
    """PREFECT_PG_EXPORTER_THRESHOLDS was missing from the list (issue 22)."""
    listed = _cli("--help").stdout.split("environment variables:")[1]
    names = {s.env for s in SETTINGS} | {s.env + "_FILE" for s in SETTINGS if s.secret}
    names |= {"PREFECT_PG_EXPORTER_THRESHOLDS", "PREFECT_PG_EXPORTER_CONFIG_FILE"}
    assert names <= set(re.findall(r"^  (PREFECT_PG_EXPORTER_\w+)", listed, re.M))


def test_cli_command_help_is_that_commands() -> None:
    """`run --help` printed the general help (issue 22)."""
    from exporter.cli import ABOUT

    for command in ("run", "doctor", "healthcheck"):
        done = _cli(command, "--help")
        assert done.returncode == 0
        assert done.stdout.startswith(f"usage: prefect-pg-exporter {command} ")
        assert ABOUT[command] in done.stdout.replace("\n", " ")
        assert "--postgres-dsn" in done.stdout and "PREFECT_PG_EXPORTER_THRESHOLDS" in done.stdout
        assert "commands:" not in done.stdout  # the general help's list
        assert ("--since" in done.stdout) == (command == "doctor")
    done = _cli("version", "-h")
    assert done.stdout.startswith("usage: prefect-pg-exporter version")
    assert "--postgres-dsn" not in done.stdout
    # a setting before the command, --help after: still the command's
    assert _cli("--postgres-dsn", DSN, "doctor", "-h").stdout.startswith(
        "usage: prefect-pg-exporter doctor")
    assert _cli("--help").stdout.startswith("usage: prefect-pg-exporter [-h]")


@pytest.mark.parametrize(("env", "names"), [
    ({"PREFECT_PG_EXPORTER_POSTGRES_DSN": "postgresql://mon:Xq7Zk9@db/p?target_session_attrs=x"},
     "PREFECT_PG_EXPORTER_POSTGRES_DSN: invalid DSN: target_session_attrs must be one of any, "),
    ({"PREFECT_PG_EXPORTER_POSTGRES_DSN": "postgresql://mon:Xq7/Zk9@db/p"}, "port must be"),
    ({"PREFECT_PG_EXPORTER_PGBOUNCER_DSN": "host=pgb password=Xq7 Zk9"}, "a word without"),
    ({"PREFECT_API_URL": API, "PREFECT_API_KEY": "pnu_Xq7\nZk9"},
     "PREFECT_API_KEY: must be printable ASCII"),
    ({"PREFECT_API_URL": API, "PREFECT_CLIENT_CUSTOM_HEADERS": '{"X-Token": "Xq7\\r\\nZk9"}'},
     "PREFECT_CLIENT_CUSTOM_HEADERS: the value of X-Token"),
    ({"PREFECT_API_URL": API + "?token=Xq7Zk9"}, "must not have a ?query"),
    ({"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN, "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "0.01"},
     "POLL_INTERVAL_SECONDS='0.01': must be at least 1 second"),
])
def test_cli_refuses_what_would_fail_every_poll_in_one_line(env: dict[str, str],
                                                            names: str) -> None:
    done = _cli(env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("prefect-pg-exporter: error: ") and names in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Xq7" not in done.stderr and "Zk9" not in done.stderr
    assert not re.search(r"<built-in|mappingproxy|\['", done.stderr)  # no Python repr


def test_cli_listen_address_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli("--postgres-dsn", DSN, "--listen-address", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("address already in use")


def test_thresholds_from_file_environment_and_set_merge_by_name(tmp_path: Path) -> None:
    file = tmp_path / "exporter.toml"
    file.write_text(f'postgres_dsn = "{DSN}"\n[thresholds]\nlate_runs_warning = 5\n'
                    "blocked_wait_critical_seconds = 30\n")
    env = {"PREFECT_PG_EXPORTER_CONFIG_FILE": str(file),
           "PREFECT_PG_EXPORTER_THRESHOLDS": "late_runs_warning=7, dead_tuples_warning=10"}
    config = load({"thresholds": ["dead_tuples_warning=20"]}, env)
    assert config.thresholds == {"late_runs_warning": 7, "blocked_wait_critical_seconds": 30,
                                 "dead_tuples_warning": 20}


@pytest.mark.parametrize(("where", "value", "message"), [
    ("env", "nonsense=1", "unknown threshold 'nonsense'"),
    ("env", "late_runs_warning", "not NAME=VALUE"),
    ("env", "late_runs_warning=soon", "not a number"),
    ("env", "late_runs_warning=-1", "finite number >= 0"),
    ("flag", "late_runs_warning=nan", "finite number >= 0"),
])
def test_malformed_thresholds_are_refused_in_one_line(where: str, value: str,
                                                      message: str) -> None:
    flags = {"thresholds": [value]} if where == "flag" else {}
    env = {"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN}
    if where == "env":
        env["PREFECT_PG_EXPORTER_THRESHOLDS"] = value
    with pytest.raises(ConfigError, match=message) as info:
        load(flags, env)
    assert "\n" not in str(info.value)


def test_cli_set_reaches_the_doctor_and_a_bad_one_exits_2() -> None:
    env = {"PATH": "/usr/bin:/bin", "PREFECT_PG_EXPORTER_POSTGRES_DSN":
           "postgresql://x@127.0.0.1:1/db", "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "1"}
    bad = subprocess.run([sys.executable, "-m", "exporter", "doctor", "--set", "nope=1"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "unknown threshold 'nope'" in bad.stderr


def _flags(*argv: str) -> dict[str, Any]:
    return vars(build_parser().parse_args(argv))


def test_exporter_toolkit_flag_spellings(tmp_path: Path) -> None:
    """A command line written for node_exporter works."""
    web = tmp_path / "web.yml"
    web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    config = load(_flags("--web.listen-address", "127.0.0.1:9999", "--web.telemetry-path",
                         "/prom/metrics", "--web.config.file", str(web), "--log.level", "warn",
                         "--log.format", "logfmt"), {"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN})
    assert config.listen == Listen("127.0.0.1", 9999)
    assert config.telemetry_path == "/prom/metrics"
    assert config.web.headers == {"X-Frame-Options": "deny"}
    assert (config.log_level, config.log_format) == ("warning", "logfmt")
    # and ours, beside them: the same settings
    config = load(_flags("--listen-address", "127.0.0.1:9999", "--log-level", "warning"), {
        "PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN, "PREFECT_PG_EXPORTER_TELEMETRY_PATH": "/x"})
    assert (config.listen.port, config.log_level, config.telemetry_path) == (9999, "warning", "/x")
    assert load({"postgres_dsn": DSN, "log_level": "WARN"}, {}).log_level == "warning"
    assert load({"postgres_dsn": DSN}, {}).telemetry_path == "/metrics"


@pytest.mark.parametrize("argv", [
    ("--listen-address", ":9816", "--web.listen-address", "0.0.0.0:9816"),
    ("--listen-address", ":9816", "--listen-address", ":9816"),
    ("--telemetry-path", "/m", "--web.telemetry-path", "/m"),
    ("--log-level", "warning", "--log.level", "warn"),
    ("--log-format", "json", "--log.format", "JSON"),
])
def test_both_spellings_with_one_meaning_are_fine(argv: tuple[str, ...]) -> None:
    both = load(_flags(*argv, "--postgres-dsn", DSN), {})
    assert both == load(_flags(*argv[:2], "--postgres-dsn", DSN), {})  # the first alone


@pytest.mark.parametrize(("argv", "message"), [
    (("--listen-address", ":1", "--web.listen-address", ":2"),
     "--listen-address ':1' and --web.listen-address ':2' disagree: give one listen address"),
    # the toolkit repeats it for several listeners; this exporter has one
    (("--web.listen-address", ":1", "--web.listen-address", ":2"), "give one listen address"),
    (("--telemetry-path", "/a", "--web.telemetry-path", "/b"), "give one telemetry path"),
    (("--log-level", "debug", "--log.level", "error"), "give one log level"),
    (("--log.format", "logfmt", "--log-format", "json"), "give one log format"),
    (("--web-config-file", "a.yml", "--web.config.file", "b.yml"), "give one web config file"),
    (("--postgres-dsn", DSN.replace("5433", "5434")), "give one postgres dsn"),
    # issue 22: a header value was echoed (a token, often)
    (("--prefect-api-url", "http://p:4200/api", "--prefect-api-headers", '{"X-T": "s3cret-pw"}',
      "--prefect-api-headers", '{"X-T": "other"}'),
     "--prefect-api-headers and --prefect-api-headers disagree: give one prefect api headers"),
])
def test_two_values_for_one_setting_are_refused(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load(_flags("--postgres-dsn", DSN, *argv), {})
    assert "\n" not in str(info.value)
    assert "s3cret-pw" not in str(info.value)


def test_cli_two_spellings_that_disagree_are_one_line_and_exit_2() -> None:
    done = _cli("--postgres-dsn", DSN, "--listen-address", "127.0.0.1:0",
                "--web.listen-address", "127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "disagree" in done.stderr


def test_no_statements_is_a_bare_flag_a_variable_or_a_file_key(tmp_path: Path) -> None:
    env = {"PREFECT_PG_EXPORTER_POSTGRES_DSN": DSN}
    assert load(_flags(), env).no_statements is False
    assert load(_flags("--no-statements"), env).no_statements is True
    from exporter.cli import _parser

    args = _parser().parse_args(["--no-statements", "doctor"])  # no value: "doctor" stays
    assert args.command == "doctor" and load(vars(args), env).no_statements is True
    assert load({}, {**env, "PREFECT_PG_EXPORTER_NO_STATEMENTS": "true"}).no_statements is True
    file = tmp_path / "exporter.toml"
    file.write_text(f'postgres_dsn = "{DSN}"\nno_statements = true\nrecent_incidents = 7\n')
    config = load({"config_file": str(file)}, {})
    assert (config.no_statements, config.recent_incidents) == (True, 7)
    assert load({}, env).recent_incidents == 50
