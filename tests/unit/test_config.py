"""Configuration: TOML -> validated, typed config; every error names the key and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dovecote.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_listen,
    to_async_url,
)

FULL_TOML = """\
[server]
domains = ["example.org", "Other.EXAMPLE"]
data_dir = "{data_dir}"

[listen]
c2s = "127.0.0.1:5222"
c2s_tls = "[::1]:5223"
s2s = ""
http = "0.0.0.0:8080"

[tls]
cert = "/etc/dovecote/cert.pem"
key = "/etc/dovecote/key.pem"

[storage]
url = "postgresql://dovecote:secret@db.example/dovecote"

[registration]
open = true

[muc]
domain = "conference.example.org"

[pubsub]
domain = "pubsub.example.org"

[upload]
domain = "upload.example.org"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dovecote.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return str(info.value)


# ---- defaults -----------------------------------------------------------------------
def test_defaults() -> None:
    config = config_from_dict({})
    assert config.server.domains == ["localhost"]
    assert config.listen.c2s == "0.0.0.0:5222"
    assert config.listen.c2s_tls == "0.0.0.0:5223"
    assert config.listen.s2s == "0.0.0.0:5269"
    assert config.listen.http == "0.0.0.0:5280"
    assert [parse_listen(a)[1] for a in (config.listen.c2s, config.listen.c2s_tls)] == [
        5222,
        5223,
    ]
    assert parse_listen(config.listen.s2s)[1] == 5269
    assert parse_listen(config.listen.http)[1] == 5280
    assert config.auth.scram_iterations == 4096
    assert config.registration.open is False
    assert config.tls.cert is None and config.tls.key is None
    assert config.storage.url is None
    assert config.muc.domain is None
    assert config.pubsub.domain is None
    assert config.upload.domain is None
    assert config.source is None


def test_default_storage_is_sqlite_under_data_dir(tmp_path: Path) -> None:
    config = config_from_dict({"server": {"data_dir": str(tmp_path)}})
    assert config.data_path == tmp_path
    assert config.storage_url == f"sqlite+aiosqlite:///{tmp_path / 'dovecote.sqlite3'}"


def test_load_config_without_any_file_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOVECOTE_CONFIG", raising=False)
    monkeypatch.setattr("dovecote.config.DEFAULT_CONFIG_PATHS", (tmp_path / "none.toml",))
    config = load_config()
    assert config.server.domains == ["localhost"]


def test_load_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[server]\ndomains = ["env.example"]\n')
    monkeypatch.setenv("DOVECOTE_CONFIG", str(path))
    config = load_config()
    assert config.server.domains == ["env.example"]
    assert config.source == str(path)


def test_config_is_frozen() -> None:
    config = config_from_dict({})
    with pytest.raises(ValidationError):
        config.server.domains = ["x.example"]  # type: ignore[misc]


# ---- every documented key -----------------------------------------------------------
def test_every_documented_key_is_accepted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = write(tmp_path, FULL_TOML.format(data_dir=data_dir))
    config = load_config(path)
    assert config.source == str(path)
    assert config.server.domains == ["example.org", "other.example"]
    assert config.server.data_dir == str(data_dir)
    assert config.listen.c2s == "127.0.0.1:5222"
    assert config.listen.c2s_tls == "[::1]:5223"
    assert config.listen.s2s == ""
    assert config.listen.http == "0.0.0.0:8080"
    assert config.tls.cert == "/etc/dovecote/cert.pem"
    assert config.tls.key == "/etc/dovecote/key.pem"
    assert config.storage.url == "postgresql://dovecote:secret@db.example/dovecote"
    assert config.storage_url == "postgresql+asyncpg://dovecote:secret@db.example/dovecote"
    assert config.registration.open is True
    assert config.muc.domain == "conference.example.org"
    assert config.pubsub.domain == "pubsub.example.org"
    assert config.upload.domain == "upload.example.org"


