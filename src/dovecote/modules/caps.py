"""XEP-0115: Entity Capabilities — what each client session supports, learned from the
`<c/>` in its presence and believed only once verified.

A session's broadcast presence announces (hash, node, ver). A known (hash, ver) is looked
up in a cache shared by all sessions; an unknown one is asked of the client itself
(disco#info to its full JID with node 'node#ver', XEP-0115 §6.2), the answer's
verification string is computed (§5.1) and compared with 'ver' (§5.4): a match is cached
for everyone, a mismatch is not believed at all, an ill-formed answer (duplicate
identities, features or form types, §5.4 3.3-3.5) neither. A hash function this server
does not know is asked too, and the answer believed for that session only (§5.4 step 2);
the legacy format with no 'hash' (§9) is ignored, as §9 advises for servers that do not
support it.

Other modules read `features_of(session)` and listen to

  caps/updated  (session)  the features of an available session changed (new caps
                           learned or announced after its initial presence)

(the features known at a session's initial presence are there when `presence/initial`
fires, so that event needs no `caps/updated`).

Contacts on other servers (federation): their available presence reaching a local account
carries their caps too; the same verification asks the remote full JID (over s2s), and
`remote_available(server, bare)` / `remote_features(server, jid)` tell PEP which of their
resources want which notifications. Then
  caps/remote  (owner, jid)  a remote full JID whose presence reached the local account
                             `owner` has (new) verified features
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from dovecote.core import iq
from dovecote.core.modules import ModuleInfo
from dovecote.core.slots import SessionSlot
from dovecote.jid import JID
from dovecote.xml import ns
from dovecote.xml.element import XML_LANG, Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

log = logging.getLogger(__name__)

CAPS = "http://jabber.org/protocol/caps"
MODULE = ModuleInfo(
    name="caps",
    summary="Entity capabilities (XEP-0115): each session's verified features",
)
#: IANA hash function textual names (XEP-0115 §5.1, §8.1) -> hashlib names. MD5 is left
#: out on purpose: a weak hash is believed per session only, never cached for all.
HASHES = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
    "sha3-256": "sha3_256",
    "sha3-512": "sha3_512",
}
#: Verified (hash, ver) entries kept (XEP-0115 §8.2 caching), least recently used dropped.
CACHE_SIZE = 2000
#: Feature sets larger than this (bytes of feature names) are believed, not cached.
MAX_CACHED_BYTES = 16 * 1024
#: Seconds a client has to answer the disco#info query.
QUERY_TIMEOUT = 30.0

#: Per session: the announced (hash, node, ver) and the features believed.
ANNOUNCED = SessionSlot[tuple[str, str, str]]("caps.announced")
KNOWN = SessionSlot[frozenset[str]]("caps.features")
_EMPTY: frozenset[str] = frozenset()
_installed: weakref.WeakSet[Any] = weakref.WeakSet()
#: Remote full JIDs known available (from presence over s2s), kept at most.
MAX_REMOTE = 10000


class RemoteCaps:
    """Per server: remote full JID -> (announced, features), least recently seen first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[JID, tuple[tuple[str, str, str], frozenset[str]]] = OrderedDict()
        #: bare JID -> its full JIDs in `entries`.
        self.by_bare: dict[JID, set[JID]] = {}

    def put(self, jid: JID, announced: tuple[str, str, str], features: frozenset[str]) -> None:
        self.entries[jid] = (announced, features)
        self.entries.move_to_end(jid)
        self.by_bare.setdefault(jid.bare, set()).add(jid)
        while len(self.entries) > MAX_REMOTE:
            old, _value = self.entries.popitem(last=False)
            self._unindex(old)

    def drop(self, jid: JID) -> None:
        if self.entries.pop(jid, None) is not None:
            self._unindex(jid)

    def _unindex(self, jid: JID) -> None:
        fulls = self.by_bare.get(jid.bare)
        if fulls is not None:
            fulls.discard(jid)
            if not fulls:
                del self.by_bare[jid.bare]


_remote: weakref.WeakKeyDictionary[Any, RemoteCaps] = weakref.WeakKeyDictionary()


def remote_available(server: Any, bare: JID) -> list[JID]:
    """The full JIDs of a remote account known available (their presence came here)."""
    table = _remote.get(server)
    return sorted(table.by_bare.get(bare, ()), key=str) if table is not None else []


def remote_features(server: Any, jid: JID) -> frozenset[str]:
    """The verified features of a remote full JID (empty when unknown)."""
    table = _remote.get(server)
    entry = table.entries.get(jid) if table is not None else None
    return entry[1] if entry is not None else _EMPTY


