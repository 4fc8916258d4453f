"""Configuration: one TOML file, validated into typed models.

Every error names the key and the bad value, so `dovecote check-config` and a failing
`dovecote serve` can print one clear line.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dovecote.jid import InvalidJID, prepare_domain

DEFAULT_CONFIG_PATHS = (Path("dovecote.toml"), Path("/etc/dovecote/dovecote.toml"))
ENV_CONFIG = "DOVECOTE_CONFIG"


class ConfigError(Exception):
    """A configuration problem, worded for one line of output."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "dovecote")


def _check_listen(value: str) -> str:
    """'host:port', '[v6]:port' or '' (disabled)."""
    if value == "":
        return value
    parse_listen(value)
    return value


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    return host, port


ListenAddress = Annotated[str, AfterValidator(_check_listen)]


def _check_domain(value: str) -> str:
    try:
        return prepare_domain(value)
    except InvalidJID as exc:
        raise ValueError(f"invalid domain {value!r}: {exc}") from None


Domain = Annotated[str, AfterValidator(_check_domain)]


#: XEP-0157 "XMPP Registrar Considerations": the serverinfo roles (fields "<role>-addresses").
CONTACT_ROLES = frozenset(("abuse", "admin", "feedback", "sales", "security", "status", "support"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(_Section):
    domains: list[Domain] = Field(default_factory=lambda: ["localhost"], min_length=1)
    data_dir: str = Field(default_factory=_default_data_dir)
    admins: list[str] = Field(default_factory=list)
    #: Reported by XEP-0092 software version; false hides the operating system.
    show_os: bool = True
    #: XEP-0157 contact addresses (URIs) by role, shown in the server's disco#info.
    contacts: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("contacts")
    @classmethod
    def _roles(cls, contacts: dict[str, list[str]]) -> dict[str, list[str]]:
        for role in contacts:
            if role not in CONTACT_ROLES:
                raise ValueError(
                    f"unknown contact role {role!r} (one of {', '.join(sorted(CONTACT_ROLES))})"
                )
        return contacts

    @field_validator("domains")
    @classmethod
    def _unique(cls, domains: list[str]) -> list[str]:
        if len(set(domains)) != len(domains):
            raise ValueError("domains must not repeat")
        return domains


class ListenSection(_Section):
    c2s: ListenAddress = "0.0.0.0:5222"
    c2s_tls: ListenAddress = "0.0.0.0:5223"
    #: Server-to-server streams (RFC 6120, STARTTLS); empty: no incoming federation.
    s2s: ListenAddress = "0.0.0.0:5269"
    #: Server-to-server streams over direct TLS (XEP-0368, ALPN xmpp-server); empty: off.
    s2s_tls: ListenAddress = ""
    #: Plain HTTP (WebSocket, BOSH, host-meta; upload to come), for use behind a
    #: reverse proxy that terminates TLS; empty: off.
    http: ListenAddress = "0.0.0.0:5280"
    #: The same HTTP application over TLS with the `[tls]` certificate; empty: off.
    https: ListenAddress = ""
    #: XEP-0114 external components ("127.0.0.1:5347"); empty: off.
    component: ListenAddress = ""


class TLSSection(_Section):
    cert: str | None = None
    key: str | None = None
    #: RFC 6120 §5.3.1: STARTTLS is mandatory-to-negotiate before SASL unless disabled.
    required: bool = True

    @model_validator(mode="after")
    def _both_or_neither(self) -> TLSSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key must be given together")
        return self


class StorageSection(_Section):
    url: str | None = None
    #: Seconds a write waits for a lock held by another writer (SQLite busy_timeout,
    #: PostgreSQL lock_timeout) or for a free connection; then the stanza gets
    #: resource-constraint (type wait) instead of holding up the stanzas behind it.
    busy_timeout: float = Field(default=1.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is None:
            return None
        scheme = url.split(":", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"unsupported storage url scheme {scheme!r} (sqlite or postgresql)")
        return url


class AuthSection(_Section):
    scram_iterations: int = Field(default=4096, ge=4096)
    #: Allow PLAIN (only ever offered over TLS).
    allow_plain: bool = True
    #: Failed logins to one account (from any address) before its answers slow down;
    #: addresses the account logged in from before are never slowed down.
    account_failures_before_delay: int = Field(default=5, ge=1)
    #: Seconds, the cap of that delay: at most one answer per account per this time.
    max_account_delay: float = Field(default=10.0, ge=0)
    #: Seconds without a failure after which an account's failures are forgotten.
    account_failure_window: float = Field(default=900.0, gt=0)


class RegistrationSection(_Section):
    #: XEP-0077: anyone may create an account in-band; false: `dovecote user add` only.
    open: bool = False
    #: XEP-0077 §11: new accounts allowed per client IP address per `period` (0: no limit).
    max_per_ip: int = Field(default=5, ge=0)
    #: Seconds over which `max_per_ip` is counted.
    period: float = Field(default=600.0, gt=0)
    #: Shortest password accepted for a new account or a password change (characters).
    min_password_length: int = Field(default=8, ge=1)


class LimitsSection(_Section):
    max_stanza_size: int = Field(default=262144, ge=10000)
    #: Seconds a client may take from connecting to binding a resource.
    negotiation_timeout: float = Field(default=60.0, gt=0)
    #: Failed authentications from one address before the answers start to slow down.
    auth_failures_before_delay: int = Field(default=3, ge=1)
    max_auth_delay: float = Field(default=10.0, ge=0)
    #: Bytes per second a client connection may send on average (0: no limit); beyond,
    #: the server reads more slowly (traffic shaping, like Prosody's mod_limits).
    c2s_rate: int = Field(default=262144, ge=0)
    #: Bytes a client may send at once above that rate.
    c2s_burst: int = Field(default=1048576, ge=0)
    #: Client connections open at once from one IPv4 address or IPv6 /64 (0: no limit);
    #: beyond, a new connection gets the stream error policy-violation.
    max_connections_per_ip: int = Field(default=100, ge=0)
    #: Resources (sessions) bound at once per account (0: no limit); binding one more
    #: gets resource-constraint (RFC 6120 §7.6.2.1).
    max_resources: int = Field(default=10, ge=0)
    #: Addresses one session may send directed presence to (RFC 6121 §4.6), all told
    #: unavailable when it ends; beyond, the presence is refused with resource-constraint.
    max_directed_presence: int = Field(default=1000, ge=1)
    #: Stanzas the server sends on behalf of one account (or itself) kept waiting to be
    #: routed in order (RFC 6120 §10.1); beyond, one is routed at once, out of order.
    max_route_queue: int = Field(default=1000, ge=1)


class StreamManagementSection(_Section):
    #: XEP-0198: offer stream management.
    enabled: bool = True
    #: Seconds a session with a dead connection waits to be resumed.
    resume_timeout: float = Field(default=300.0, ge=0)
    #: Seconds after sending a stanza before asking the client for an ack.
    ack_delay: float = Field(default=1.0, gt=0)
    #: Unacknowledged stanzas kept per session (Prosody's smacks_max_queue_size); beyond,
    #: the session ends with resource-constraint and its messages are re-routed.
    max_queue: int = Field(default=500, ge=10)


class OfflineSection(_Section):
    #: XEP-0160: messages kept per user; beyond, senders get resource-constraint.
    max_messages: int = Field(default=1000, ge=0)
    #: Bytes of stored messages per user (serialized XML); beyond, resource-constraint.
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)


class VCardSection(_Section):
    #: XEP-0054: the largest vCard accepted, in bytes (photos are inline).
    max_size: int = Field(default=128 * 1024, ge=1024)


class MamSection(_Section):
    """XEP-0313 message archives of user accounts."""

    #: Days messages are kept; 0 keeps them forever.
    retention_days: int = Field(default=0, ge=0)
    #: Archiving for contacts in neither of a user's lists (XEP-0441 §2.1.1): 'always'
    #: (ejabberd's default; a personal server keeps every conversation), 'roster' (only
    #: contacts in the roster, Prosody's default) or 'never'.
    default: str = "always"
    #: Most results sent for one query page (XEP-0313 §4.3.1), whatever the client asks.
    max_page_size: int = Field(default=250, ge=1)
    #: Results per page when the client names no <max/>.
    default_page_size: int = Field(default=50, ge=1)
    #: Bytes of archived messages (serialized XML) per user; 0: no limit.
    max_bytes_per_user: int = Field(default=100 * 1024 * 1024, ge=0)
    #: Over `max_bytes_per_user`: 'expire-oldest' removes the user's oldest archived
    #: messages (down to 90% of the quota), 'stop' archives nothing more until there is room.
    quota_policy: str = "expire-oldest"

    @field_validator("quota_policy")
    @classmethod
    def _quota_policy(cls, value: str) -> str:
        if value not in ("expire-oldest", "stop"):
            raise ValueError(f"expected expire-oldest or stop, got {value!r}")
        return value

    @field_validator("default")
    @classmethod
    def _default(cls, value: str) -> str:
        if value not in ("always", "never", "roster"):
            raise ValueError(f"expected always, never or roster, got {value!r}")
        return value


class RosterSection(_Section):
    """RFC 6121 rosters."""

    #: Items per roster, however created (roster set, outbound subscription presence);
    #: beyond, roster sets get not-allowed and subscription presence resource-constraint.
    max_items: int = Field(default=5000, ge=1)
    #: Subscription requests waiting for the user's answer (RFC 6121 §3.1.3); beyond,
    #: a new request is bounced to its sender with resource-constraint.
    max_pending: int = Field(default=1000, ge=1)


class PepSection(_Section):
    """XEP-0163 personal eventing (each account's pubsub service)."""

    #: Nodes per account; creating one more is refused (policy-violation).
    max_nodes_per_user: int = Field(default=256, ge=1)
    #: Items a node keeps at most: pubsub#max_items 'max', and the cap of any number.
    max_items_per_node: int = Field(default=1000, ge=1)


class PrivateSection(_Section):
    """XEP-0049 private XML storage."""

    #: Namespaces stored per user; a set adding one more gets resource-constraint.
    max_namespaces: int = Field(default=100, ge=1)
    #: Bytes stored per user over all namespaces; beyond, resource-constraint.
    max_bytes: int = Field(default=1024 * 1024, ge=1024)


class BlockingSection(_Section):
    """XEP-0191 blocking command."""

    #: JIDs on a user's blocklist; a block beyond gets resource-constraint.
    max_items: int = Field(default=5000, ge=1)


def _check_network(value: str) -> str:
    """An address ("192.0.2.7", "::1") or a network in CIDR notation ("10.0.0.0/8")."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return value


def _check_public_url(value: str) -> str:
    if value == "":
        return value
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"the public URL {value!r} may not have a query or fragment")
    return value.rstrip("/")


def _check_origin(value: str) -> str:
    if value == "*":
        return value
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path:
        raise ValueError(f"expected '*' or an origin like https://chat.example.org, got {value!r}")
    return value.lower()


class HttpSection(_Section):
    """The HTTP application (`[listen] http`/`https`): WebSocket, XEP-0156 host-meta."""

    #: The base URL clients reach this server under (say "https://chat.example.org"
    #: when a reverse proxy serves it there): the links of host-meta are built on it.
    #: Empty: built from each request (its Host, and the scheme it came in with).
    public_url: Annotated[str, AfterValidator(_check_public_url)] = ""
    #: Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For / Forwarded
    #: (RFC 7239) headers are believed: the client address used for per-address limits
    #: and logs, and whether the client came over TLS (X-Forwarded-Proto).
    trusted_proxies: list[Annotated[str, AfterValidator(_check_network)]] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"]
    )
    #: Origins web clients may be served from (CORS, and the Origin of a WebSocket
    #: handshake); "*": any.
    cors_origins: list[Annotated[str, AfterValidator(_check_origin)]] = Field(
        default_factory=lambda: ["*"]
    )
    #: Seconds an idle HTTP connection (keep-alive, or one that sends no request) is kept.
    keepalive_timeout: float = Field(default=75.0, gt=0)
    #: Seconds a request body may take to arrive.
    request_timeout: float = Field(default=60.0, gt=0)
    #: Seconds between WebSocket ping frames (RFC 7395 §3.8); a connection that does not
    #: answer within half of it is dropped (its session hibernates with XEP-0198). 0: off.
    websocket_ping_interval: float = Field(default=60.0, ge=0)
    #: Treat plain ws:// connections as encrypted (TLS ends at a reverse proxy on the same
    #: host that does not send X-Forwarded-Proto): `[tls] required` then allows them to log
    #: in, and PLAIN is offered. Like Prosody's consider_websocket_secure.
    consider_websocket_secure: bool = False


class BoshSection(_Section):
    """XEP-0124/XEP-0206 BOSH at `/http-bind` on the HTTP application: the caps the
    server puts on what a client asks for at session creation (XEP-0124 §7)."""

    #: Serve `/http-bind` (and list it in host-meta) when the HTTP application runs.
    enabled: bool = True
    #: Longest a request is held without anything to answer (XEP-0124 `wait`, seconds).
    max_wait: int = Field(default=60, ge=1, le=3600)
    #: Seconds without a pending request before the session is taken for disconnected
    #: (`inactivity`): the XMPP session then hibernates (XEP-0198) or ends.
    max_inactivity: int = Field(default=60, ge=1, le=3600)
    #: Requests held at once (`hold`).
    max_hold: int = Field(default=1, ge=0, le=10)
    #: Simultaneous requests (`requests`, the rid window); must exceed max_hold.
    max_requests: int = Field(default=2, ge=1, le=11)
    #: Longest pause a client may ask for (XEP-0124 §10 `maxpause`, seconds); 0: none.
    max_pause: int = Field(default=300, ge=0, le=86400)
    #: Shortest interval between empty polls (`polling`, seconds; XEP-0124 §11, §12).
    polling: int = Field(default=2, ge=0, le=60)
    #: Largest request body (bytes); a larger one is refused with 413.
    max_body_size: int = Field(default=1048576, ge=10000)
    #: Bytes waiting for the client to collect them; past this the session is dropped
    #: as a TCP connection that does not read (it hibernates with XEP-0198).
    max_buffer: int = Field(default=8 * 1024 * 1024, ge=65536)
    #: Treat plain http:// BOSH requests as encrypted (TLS ends at a proxy that sends no
    #: X-Forwarded-Proto), as `[http] consider_websocket_secure` does for WebSocket.
    consider_secure: bool = False

    @model_validator(mode="after")
    def _window(self) -> BoshSection:
        if self.max_requests <= self.max_hold:
            raise ValueError("bosh.max_requests must be greater than bosh.max_hold")
        return self


#: `[s2s.routes]` prefix for a route with TLS from the first byte (XEP-0368).
DIRECT_TLS_ROUTE = "tls://"


def _check_route(value: str) -> str:
    _host, port = parse_listen(value.removeprefix(DIRECT_TLS_ROUTE))
    if not port:
        raise ValueError(f"a route needs a port, got {value!r}")
    return value


def parse_nameserver(value: str) -> tuple[str, int]:
    """'ip', 'ip:port', '[v6]:port' or 'v6' -> (ip, port); port 53 by default."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":") or "53"
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, "53"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (with an optional :port)") from None
    if not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"bad port in {value!r}")
    return host, int(port_text)


def _check_nameserver(value: str) -> str:
    parse_nameserver(value)
    return value


class S2SSection(_Section):
    """Federation: server-to-server streams (RFC 6120), dialback (XEP-0220)."""

    #: Federation on (outgoing links; incoming ones need `[listen] s2s`); false: every
    #: remote address gets remote-server-not-found.
    enabled: bool = True
    #: Static routes "domain" = "host:port" used instead of DNS (private deployments, tests).
    routes: dict[Domain, Annotated[str, AfterValidator(_check_route)]] = Field(default_factory=dict)
    #: Refuse peers whose certificate is not trusted (else they may use dialback).
    require_valid_certs: bool = False
    #: Trusted CAs for peer certificates (PEM file, directory); unset: the system's.
    ca_file: str | None = None
    ca_path: str | None = None
    #: Allow Server Dialback (XEP-0220).
    dialback: bool = True
    #: TLS before dialback and stanzas, both directions (RFC 6120 §5.3.1).
    require_tls: bool = True
    #: Offer and use bidirectional streams (XEP-0288).
    bidi: bool = True
    #: Seconds without traffic after which a link is closed.
    idle_timeout: float = Field(default=600.0, gt=0)
    #: Remote domains refused both ways; `allowed_domains` non-empty: only those.
    blocked_domains: list[Domain] = Field(default_factory=list)
    allowed_domains: list[Domain] = Field(default_factory=list)
    #: Stanzas queued per remote domain while its link is set up; beyond:
    #: resource-constraint.
    max_queue: int = Field(default=1000, ge=1)
    #: Seconds to connect and authenticate a link before queued stanzas bounce with
    #: remote-server-timeout.
    connect_timeout: float = Field(default=30.0, gt=0)
    #: DNS servers ("ip" or "ip:port") for SRV/A look-ups; empty: the system's.
    nameservers: list[Annotated[str, AfterValidator(_check_nameserver)]] = Field(
        default_factory=list
    )
    #: The dialback secret; unset: a random one kept in data_dir/s2s-secret.
    dialback_secret: str | None = Field(default=None, min_length=16)
    #: Incoming and outgoing server connections open at once (0: no limit).
    max_incoming: int = Field(default=1000, ge=0)
    max_outgoing: int = Field(default=1000, ge=0)
    #: Bytes per second one incoming server connection may send (0: no limit), burst.
    rate: int = Field(default=1048576, ge=0)
    burst: int = Field(default=4194304, ge=0)


class ServiceDomainSection(_Section):
    domain: Domain | None = None


class PubSubSection(_Section):
    """XEP-0060 publish-subscribe service on a domain of its own (e.g. pubsub.example.org);
    off while `domain` is unset."""

    #: The service's domain; the `pubsub` module serves it when set.
    domain: Domain | None = None
    #: Who may create nodes: "all" (any JID, also remote), "local" (accounts of this
    #: server's domains) or "admins" (`[server] admins`).
    creators: Literal["all", "local", "admins"] = "local"
    #: Nodes on the service; one more: policy-violation with <max-nodes-exceeded/>.
    max_nodes: int = Field(default=10000, ge=1)
    #: Nodes one JID may own; one more: policy-violation with <max-nodes-exceeded/>.
    max_nodes_per_user: int = Field(default=100, ge=1)
    #: Items a node keeps at most: pubsub#max_items 'max', and the cap of any number.
    max_items_per_node: int = Field(default=1000, ge=1)
    #: Subscriptions per node; one more: policy-violation with <too-many-subscriptions/>.
    max_subscriptions_per_node: int = Field(default=10000, ge=1)
    #: The access model of new nodes (XEP-0060 §4.5) unless their configuration says.
    default_access_model: Literal["open", "presence", "roster", "whitelist", "authorize"] = "open"
    #: Bytes of one item's payload, serialized; beyond: not-acceptable + <payload-too-big/>.
    max_payload_bytes: int = Field(default=65536, ge=256)


class MucSection(_Section):
    """XEP-0045 multi-user chat: the service and the defaults and limits of its rooms."""

    #: The MUC service's domain ("conference.example.org"); unset: no MUC service.
    domain: Domain | None = None
    #: Who may create rooms: 'all' (anyone, also from other servers), 'local' (accounts
    #: of this server's domains) or 'admins' (the `[server] admins`).
    creators: str = "local"
    #: Rooms one user may own at once (owner affiliation); creating one more gets
    #: not-allowed.
    max_rooms_per_user: int = Field(default=100, ge=1)
    #: Rooms the service holds at once (persistent and in use); beyond, new rooms are
    #: refused (resource-constraint).
    max_rooms: int = Field(default=10000, ge=1)
    #: The cap of any room's maxusers (muc#roomconfig_maxusers).
    max_occupants: int = Field(default=1000, ge=1)
    #: maxusers of a new room.
    default_max_users: int = Field(default=200, ge=1)
    #: The cap of a room's history length (muc#maxhistoryfetch), messages sent on join.
    max_history: int = Field(default=100, ge=0)
    #: History length of a new room.
    default_history: int = Field(default=20, ge=0)
    #: New rooms are persistent (kept when the last occupant leaves).
    default_persistent: bool = False
    #: New rooms are public (listed in the service's disco#items).
    default_public: bool = True
    #: New rooms archive their messages (XEP-0313 on the room JID).
    default_archive: bool = True
    #: Days room archives keep messages; 0 keeps them forever.
    archive_retention_days: int = Field(default=0, ge=0)
    #: Longest room subject, in characters; a longer one is refused (not-acceptable).
    max_subject_length: int = Field(default=1024, ge=1)
    #: Longest room nickname, in characters; a longer one is refused (jid-malformed).
    max_nick_length: int = Field(default=128, ge=1, le=1023)

    @field_validator("creators")
    @classmethod
    def _creators(cls, value: str) -> str:
        if value not in ("all", "local", "admins"):
            raise ValueError(f"expected all, local or admins, got {value!r}")
        return value

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> MucSection:
        if self.default_max_users > self.max_occupants:
            raise ValueError("muc.default_max_users must not exceed muc.max_occupants")
        if self.default_history > self.max_history:
            raise ValueError("muc.default_history must not exceed muc.max_history")
        return self


class Proxy65Section(_Section):
    """XEP-0065 SOCKS5 bytestreams proxy: a file transfer relay at its own domain, listed
    in the server's disco#items; off while `domain` is unset."""

    #: The proxy's JID ("proxy.example.org"); unset: no proxy.
    domain: Domain | None = None
    #: HOST:PORT the SOCKS5 listener binds (port 0: any free port).
    address: ListenAddress = "0.0.0.0:7777"
    #: The host clients are told to connect to (<streamhost host=.../>): an IP address or
    #: a DNS name resolving to this machine. Unset: the listener's address, or the first
    #: `[server] domains` entry when it listens on every address (0.0.0.0 or ::).
    public_host: str | None = None
    #: Bytes per second one transfer (both directions together) is relayed at most;
    #: 0: no limit. Faster senders are read more slowly (TCP pushes back on them).
    max_bandwidth: int = Field(default=10 * 1024 * 1024, ge=0)
    #: Bytes one transfer may relay in all; beyond, both connections are closed. 0: no
    #: limit (bandwidth and time are what a transfer costs, both capped elsewhere).
    max_transfer_size: int = Field(default=0, ge=0)
    #: SOCKS5 connections open at once; beyond, new connections are closed at once.
    max_connections: int = Field(default=1000, ge=2)
    #: SOCKS5 connections open at once from one IPv4 address or IPv6 /64 (0: no limit).
    max_connections_per_ip: int = Field(default=20, ge=0)
    #: Seconds from connecting until the transfer is activated; then the connection closes
    #: (a half-connected pair, or a pair never activated).
    activation_timeout: float = Field(default=60.0, gt=0)
    #: Seconds an activated transfer may pass without relaying a byte; then it is closed.
    idle_timeout: float = Field(default=300.0, gt=0)
    #: Who may use the proxy (ask for its address and activate transfers): "local"
    #: (accounts of this server's domains) or "all" (also JIDs of other servers).
    allowed: Literal["local", "all"] = "local"

    @field_validator("address")
    @classmethod
    def _address_set(cls, value: str) -> str:
        if value == "":
            raise ValueError("the proxy needs an address to listen on (HOST:PORT)")
        return value

    @field_validator("public_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host = value.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise ValueError(f"expected an IP address or a host name, got {value!r}")
        return host


MIB = 1024 * 1024


class UploadSection(ServiceDomainSection):
    """XEP-0363 HTTP file upload: the service at `domain` hands out slots; the files are
    PUT and served on the HTTP application (`[listen] http`/`https`)."""

    #: The upload service's domain (say "upload.example.org"); unset: no upload service.
    domain: Domain | None = None
    #: The largest file accepted, in bytes (advertised in disco, XEP-0363 §3). Prosody's
    #: default is 10 MiB; phones send videos, so 100 MiB here.
    max_file_size: int = Field(default=100 * MIB, ge=1)
    #: Bytes of stored files (and slots not yet used) per account; 0: no limit. A slot
    #: request beyond gets resource-constraint with the time room frees up.
    quota_per_user: int = Field(default=1024 * MIB, ge=0)
    #: Seconds files are kept after their upload; 0 keeps them forever.
    expire_after: int = Field(default=30 * 86400, ge=0)
    #: Where the files are kept; empty: "upload" under `[server] data_dir`.
    storage_dir: str = ""
    #: The base URL of the PUT and GET links (say "https://upload.example.org", where a
    #: reverse proxy passes /upload/ to this server); empty: `[http] public_url`, else
    #: built from `[listen] https` or `http` (a wildcard address becomes the domain).
    public_url: Annotated[str, AfterValidator(_check_public_url)] = ""
    #: Seconds a PUT link is valid after the slot was handed out (XEP-0363 §7: ~300).
    slot_timeout: int = Field(default=300, ge=1)
    #: Who may request slots: "local" (accounts of this server) or "all".
    allowed: str = "local"
    #: Slots handed out but not yet used, per account; one more gets resource-constraint.
    #: (Also bounds the uploads one account runs at once.)
    max_slots_per_user: int = Field(default=10, ge=1)
    #: Bytes per second an upload must keep up on average: a PUT is cut off (408) once it
    #: has taken `[http] request_timeout` plus its size at this rate; one that sends
    #: nothing for `[http] request_timeout` is cut off too.
    min_upload_rate: int = Field(default=16 * 1024, ge=1)

    @field_validator("allowed")
    @classmethod
    def _allowed(cls, value: str) -> str:
        if value not in ("local", "all"):
            raise ValueError(f"expected local or all, got {value!r}")
        return value

    @model_validator(mode="after")
    def _quota_holds_a_file(self) -> UploadSection:
        if self.quota_per_user and self.quota_per_user < self.max_file_size:
            raise ValueError(
                f"quota_per_user ({self.quota_per_user}) is smaller than max_file_size "
                f"({self.max_file_size})"
            )
        return self


#: XEP-0114 §3: the secret a component proves in its handshake.
ComponentSecret = Annotated[str, Field(min_length=1)]

#: XEP-0356 §3.1 / §5.1 (v0.4): an access type for rosters and IQ namespaces.
AccessType = Literal["none", "get", "set", "both"]

#: Namespaces that are the server's own business: delegating them or granting IQ access
#: to them would let a component grant itself more (XEP-0355/0356 security
#: considerations) or break the stream machinery.
RESERVED_NAMESPACES = frozenset(
    (
        "urn:xmpp:delegation:2",
        "urn:xmpp:delegation:1",
        "urn:xmpp:privilege:2",
        "urn:xmpp:privilege:1",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:ietf:params:xml:ns:xmpp-bind",
        "urn:ietf:params:xml:ns:xmpp-session",
    )
)


def _check_namespace(value: str) -> str:
    if not value or value.strip() != value or " " in value:
        raise ValueError(f"{value!r} is not a namespace")
    if value in RESERVED_NAMESPACES:
        raise ValueError(f"{value!r} cannot be granted to a component")
    return value


Namespace = Annotated[str, AfterValidator(_check_namespace)]


class ComponentSection(_Section):
    """One `[components."domain"]` table: the XEP-0114 secret and what the component may do
    beyond an ordinary component (XEP-0356 privileges, XEP-0355 delegations)."""

    #: XEP-0114 shared secret.
    secret: ComponentSecret
    #: XEP-0356 §3: the component gets ("get"), sets ("set") or both the rosters of this
    #: server's users; "none": neither.
    roster: AccessType = "none"
    #: XEP-0356 §3.3: roster pushes to the component (only with "get"/"both").
    roster_push: bool = True
    #: XEP-0356 §4: "outgoing": send messages on behalf of this server's users.
    message: Literal["none", "outgoing"] = "none"
    #: XEP-0356 §6: "managed_entity": users' presence goes to the component;
    #: "roster": their contacts' presence too.
    presence: Literal["none", "managed_entity", "roster"] = "none"
    #: XEP-0356 §5 (v0.4): IQs on behalf of users, by namespace -> access type.
    iq: dict[Namespace, AccessType] = Field(default_factory=dict)
    #: XEP-0355 (admin mode): namespaces whose IQs to the server or to a user's own bare
    #: JID are handled by this component.
    delegations: list[Namespace] = Field(default_factory=list)
    #: Seconds the server waits for the component's answer to a delegated IQ.
    delegation_timeout: float = Field(default=30.0, gt=0, le=600)
    #: Delegated IQs waiting for the component's answer at once; beyond, resource-constraint.
    delegation_max_pending: int = Field(default=1000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        """`"domain" = "secret"` is short for `[components."domain"] secret = "secret"`."""
        if isinstance(data, str):
            if not data:
                raise ValueError("the shared secret is empty")
            return {"secret": data}
        return data

    @field_validator("delegations")
    @classmethod
    def _unique(cls, namespaces: list[str]) -> list[str]:
        seen: set[str] = set()
        for namespace in namespaces:
            if namespace in seen:
                raise ValueError(f"{namespace!r} is listed twice")
            seen.add(namespace)
        return namespaces

    @property
    def privileged(self) -> bool:
        return (
            self.roster != "none"
            or self.message != "none"
            or self.presence != "none"
            or any(access != "none" for access in self.iq.values())
        )


class ModulesSection(_Section):
    #: Modules to load in addition to the defaults.
    enabled: list[str] = Field(default_factory=list)
    #: Default modules to leave out.
    disabled: list[str] = Field(default_factory=list)

    @field_validator("enabled", "disabled")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        """A name that is no module is a typo, in either list."""
        from dovecote.core.modules import available_modules

        for name in names:
            if name not in available_modules():
                raise ValueError(
                    f"unknown module {name!r} (one of {', '.join(available_modules())})"
                )
        return names


class LoggingSection(_Section):
    level: str = "info"

    @field_validator("level")
    @classmethod
    def _level(cls, level: str) -> str:
        if level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"unknown log level {level!r}")
        return level.lower()


class Config(_Section):
    server: ServerSection = Field(default_factory=ServerSection)
    listen: ListenSection = Field(default_factory=ListenSection)
    tls: TLSSection = Field(default_factory=TLSSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    registration: RegistrationSection = Field(default_factory=RegistrationSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    stream_management: StreamManagementSection = Field(default_factory=StreamManagementSection)
    offline: OfflineSection = Field(default_factory=OfflineSection)
    vcard: VCardSection = Field(default_factory=VCardSection)
    mam: MamSection = Field(default_factory=MamSection)
    roster: RosterSection = Field(default_factory=RosterSection)
    pep: PepSection = Field(default_factory=PepSection)
    private: PrivateSection = Field(default_factory=PrivateSection)
    blocking: BlockingSection = Field(default_factory=BlockingSection)
    muc: MucSection = Field(default_factory=MucSection)
    pubsub: PubSubSection = Field(default_factory=PubSubSection)
    upload: UploadSection = Field(default_factory=UploadSection)
    proxy65: Proxy65Section = Field(default_factory=Proxy65Section)
    modules: ModulesSection = Field(default_factory=ModulesSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    #: XEP-0114 external components: domain -> shared secret, or domain -> a table with
    #: the secret and the component's privileges (`ComponentSection`).
    components: dict[Domain, ComponentSection] = Field(default_factory=dict)
    http: HttpSection = Field(default_factory=HttpSection)
    bosh: BoshSection = Field(default_factory=BoshSection)
    s2s: S2SSection = Field(default_factory=S2SSection)

    #: Where the file was read from (None: built-in defaults).
    source: str | None = None

    @field_validator("proxy65")
    @classmethod
    def _proxy_domain_free(cls, proxy: Proxy65Section, info: ValidationInfo) -> Proxy65Section:
        """The proxy's domain is its own: not a server domain nor another service's."""
        if proxy.domain is None:
            return proxy
        server = info.data.get("server")
        if isinstance(server, ServerSection) and proxy.domain in server.domains:
            raise ValueError(f"proxy65.domain {proxy.domain!r} is already served by this server")
        for name in ("muc", "pubsub", "upload"):
            section = info.data.get(name)
            if getattr(section, "domain", None) == proxy.domain:
                raise ValueError(f"proxy65.domain {proxy.domain!r} is already {name}.domain")
        return proxy

    @field_validator("components")
    @classmethod
    def _component_domains_free(
        cls, components: dict[str, ComponentSection], info: ValidationInfo
    ) -> dict[str, ComponentSection]:
        """A component domain may not be one the server or a built-in service serves."""
        taken: set[str] = set()
        if isinstance(server := info.data.get("server"), ServerSection):
            taken.update(server.domains)
        for name in ("muc", "pubsub", "upload", "proxy65"):
            if isinstance(
                section := info.data.get(name),
                ServiceDomainSection | PubSubSection | MucSection | Proxy65Section,
            ):
                taken.add(section.domain or "")
        delegated: dict[str, str] = {}
        for domain, section in components.items():
            if domain in taken:
                raise ValueError(f"{domain!r} is already served by this server")
            # XEP-0355: one managing entity per namespace.
            for namespace in section.delegations:
                if namespace in delegated:
                    raise ValueError(
                        f"{domain}.delegations: {namespace!r} is already delegated to "
                        f"{delegated[namespace]}"
                    )
                delegated[namespace] = domain
        return components

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser()

    @property
    def storage_url(self) -> str:
        """The SQLAlchemy async URL (driver filled in)."""
        url = self.storage.url or f"sqlite:///{self.data_path / 'dovecote.sqlite3'}"
        return to_async_url(url)


def to_async_url(url: str) -> str:
    scheme, _sep, rest = url.partition(":")
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return f"sqlite+aiosqlite:{rest}"
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg:{rest}"
    return url


def _format_validation_error(exc: ValidationError, data: dict[str, Any]) -> str:
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    # Only the section/key path, not pydantic's internal function names.
    # ("[key]": pydantic's marker for a bad dict key, e.g. a [components] domain.)
    key = ".".join(part for part in loc if not part.startswith("function-") and part != "[key]")
    if first["type"] == "extra_forbidden":
        return f"unknown configuration key {key!r}"
    value: Any = data
    for part in first["loc"]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            value = first.get("input")
            break
    message = first["msg"].removeprefix("Value error, ")
    return f"invalid value {value!r} for {key!r}: {message}"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the configuration.

    Without a path: $DOVECOTE_CONFIG, ./dovecote.toml, /etc/dovecote/dovecote.toml, and
    the built-in defaults (domain `localhost`) when none exists.
    """
    if path is None:
        env = os.environ.get(ENV_CONFIG)
        if env:
            path = env
        else:
            path = next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str | None = None) -> Config:
    if "source" in data:
        raise ConfigError("unknown configuration key 'source'")
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, data)) from None