def test_config_from_dict_equals_load_config(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\ndomains = ["a.example"]\n[auth]\nscram_iterations = 8192\n')
    from_file = load_config(path)
    from_dict = config_from_dict(
        {"server": {"domains": ["a.example"]}, "auth": {"scram_iterations": 8192}},
        source=str(path),
    )
    assert from_file == from_dict
    assert isinstance(from_file, Config)


def test_domains_are_prepared() -> None:
    config = config_from_dict({"server": {"domains": ["Bücher.EXAMPLE."]}})
    assert config.server.domains == ["bücher.example"]


def test_listen_address_forms() -> None:
    assert parse_listen("127.0.0.1:5222") == ("127.0.0.1", 5222)
    assert parse_listen("[::1]:5222") == ("::1", 5222)
    assert parse_listen("localhost:0") == ("localhost", 0)
    config = config_from_dict({"listen": {"c2s": "127.0.0.1:0", "http": ""}})
    assert config.listen.http == ""


# ---- errors -------------------------------------------------------------------------
def test_unknown_top_level_key() -> None:
    message = error_of({"srever": {"domains": ["a.example"]}})
    assert "srever" in message
    assert "unknown" in message


def test_unknown_nested_key() -> None:
    message = error_of({"server": {"domain": "a.example"}})
    assert "server.domain" in message
    assert "unknown" in message


def test_unknown_key_in_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[listen]\nc2ss = '0.0.0.0:5222'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "listen.c2ss" in str(info.value)


@pytest.mark.parametrize("value", ["nohost", "localhost", ":5222", "5222", "[::1]"])
def test_bad_listen_address(value: str) -> None:
    message = error_of({"listen": {"c2s": value}})
    assert "listen.c2s" in message
    assert repr(value) in message


@pytest.mark.parametrize("value", ["0.0.0.0:99999", "0.0.0.0:65536", "host:-1", "host:abc"])
def test_bad_port(value: str) -> None:
    message = error_of({"listen": {"s2s": value}})
    assert "listen.s2s" in message
    assert repr(value) in message


def test_listen_must_be_a_string() -> None:
    message = error_of({"listen": {"http": 5280}})
    assert "listen.http" in message and "5280" in message


@pytest.mark.parametrize("value", [4095, 1000, 0, -1])
def test_scram_iterations_below_4096(value: int) -> None:
    message = error_of({"auth": {"scram_iterations": value}})
    assert "auth.scram_iterations" in message
    assert str(value) in message


def test_scram_iterations_above_minimum() -> None:
    assert config_from_dict({"auth": {"scram_iterations": 10000}}).auth.scram_iterations == 10000


def test_account_failure_budget_defaults() -> None:
    auth = config_from_dict({}).auth
    assert (auth.account_failures_before_delay, auth.max_account_delay) == (5, 10.0)
    assert auth.account_failure_window == 900.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("account_failures_before_delay", 0),
        ("max_account_delay", -1),
        ("account_failure_window", 0),
    ],
)
def test_account_failure_budget_is_validated(key: str, value: int) -> None:
    assert f"auth.{key}" in error_of({"auth": {key: value}})


@pytest.mark.parametrize("value", ["bad domain", "bad_domain.example", "a..example", "-a.example"])
def test_invalid_domain(value: str) -> None:
    message = error_of({"server": {"domains": ["ok.example", value]}})
    assert "server.domains" in message
    assert repr(value) in message


@pytest.mark.parametrize("section", ["muc", "pubsub", "upload"])
def test_invalid_service_domain(section: str) -> None:
    message = error_of({section: {"domain": "no spaces.example"}})
    assert f"{section}.domain" in message
    assert "'no spaces.example'" in message


def test_domains_must_not_repeat() -> None:
    message = error_of({"server": {"domains": ["a.example", "A.example"]}})
    assert "server.domains" in message


def test_domains_must_not_be_empty() -> None:
    assert "server.domains" in error_of({"server": {"domains": []}})


def test_tls_cert_without_key() -> None:
    message = error_of({"tls": {"cert": "/etc/cert.pem"}})
    assert "tls" in message and "key" in message
    assert "/etc/cert.pem" in message


