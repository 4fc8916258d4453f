"""Finding a remote server (RFC 6120 §3.2, XEP-0368): DNS SRV records for
`_xmpps-server._tcp` (direct TLS) and `_xmpp-server._tcp` (STARTTLS), in RFC 2782 order,
falling back to the domain's own addresses on port 5269.

dnspython's asynchronous resolver answers; `[s2s] nameservers` replaces the system's
resolvers (then target names are resolved through them too, else through the system,
which honours /etc/hosts).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from dovecote.config import parse_nameserver

log = logging.getLogger(__name__)

DEFAULT_PORT = 5269
#: Seconds for one DNS query (all tries).
LOOKUP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect: a host name (or address), a port, and whether TLS comes first
    (XEP-0368) rather than STARTTLS."""

    host: str
    port: int
    direct_tls: bool = False


@dataclass(frozen=True, slots=True)
class SRV:
    """One SRV record as RFC 2782 reads it."""

    priority: int
    weight: int
    port: int
    target: str
    direct_tls: bool = False


def order_srv(records: Sequence[SRV], rng: random.Random | None = None) -> list[SRV]:
    """RFC 2782 "Usage rules": lowest priority first; within a priority, a weighted
    random order (weight 0 records first in the running sum, so they are rarely early)."""
    rng = rng or random.Random()
    ordered: list[SRV] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        # "arrange all SRV RRs (that have not been ordered yet) in any order, except that
        # all those with weight 0 are placed at the beginning of the list"
        group.sort(key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            chosen = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= chosen:
                    ordered.append(group.pop(index))
                    break
    return ordered


def targets_from_srv(records: Sequence[SRV], domain: str) -> list[Target] | None:
    """The connection targets for SRV answers: None when there were none (fall back to
    the domain's addresses), [] when the domain says it offers no service (a single
    record with target ".", RFC 2782)."""
    if not records:
        return None
    real = [r for r in records if r.target not in (".", "")]
    if not real:
        return []
    return [Target(r.target.rstrip("."), r.port, r.direct_tls) for r in order_srv(real)]


class Resolver:
    """SRV and address look-ups with the configured name servers."""

    def __init__(self, nameservers: Sequence[str] = ()) -> None:
        self.custom = bool(nameservers)
        resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            servers: list[Any] = []
            for text in nameservers:
                address, port = parse_nameserver(text)
                servers.append(dns.nameserver.Do53Nameserver(address, port))
            resolver.nameservers = servers
        resolver.lifetime = LOOKUP_TIMEOUT
        self._resolver = resolver

    async def srv(self, name: str, direct_tls: bool) -> list[SRV]:
        try:
            answer = await self._resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.DNSException as exc:
            log.info("SRV look-up of %s failed: %s", name, exc)
            return []
        return [SRV(r.priority, r.weight, r.port, r.target.to_text(), direct_tls) for r in answer]

    async def targets(self, domain: str) -> list[Target]:
        """RFC 6120 §3.2.1 and XEP-0368 §3: the SRV targets of both services in one
        RFC 2782 order, or the domain itself on 5269."""
        results = await asyncio.gather(
            self.srv(f"_xmpps-server._tcp.{domain}", True),
            self.srv(f"_xmpp-server._tcp.{domain}", False),
        )
        records = [*results[0], *results[1]]
        targets = targets_from_srv(records, domain)
        if targets is None:
            # RFC 6120 §3.2.2: no SRV records: the domain's addresses, the default port.
            return [Target(domain, DEFAULT_PORT)]
        return targets

    async def addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        """The IP addresses of `host` (AAAA and A), in the order to try them."""
        try:
            ipaddress.ip_address(host)
            return [(host, port)]
        except ValueError:
            pass
        if not self.custom:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                return []
            seen: list[tuple[str, int]] = []
            for _family, _type, _proto, _name, sockaddr in infos:
                address = (str(sockaddr[0]), port)
                if address not in seen:
                    seen.append(address)
            return seen
        found: list[tuple[str, int]] = []
        for rdtype in ("AAAA", "A"):
            try:
                answer = await self._resolver.resolve(host, rdtype)
            except dns.exception.DNSException:
                continue
            found.extend((r.address, port) for r in answer)
        return found
