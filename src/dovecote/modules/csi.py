"""XEP-0352: Client State Indication — hold back unimportant traffic while a client says
it is inactive.

The feature is offered after authentication (§4.1); `<inactive/>` and `<active/>` get no
answer (§4.2). Every stream starts active (§4.2, §5), a resumed one too (§5.2).

While a session is inactive, a send filter holds what can wait (§3.2 gives examples):

- presence updates (available / unavailable): only the latest per sender full JID is
  kept, the superseded ones are dropped;
- messages that carry only XEP-0085 chat states (and metadata such as ids, hints, a
  thread): only the latest per conversation is kept;
- PEP notifications (type headline with a pubsub#event): the latest per node and item.

Anything else — a message with a body or an encrypted payload, an IQ, a subscription or
error presence, an error, a MUC self-presence, a carbon copy of any of these — is
important: what was held is sent first, in order, then it. `<active/>` sends everything
held, before the next input of the stream is handled (§5.1 in-order processing). Held
stanzas are flushed when MAX_HELD is reached, and dropped when the session ends. A stream
that resumes a session (XEP-0198) is active (§5.2): what was held is sent on it.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.core.slots import SessionSlot
from dovecote.xml import ns
from dovecote.xml.element import Element
from dovecote.xml.forward import FORWARD, forwarded_stanza

if TYPE_CHECKING:
    from dovecote.server import Server

MODULE = ModuleInfo(
    name="csi",
    summary="Client state indication (XEP-0352): unimportant traffic held while inactive",
)

CSI = "urn:xmpp:csi:0"
CHAT_STATES = "http://jabber.org/protocol/chatstates"
PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
CARBONS = "urn:xmpp:carbons:2"
MUC_USER = "http://jabber.org/protocol/muc#user"
#: Children that do not make a chat-state message important: hints (XEP-0334), stanza
#: ids (XEP-0359), delay (XEP-0203), the carbons <private/> marker.
METADATA = frozenset(("urn:xmpp:hints", "urn:xmpp:sid:0", ns.DELAY, CARBONS))
_CARBON_TAGS = ("sent", "received")
#: Per session: its HeldStanzas while it is inactive (absent when active).
STATE = SessionSlot["HeldStanzas"]("csi.held")
#: The most stanzas held for a session before all of them are sent anyway.
MAX_HELD = 500


class HeldStanzas:
    """Stanzas held for one inactive session, in the order they are to be sent.

    A stanza held under the key of an earlier one replaces it (and moves to the end)."""

    __slots__ = ("_serial", "session", "stanzas")

    def __init__(self, session: Any) -> None:
        #: The session that went inactive.
        self.session = session
        self.stanzas: dict[Hashable, Element] = {}
        self._serial = itertools.count()

    def hold(self, key: Hashable | None, stanza: Element) -> None:
        if key is None:
            key = next(self._serial)  # kept whatever follows
        else:
            self.stanzas.pop(key, None)
        self.stanzas[key] = stanza

    def flush(self, session: Any) -> None:
        stanzas, self.stanzas = self.stanzas, {}
        for stanza in stanzas.values():
            session.send_now(stanza)


class _Important:
    """hold_key's answer for a stanza that is sent at once."""


IMPORTANT = _Important()


def hold_key(stanza: Element) -> Hashable | _Important | None:
    """IMPORTANT when the stanza goes out at once; otherwise the key it is held under
    (None: held, superseding nothing)."""
    kind = stanza.tag
    if kind == "presence":
        presence_type = stanza.attrs.get("type")
        if presence_type is not None and presence_type != "unavailable":
            return IMPORTANT  # subscription requests and answers, errors
        if _is_muc_self_presence(stanza):
            return IMPORTANT  # the answer to the client's own join or leave
        return ("presence", stanza.attrs.get("from", ""))
    if kind != "message":
        return IMPORTANT  # IQs
    msg_type = stanza.attrs.get("type")
    if msg_type == "error":
        return IMPORTANT
    inner, direction = _unwrap_carbon(stanza)
    if inner is None:
        return IMPORTANT
    if _only_chat_states(inner):
        # Per conversation and side: the user's own state (a sent carbon) towards its
        # recipient, else the sender's state (received directly or as a carbon).
        if direction == "sent":
            return ("chat-state", "out", inner.attrs.get("to", ""))
        return ("chat-state", "in", inner.attrs.get("from", ""))
    if msg_type == "headline":
        event = stanza.find("event", PUBSUB_EVENT)
        if event is not None and stanza.find("body", ns.CLIENT) is None:
            return _pep_key(stanza.attrs.get("from", ""), event)
    return IMPORTANT