def test_tls_key_without_cert() -> None:
    message = error_of({"tls": {"key": "/etc/key.pem"}})
    assert "tls" in message and "cert" in message


@pytest.mark.parametrize("url", ["mysql://u@h/db", "redis://h", "oracle+cx://x", "/var/db.sqlite"])
def test_unsupported_storage_scheme(url: str) -> None:
    message = error_of({"storage": {"url": url}})
    assert "storage.url" in message
    assert repr(url) in message


@pytest.mark.parametrize(
    "url",
    ["sqlite:///x.db", "postgresql://u@h/db", "postgres://u@h/db", "postgresql+asyncpg://h/d"],
)
def test_supported_storage_schemes(url: str) -> None:
    assert config_from_dict({"storage": {"url": url}}).storage.url == url


def test_wrong_type_names_key_and_value() -> None:
    message = error_of({"registration": {"open": "maybe"}})
    assert "registration.open" in message and "'maybe'" in message


def test_source_is_not_a_key() -> None:
    assert "source" in error_of({"source": "/tmp/x"})


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\ndomains = [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "TOML" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_error_in_file_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[listen]\nc2s = '0.0.0.0:70000'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "listen.c2s" in str(info.value)
    assert "'0.0.0.0:70000'" in str(info.value)


def test_error_is_one_line() -> None:
    assert "\n" not in error_of({"auth": {"scram_iterations": 1}})


# ---- URLs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        (
            "sqlite:////var/lib/dovecote/db.sqlite3",
            "sqlite+aiosqlite:////var/lib/dovecote/db.sqlite3",
        ),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_to_async_url(url: str, expected: str) -> None:
    assert to_async_url(url) == expected


def test_storage_url_property_converts() -> None:
    config = config_from_dict({"storage": {"url": "sqlite:////tmp/x.db"}})
    assert config.storage_url == "sqlite+aiosqlite:////tmp/x.db"


# ---- quotas and limits --------------------------------------------------------------
def test_quota_defaults() -> None:
    config = config_from_dict({})
    assert config.offline.max_bytes == 10 * 1024 * 1024
    assert config.mam.max_bytes_per_user == 100 * 1024 * 1024
    assert config.mam.quota_policy == "expire-oldest"
    assert (config.roster.max_items, config.roster.max_pending) == (5000, 1000)
    assert (config.pep.max_nodes_per_user, config.pep.max_items_per_node) == (256, 1000)
    assert (config.private.max_namespaces, config.private.max_bytes) == (100, 1024 * 1024)
    assert config.blocking.max_items == 5000
    assert config.limits.max_route_queue == 1000


def test_archive_quota_policy_is_validated() -> None:
    assert config_from_dict({"mam": {"quota_policy": "stop"}}).mam.quota_policy == "stop"
    message = error_of({"mam": {"quota_policy": "delete-all"}})
    assert "mam.quota_policy" in message and "'delete-all'" in message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("offline", "max_bytes", 100),
        ("mam", "max_bytes_per_user", -1),
        ("roster", "max_items", 0),
        ("roster", "max_pending", 0),
        ("pep", "max_nodes_per_user", 0),
        ("pep", "max_items_per_node", 0),
        ("private", "max_namespaces", 0),
        ("private", "max_bytes", 10),
        ("blocking", "max_items", 0),
        ("limits", "max_route_queue", 0),
        ("pubsub", "max_nodes", 0),
        ("pubsub", "max_nodes_per_user", 0),
        ("pubsub", "max_items_per_node", 0),
        ("pubsub", "max_subscriptions_per_node", 0),
        ("pubsub", "max_payload_bytes", 10),
    ],
)
def test_limits_out_of_range(section: str, key: str, value: int) -> None:
    assert f"{section}.{key}" in error_of({section: {key: value}})