def features_of(session: Any) -> frozenset[str]:
    """The disco#info features of a client session, as far as verified caps tell."""
    return KNOWN.get(session) or _EMPTY


def verification_string(query: Element, hash_name: str) -> str | None:
    """XEP-0115 §5.1 over a disco#info `<query/>`, hashed with `hash_name` ("sha-1", ...);
    None when the hash is not supported or the answer is ill-formed (§5.4 3.3-3.5)."""
    algorithm = HASHES.get(hash_name)
    if algorithm is None:
        return None
    identities = []
    for el in query.find_all("identity", ns.DISCO_INFO):
        category, kind = el.get("category"), el.get("type")
        if not category or not kind:
            return None  # XEP-0030 §3.1: both are required
        identities.append(f"{category}/{kind}/{el.get(XML_LANG) or ''}/{el.get('name') or ''}")
    features = [el.get("var") or "" for el in query.find_all("feature", ns.DISCO_INFO)]
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        return None
    if "" in features:
        return None  # a feature needs a 'var'
    forms: dict[str, list[tuple[str, list[str]]]] = {}
    for form in query.find_all("x", ns.DATA_FORMS):
        fields = form.find_all("field", ns.DATA_FORMS)
        form_type_field = next((f for f in fields if f.get("var") == "FORM_TYPE"), None)
        if form_type_field is None or form_type_field.get("type") != "hidden":
            continue  # §5.4 3.6: such a form is ignored
        form_types = {v.text for v in form_type_field.find_all("value", ns.DATA_FORMS)}
        if len(form_types) != 1:
            return None  # §5.4 3.5: FORM_TYPE values that differ
        form_type = form_types.pop()
        if form_type in forms:
            return None  # §5.4 3.5: two forms of the same FORM_TYPE
        forms[form_type] = [
            (f.get("var") or "", sorted(v.text for v in f.find_all("value", ns.DATA_FORMS)))
            for f in fields
            if f.get("var") != "FORM_TYPE"
        ]
    # "i;octet" collation: code point order is UTF-8 byte order.
    parts = [identity + "<" for identity in sorted(identities)]
    parts += [f"{var}<" for var in sorted(features)]
    for form_type in sorted(forms):
        parts.append(form_type + "<")
        for var, values in sorted(forms[form_type], key=lambda field: field[0]):
            parts.append(var + "<")
            parts.extend(value + "<" for value in values)
    digest = hashlib.new(algorithm, "".join(parts).encode()).digest()
    return base64.b64encode(digest).decode("ascii")


