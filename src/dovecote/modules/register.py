"""XEP-0077: In-Band Registration — new accounts before authentication (when
`[registration] open = true`), and for a logged-in user: the registration on file, password
change and account removal (always: that is account administration, not sign-up).

The disco feature `jabber:iq:register` is declared always, even with registration closed:
XEP-0077 §10 says it tells connected clients "if password changes are possible in-band",
and they are. The stream feature (§8) is offered only while registration is open.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING

from dovecote.core.modules import ModuleInfo
from dovecote.jid import JID, InvalidJID, prepare_local
from dovecote.storage.base import AccountExists
from dovecote.storage.credentials import (
    ScramCredentials,
    derive_credentials,
    prepare_password,
)
from dovecote.stream.errors import StanzaError, error_reply
from dovecote.xml import ns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server
    from dovecote.stream.c2s import C2SStream

log = logging.getLogger(__name__)

REGISTER = "jabber:iq:register"
REGISTER_FEATURE = "http://jabber.org/features/iq-register"
MODULE = ModuleInfo(
    name="register",
    summary="In-band registration (XEP-0077): sign-up, password change, account removal",
    features=[REGISTER],
    config="registration",
)

INSTRUCTIONS = "Choose a username and password for use with this server."
REGISTERED_INSTRUCTIONS = (
    "You are registered. To change your password, send your username and a new password; "
    "to delete your account, send <remove/>."
)


class RegistrationLimit:
    """At most `limit` new accounts per client address in any `period` seconds
    (XEP-0077 §11: in-band registration is a policy matter; this keeps one address from
    creating accounts in bulk). A slot is taken before the work and given back on failure,
    so concurrent attempts cannot overshoot."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._recent: dict[str, collections.deque[float]] = {}

    def acquire(self, address: str) -> bool:
        if self.limit <= 0:
            return True
        now = time.monotonic()
        recent = self._recent.setdefault(address, collections.deque())
        while recent and now - recent[0] >= self.period:
            recent.popleft()
        if len(recent) >= self.limit:
            return False
        recent.append(now)
        if len(self._recent) > 10_000:
            self._expire(now)
        return True

    def release(self, address: str) -> None:
        recent = self._recent.get(address)
        if recent:
            recent.pop()

    def _expire(self, now: float) -> None:
        self._recent = {a: r for a, r in self._recent.items() if r and now - r[-1] < self.period}