@pytest.mark.parametrize("value", [0, -1, 61])
def test_storage_busy_timeout_bounds(value: float) -> None:
    assert config_from_dict({}).storage.busy_timeout == 1.0
    assert config_from_dict({"storage": {"busy_timeout": 0.25}}).storage.busy_timeout == 0.25
    with pytest.raises(ConfigError):
        config_from_dict({"storage": {"busy_timeout": value}})


def test_pubsub_section() -> None:
    config = config_from_dict({"pubsub": {"domain": "PubSub.Example.org", "creators": "all"}})
    assert config.pubsub.domain == "pubsub.example.org"
    assert config.pubsub.creators == "all"
    assert config.pubsub.default_access_model == "open"
    assert config_from_dict({}).pubsub.creators == "local"
    message = error_of({"pubsub": {"creators": "everyone"}})
    assert "pubsub.creators" in message and "'everyone'" in message
    message = error_of({"pubsub": {"default_access_model": "secret"}})
    assert "pubsub.default_access_model" in message
    message = error_of({"pubsub": {"domain": "pubsub.example.org"}, "components": {
        "pubsub.example.org": "secret"}})  # fmt: skip
    assert "already served" in message


# ---- [proxy65] (XEP-0065) -----------------------------------------------------------
def test_proxy65_section(tmp_path: Path) -> None:
    config = config_from_dict({})
    assert config.proxy65.domain is None
    assert config.proxy65.address == "0.0.0.0:7777"
    assert config.proxy65.public_host is None
    assert config.proxy65.max_bandwidth == 10 * 1024 * 1024
    assert config.proxy65.allowed == "local"
    path = write(
        tmp_path,
        '[proxy65]\ndomain = "Proxy.Example.org"\naddress = "[::1]:7777"\n'
        'public_host = "[2001:db8::1]"\nmax_bandwidth = 0\nallowed = "all"\n'
        "activation_timeout = 30\nidle_timeout = 60\nmax_connections = 10\n"
        "max_connections_per_ip = 0\nmax_transfer_size = 1048576\n",
    )
    config = load_config(path)
    assert config.proxy65.domain == "proxy.example.org"
    assert config.proxy65.address == "[::1]:7777"
    assert config.proxy65.public_host == "2001:db8::1"
    assert config.proxy65.max_bandwidth == 0
    assert config.proxy65.allowed == "all"
    assert config.proxy65.max_transfer_size == 1048576


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"domain": "no spaces.example"}, "proxy65.domain"),
        ({"address": "7777"}, "proxy65.address"),
        ({"address": ""}, "proxy65.address"),
        ({"address": "0.0.0.0:99999"}, "proxy65.address"),
        ({"public_host": "a host"}, "proxy65.public_host"),
        ({"public_host": ""}, "proxy65.public_host"),
        ({"max_bandwidth": -1}, "proxy65.max_bandwidth"),
        ({"max_connections": 1}, "proxy65.max_connections"),
        ({"max_connections_per_ip": -1}, "proxy65.max_connections_per_ip"),
        ({"activation_timeout": 0}, "proxy65.activation_timeout"),
        ({"idle_timeout": -5}, "proxy65.idle_timeout"),
        ({"allowed": "everyone"}, "proxy65.allowed"),
        ({"port": 7777}, "proxy65.port"),
    ],
)
def test_proxy65_invalid(values: dict[str, Any], key: str) -> None:
    assert repr(key) in error_of({"proxy65": values})


def test_proxy65_domain_must_be_its_own() -> None:
    message = error_of(
        {"server": {"domains": ["example.org"]}, "proxy65": {"domain": "example.org"}}
    )
    assert "proxy65.domain" in message and "already served" in message
    for section in ("muc", "pubsub", "upload"):
        message = error_of({section: {"domain": "x.example"}, "proxy65": {"domain": "x.example"}})
        assert "proxy65.domain" in message and f"{section}.domain" in message
    message = error_of({"proxy65": {"domain": "x.example"}, "components": {"x.example": "secret"}})
    assert "already served" in message