def setup(server: Server) -> None:
    """Install caps tracking (idempotent; PEP depends on this module)."""
    if server in _installed:
        return
    _installed.add(server)
    events = server.events
    remote = _remote[server] = RemoteCaps()
    #: (hash, ver) -> verified features, most recently used last.
    cache: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()
    #: (hash, ver) being verified -> its outcome (None: not verified), so that many
    #: sessions of one client version coming online together ask one of them.
    inflight: dict[tuple[str, str], asyncio.Future[frozenset[str] | None]] = {}

    def remember(key: tuple[str, str], features: frozenset[str]) -> None:
        if sum(len(f) for f in features) > MAX_CACHED_BYTES:
            return
        cache[key] = features
        cache.move_to_end(key)
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)

    def believe(session: Any, features: frozenset[str], notify: bool) -> None:
        if (KNOWN.get(session) or _EMPTY) == features:
            return
        KNOWN.set(session, features)
        if notify and session.available:
            server.spawn(events.fire_all("caps/updated", session))

    @events.on("presence/broadcast", 500)  # before presence.py sends it and fires its hooks
    def presence(event: StanzaEvent) -> bool:
        session = event.origin
        if session is None:
            return False
        presence_type = event.type
        if presence_type == "unavailable":
            ANNOUNCED.pop(session)
            KNOWN.pop(session)
            return False
        if presence_type is not None:
            return False
        c = event.stanza.find("c", CAPS)
        if c is None:
            return False  # unchanged: a client may leave out caps it already announced
        announced = (c.get("hash") or "", c.get("node") or "", c.get("ver") or "")
        if ANNOUNCED.get(session) == announced:
            return False
        ANNOUNCED.set(session, announced)
        hash_name, node, ver = announced
        if not hash_name or not node or not ver:
            believe(session, _EMPTY, notify=True)  # legacy format (§9) or broken: ignored
            return False
        known = cache.get((hash_name, ver)) if hash_name in HASHES else None
        if known is not None:
            cache.move_to_end((hash_name, ver))
            believe(session, known, notify=True)
        else:
            believe(session, _EMPTY, notify=False)
            server.spawn(learn(session, announced))
        return False

    async def learn(session: Any, announced: tuple[str, str, str]) -> None:
        hash_name, node, ver = announced
        features: frozenset[str] | None = None
        if hash_name in HASHES:
            key = (hash_name, ver)
            shared = inflight.get(key)
            if shared is not None:
                features = await asyncio.shield(shared)
            if features is None:
                features = await verify(session.jid, announced, share=shared is None)
        else:
            # §5.4 step 2: an unknown hash function; believed for this session only.
            query = await disco_info(session.jid, f"{node}#{ver}")
            if query is not None:
                features = frozenset(
                    el.get("var") or "" for el in query.find_all("feature", ns.DISCO_INFO)
                ) - {""}
        if ANNOUNCED.get(session) != announced or getattr(session, "closed", False):
            return  # announced something else meanwhile, or gone
        believe(session, features or _EMPTY, notify=True)

    async def verify(
        jid: JID, announced: tuple[str, str, str], share: bool, from_domain: str | None = None
    ) -> frozenset[str] | None:
        """Ask the session; its answer must hash to 'ver' (XEP-0115 §5.4 step 3)."""
        hash_name, node, ver = announced
        key = (hash_name, ver)
        future: asyncio.Future[frozenset[str] | None] | None = None
        if share:
            future = asyncio.get_running_loop().create_future()
            inflight[key] = future
        features: frozenset[str] | None = None
        try:
            query = await disco_info(jid, f"{node}#{ver}", from_domain)
            if query is not None:
                computed = verification_string(query, hash_name)
                if computed == ver:
                    features = frozenset(
                        el.get("var") or "" for el in query.find_all("feature", ns.DISCO_INFO)
                    )
                    remember(key, features)
                else:
                    log.info(
                        "%s announced caps ver %r but its disco#info hashes to %r: not believed",
                        jid,
                        ver,
                        computed,
                    )
        finally:
            if future is not None:
                inflight.pop(key, None)
                future.set_result(features)
        return features

    async def disco_info(jid: JID, node: str, from_domain: str | None = None) -> Element | None:
        request = Element(
            "iq",
            ns.CLIENT,
            {"type": "get", "from": from_domain or jid.domain, "to": str(jid)},
            [Element("query", ns.DISCO_INFO, {"node": node})],
        )
        try:
            result = await iq.request(server, request, QUERY_TIMEOUT)
        except (iq.IQRequestError, TimeoutError) as exc:
            log.debug("no caps from %s: %r", jid, exc)
            return None
        return result.find("query", ns.DISCO_INFO)

    # ---- contacts on other servers --------------------------------------------------------
    def is_remote(jid: JID) -> bool:
        return jid.domain not in server.hosts and jid.domain not in server.components

    @events.on("presence/bare", 500)
    @events.on("presence/full", 500)
    def remote_presence(event: StanzaEvent) -> bool:
        """A remote contact's presence to a local account: remember its caps."""
        sender = event.sender
        if event.origin is not None or sender.resource is None or not is_remote(sender):
            return False
        if event.to.domain not in server.hosts:
            return False
        presence_type = event.type
        if presence_type == "unavailable":
            remote.drop(sender)
            return False
        if presence_type is not None:
            return False
        c = event.stanza.find("c", CAPS)
        announced = (
            (c.get("hash") or "", c.get("node") or "", c.get("ver") or "")
            if c is not None
            else ("", "", "")
        )
        entry = remote.entries.get(sender)
        if entry is not None and (c is None or entry[0] == announced):
            remote.entries.move_to_end(sender)
            return False
        hash_name, _node, ver = announced
        known = cache.get((hash_name, ver)) if hash_name in HASHES else None
        if known is not None or not all(announced):
            remote.put(sender, announced, known or _EMPTY)
            if known:
                server.spawn(events.fire_all("caps/remote", (event.to.bare, sender)))
            return False
        remote.put(sender, announced, _EMPTY)
        server.spawn(learn_remote(event.to.bare, sender, announced))
        return False

    async def learn_remote(owner: JID, jid: JID, announced: tuple[str, str, str]) -> None:
        hash_name, _node, ver = announced
        shared = inflight.get((hash_name, ver))
        features = await asyncio.shield(shared) if shared is not None else None
        if features is None:
            features = await verify(jid, announced, share=shared is None, from_domain=owner.domain)
        entry = remote.entries.get(jid)
        if entry is None or entry[0] != announced or not features:
            return
        remote.put(jid, announced, features)
        await events.fire_all("caps/remote", (owner, jid))