def setup(server: Server) -> None:
    events = server.events
    config = server.config.registration
    accounts = server.storage.accounts
    limit = RegistrationLimit(config.max_per_ip, config.period)

    if config.open:
        # XEP-0077 §8: announced before authentication, to clients only.
        server.pre_auth_features.append(Element("register", REGISTER_FEATURE))

    def check_password(password: str | None, condition: str) -> str:
        """The password, or `condition` when it is missing or not acceptable."""
        if not password:
            raise StanzaError(condition, "a password is required")
        try:
            prepared = prepare_password(password)
        except ValueError as exc:
            raise StanzaError("not-acceptable", str(exc)) from None
        if len(prepared) < config.min_password_length:
            raise StanzaError(
                "not-acceptable",
                f"the password must have at least {config.min_password_length} characters",
            )
        return password

    async def credentials_for(password: str) -> dict[str, ScramCredentials]:
        # PBKDF2 is CPU work: off the event loop.
        return await asyncio.get_running_loop().run_in_executor(
            None, derive_credentials, password, server.config.auth.scram_iterations
        )

    # ---- before authentication: creating an account (§3.1, §3.1.1) ------------------------
    @events.on(f"c2s/unauthenticated-iq/{REGISTER}:query")
    async def unauthenticated(event: tuple[C2SStream, Element]) -> bool:
        stream, iq = event
        if iq.get("type") not in ("get", "set"):
            return True  # a stray result or error: nothing to answer (RFC 6120 §8.2.3)
        try:
            query = await unauthenticated_request(stream, iq)
        except StanzaError as exc:
            reply = error_reply(iq, exc)
        else:
            # No session yet: the answer has no 'to' (XEP-0077 §3.1, example 2).
            reply = Element("iq", ns.CLIENT, {"type": "result", "id": iq.get("id") or ""})
            if query is not None:
                reply.append(query)
        stream.transport.send_element(reply)
        return True

    async def unauthenticated_request(stream: C2SStream, iq: Element) -> Element | None:
        if not iq.get("id") or sum(1 for _ in iq.elements) != 1:
            raise StanzaError("bad-request", "an IQ needs an id and exactly one child")
        assert stream.domain is not None
        to = iq.get("to")
        if to and to != stream.domain:
            try:
                addressed = JID.parse(to)
            except InvalidJID:
                raise StanzaError("jid-malformed", f"invalid 'to' address {to!r}") from None
            if addressed != JID(None, stream.domain):
                raise StanzaError("service-unavailable", "authenticate first")
        if not config.open:
            # §3.1: "If the host does not support In-Band Registration, it MUST return a
            # <service-unavailable/> error."
            raise StanzaError("service-unavailable", "in-band registration is closed")
        if server.config.tls.required and not stream.transport.secure:
            # §11 and §3.3: not over an unencrypted channel (not-authorized as in §3.3).
            raise StanzaError("not-authorized", "use STARTTLS first")
        query = next(iq.elements)
        if iq.get("type") == "get":
            # §3.1, example 2: the fields to fill in.
            fields = Element("query", REGISTER)
            fields.add("instructions", text=INSTRUCTIONS)
            fields.add("username")
            fields.add("password")
            return fields
        if query.find("remove", REGISTER) is not None:
            # §3.2 error cases: no 'from', the entity is not registered with the server.
            raise StanzaError("unexpected-request", "log in to remove your account")
        await create_account(stream, query)
        return None

    async def create_account(stream: C2SStream, query: Element) -> None:
        assert stream.domain is not None
        domain = stream.domain
        username = query.find_text("username", REGISTER)
        if not username:
            # §3.1: every requested field is required, else not-acceptable.
            raise StanzaError("not-acceptable", "a username is required")
        password = check_password(query.find_text("password", REGISTER), "not-acceptable")
        try:
            local = prepare_local(username)
        except InvalidJID as exc:
            # RFC 6120 §8.3.3.8: not a valid localpart (RFC 7622 §3.3).
            raise StanzaError("jid-malformed", str(exc)) from None
        peer = stream.transport.peer_address
        if not limit.acquire(peer):
            # XEP-0077 §3.1.1 allows <not-acceptable/> here, but clients read that as "a
            # field is missing"; <policy-violation/> (RFC 6120 §8.3.3.12), type wait, says
            # what happened and that a retry later may work.
            raise StanzaError(
                "policy-violation",
                "too many accounts were registered from your address; try again later",
                type="wait",
            )
        try:
            if await accounts.exists(local, domain):
                raise StanzaError("conflict", "this username is taken")  # §3.1, example 6
            credentials = await credentials_for(password)
            try:
                await accounts.create(local, domain, credentials)
            except AccountExists:
                raise StanzaError("conflict", "this username is taken") from None
        except BaseException:
            limit.release(peer)
            raise
        log.info("registered %s@%s from %s", local, domain, peer)

    # ---- after authentication: the user's own account (§3.1, §3.2, §3.3) -------------------
    def own_account(event: StanzaEvent) -> JID:
        """The account of a local session asking its own server (§3.2: from its session)."""
        sender = event.sender
        if event.origin is None or sender.local is None or sender.domain != event.to.domain:
            # Accounts are created only over an unauthenticated client stream (§3.1.1).
            raise StanzaError("service-unavailable")
        return sender.bare

    @events.on(f"iq/host/get/{REGISTER}:query")
    def registration_on_file(event: StanzaEvent) -> bool:
        account = own_account(event)
        # §3.1, example 3: <registered/> and what is on file (the password stays empty).
        query = Element("query", REGISTER)
        query.add("instructions", text=REGISTERED_INSTRUCTIONS)
        query.add("registered")
        query.add("username", text=account.local)
        query.add("password")
        event.reply(query)
        return True

    @events.on(f"iq/host/set/{REGISTER}:query")
    async def change_registration(event: StanzaEvent) -> bool:
        account = own_account(event)
        query = event.payload
        assert query is not None
        if query.find("remove", REGISTER) is not None:
            if sum(1 for _ in query.elements) != 1:
                # §3.2 error cases: <remove/> must be the only child.
                raise StanzaError("bad-request", "<remove/> must be the only child")
            await remove_account(event, account)
        else:
            await change_password(event, account, query)
        return True

    async def change_password(event: StanzaEvent, account: JID, query: Element) -> None:
        """§3.3. Errors do not echo the request (it holds the password)."""
        local = account.local or ""
        username = query.find_text("username", REGISTER)
        if username is None:
            raise StanzaError("bad-request", "include your <username/> and new <password/>")
        try:
            same_user = prepare_local(username) == local
        except InvalidJID:
            same_user = False
        if not same_user:
            raise StanzaError("forbidden", "you may change only your own password")
        if not getattr(event.origin, "secure", False):
            raise StanzaError("not-authorized", "password changes need an encrypted stream")
        # §3.3: an empty password never replaces the existing one.
        password = check_password(query.find_text("password", REGISTER), "bad-request")
        credentials = await credentials_for(password)
        if not await accounts.set_credentials(local, account.domain, credentials):
            raise StanzaError("registration-required", "the account no longer exists")
        event.reply()
        log.info("%s changed its password", account)
        # RFC 6120 §4.9.3.16: the credentials changed; the other sessions must log in again.
        for session in server.sessions.resources(account):
            if session is not event.origin:
                session.close("reset", "the password was changed")

    async def remove_account(event: StanzaEvent, account: JID) -> None:
        """§3.2, scenario 1: delete the account and everything it owns, cancel its presence
        subscriptions, answer, then close all its sessions with <not-authorized/>."""
        local = account.local or ""
        roster = await server.storage.roster.load(local, account.domain)
        if not await accounts.delete(local, account.domain):
            raise StanzaError("registration-required", "the account does not exist")
        log.info("%s removed its account", account)
        # §3.2: "SHOULD also cancel all existing presence subscriptions" (RFC 6121 §3.2,
        # §3.3), before answering so that the answer means it is all done. Local contacts:
        # the deletion removed the account from their rosters, and "account/deleted"
        # pushes that to them (an unsubscribe routed now would re-create their item).
        user = str(account)
        refused = set(roster.pending)  # requests waiting for the user are declined too
        for contact, item in roster.items.items():
            if _is_local(server, contact):
                continue
            if item.subscription in ("to", "both") or item.ask:
                await server.router.route(_presence(user, contact, "unsubscribe"))
            if item.subscription in ("from", "both"):
                refused.add(contact)
        for contact in sorted(refused):
            if not _is_local(server, contact):
                await server.router.route(_presence(user, contact, "unsubscribed"))
        # The modules' clean-up (contacts' rosters, PEP, the pubsub service, MUC rooms)
        # before the answer too, so that the answer means it is all done.
        await server.events.fire_all("account/deleted", account)
        event.reply()
        server.kick(account, "not-authorized", "the account was removed")


def _is_local(server: Server, bare_jid: str) -> bool:
    """A JID of a domain this server serves (its accounts' rosters are in its storage)."""
    return bare_jid.rpartition("@")[2] in server.hosts


def _presence(sender: str, to: str, kind: str) -> Element:
    return Element("presence", ns.CLIENT, {"from": sender, "to": to, "type": kind})