def _unwrap_carbon(stanza: Element) -> tuple[Element | None, str]:
    """The message a XEP-0280 carbon copy carries, and 'sent'/'received' ('' if none)."""
    for child in stanza.children:
        if isinstance(child, Element) and child.ns == CARBONS and child.tag in _CARBON_TAGS:
            wrapper = child.find("forwarded", FORWARD)
            inner = forwarded_stanza(wrapper) if wrapper is not None else None
            return inner, child.tag
    return stanza, ""


def _only_chat_states(message: Element) -> bool:
    has_state = False
    for child in message.children:
        if not isinstance(child, Element):
            continue
        if child.ns == CHAT_STATES:
            has_state = True
        elif child.ns in METADATA or (child.ns == ns.CLIENT and child.tag == "thread"):
            continue
        else:
            return False
    return has_state


def _is_muc_self_presence(presence: Element) -> bool:
    """XEP-0045 §7.2.2: status code 110 marks the occupant's own presence."""
    x = presence.find("x", MUC_USER)
    return x is not None and any(
        status.get("code") == "110" for status in x.find_all("status", MUC_USER)
    )


def _pep_key(sender: str, event: Element) -> Hashable | None:
    """A notification about one item supersedes an earlier one about the same item."""
    items = event.find("items", PUBSUB_EVENT)
    if items is None:
        return None  # purge, delete, configuration: kept
    entries = [c for c in items.elements if c.tag in ("item", "retract")]
    if len(entries) != 1 or not entries[0].get("id"):
        return None
    return ("pep", sender, items.get("node", ""), entries[0].get("id"))


def setup(server: Server) -> None:
    events = server.events
    server.stream_features.append(Element("csi", CSI))  # §4.1

    def csi_filter(session: Any, stanza: Element) -> bool:
        held: HeldStanzas | None = STATE.get(session)
        if held is None:
            return False  # active: the fast path
        if held.session is not session:
            # §5.2: a stream resumed with XEP-0198 starts active; what was held goes first.
            STATE.pop(session)
            held.flush(session)
            return False
        if stanza.ns != ns.CLIENT:
            return False  # not a stanza (stream management, ...): neither held nor flushing
        key = hold_key(stanza)
        if key is IMPORTANT:
            if held.stanzas:
                held.flush(session)  # what was held goes first, to keep the order
            return False
        held.hold(key, stanza)
        if len(held.stanzas) >= MAX_HELD:
            held.flush(session)
        return True

    server.send_filters.append(csi_filter)

    @events.on(f"c2s/element/{CSI}:inactive")
    def inactive(args: tuple[Any, Element]) -> bool:
        session, _element = args
        held: HeldStanzas | None = STATE.get(session)
        if held is None or held.session is not session:
            if held is not None:
                held.flush(session)  # held for the stream this one resumed (§5.2)
            STATE.set(session, HeldStanzas(session))
        return True

    @events.on(f"c2s/element/{CSI}:active")
    def active(args: tuple[Any, Element]) -> bool:
        session, _element = args
        held: HeldStanzas | None = STATE.pop(session)
        if held is not None:
            held.flush(session)
        return True

    @events.on("session/resumed")
    def resumed(session: Any) -> None:
        # XEP-0352 §5.2: a resumed stream starts active; what was held goes out now.
        held: HeldStanzas | None = STATE.pop(session)
        if held is not None:
            held.flush(session)

    @events.on("session/ended")
    def session_ended(session: Any) -> None:
        held: HeldStanzas | None = STATE.get(session)
        if held is not None and held.session is session:
            STATE.pop(session)  # nothing can be sent any more (unless resumed)