# ---- [upload] (XEP-0363) ---------------------------------------------------------------
def test_upload_defaults() -> None:
    upload = config_from_dict({}).upload
    assert upload.domain is None
    assert upload.max_file_size == 100 * 1024 * 1024
    assert upload.quota_per_user == 1024 * 1024 * 1024
    assert upload.expire_after == 30 * 86400
    assert upload.slot_timeout == 300
    assert upload.allowed == "local"
    assert upload.storage_dir == "" and upload.public_url == ""


@pytest.mark.parametrize(
    ("values", "key", "bad"),
    [
        ({"allowed": "everyone"}, "upload.allowed", "'everyone'"),
        ({"max_file_size": 0}, "upload.max_file_size", "0"),
        ({"slot_timeout": 0}, "upload.slot_timeout", "0"),
        ({"public_url": "ftp://files.example"}, "upload.public_url", "'ftp://files.example'"),
        ({"max_slots_per_user": 0}, "upload.max_slots_per_user", "0"),
    ],
)
def test_upload_invalid_values(values: dict[str, Any], key: str, bad: str) -> None:
    message = error_of({"upload": values})
    assert key in message and bad in message


def test_upload_quota_must_hold_a_file() -> None:
    message = error_of({"upload": {"max_file_size": 2000, "quota_per_user": 1000}})
    assert "upload" in message and "quota_per_user" in message
    # 0: no quota.
    assert config_from_dict({"upload": {"quota_per_user": 0}}).upload.quota_per_user == 0


def test_upload_public_url_loses_its_trailing_slash() -> None:
    config = config_from_dict({"upload": {"public_url": "https://files.example/"}})
    assert config.upload.public_url == "https://files.example"


def test_bosh_defaults_and_limits() -> None:
    bosh = config_from_dict({}).bosh
    assert (bosh.max_wait, bosh.max_inactivity, bosh.max_hold, bosh.max_requests) == (60, 60, 1, 2)
    assert bosh.max_pause == 300 and bosh.enabled and not bosh.consider_secure
    assert "bosh.max_wait" in error_of({"bosh": {"max_wait": 0}})
    assert "bosh.max_body_size" in error_of({"bosh": {"max_body_size": 10}})
    # The rid window must exceed the requests held.
    assert "bosh.max_requests" in error_of({"bosh": {"max_hold": 2, "max_requests": 2}})


# ---- [s2s] -----------------------------------------------------------------------------
def test_s2s_defaults() -> None:
    s2s = config_from_dict({}).s2s
    assert s2s.enabled and s2s.dialback and s2s.bidi and s2s.require_tls
    assert not s2s.require_valid_certs
    assert (s2s.idle_timeout, s2s.max_queue, s2s.connect_timeout) == (600.0, 1000, 30.0)
    assert s2s.routes == {} and s2s.nameservers == [] and s2s.dialback_secret is None
    assert config_from_dict({}).listen.s2s_tls == ""


def test_s2s_routes_and_nameservers() -> None:
    s2s = config_from_dict(
        {
            "s2s": {
                "routes": {"Other.Example": "127.0.0.2:5269"},
                "nameservers": ["192.0.2.53", "127.0.0.1:5353", "[::1]:53", "::1"],
                "blocked_domains": ["Bad.Example"],
            }
        }
    ).s2s
    assert s2s.routes == {"other.example": "127.0.0.2:5269"}
    assert s2s.blocked_domains == ["bad.example"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"routes": {"other.example": "nohost"}}, "s2s.routes"),
        ({"routes": {"other.example": "host:0"}}, "s2s.routes"),
        ({"nameservers": ["dns.example"]}, "s2s.nameservers"),
        ({"nameservers": ["127.0.0.1:0"]}, "s2s.nameservers"),
        ({"idle_timeout": 0}, "s2s.idle_timeout"),
        ({"max_queue": 0}, "s2s.max_queue"),
        ({"dialback_secret": "short"}, "s2s.dialback_secret"),
        ({"blocked_domains": ["bad domain"]}, "s2s.blocked_domains"),
    ],
)
def test_s2s_validation(section: dict[str, Any], key: str) -> None:
    assert key in error_of({"s2s": section})
