"""XEP-0280: Message Carbons — every carbons-enabled client of an account sees both sides
of the account's conversations.

- A client enables or disables carbons for its own session with an IQ set of `<enable/>`
  / `<disable/>` to its account (no 'to', or its own bare JID) (§4, §5); repeated
  requests are answered with a result (§10.1).
- Received copies (§7): after an eligible message reached some resources of a local user
  (`message/delivered`), each other carbons-enabled resource of that user gets it wrapped
  in `<received/>`. A message that went to offline storage, or nowhere, is not copied.
- Sent copies (§8): when a local client sends an eligible message (`stanza/from-client`,
  routing continues), each other carbons-enabled resource of the sender gets it wrapped in
  `<sent/>`, whether the sending client enabled carbons or not.

Copies come from the user's bare JID, to the full JID of the receiving resource, with the
type of the original, the original inside a XEP-0297 `<forwarded/>` (xml/forward.py). The
original is forwarded as it was (the `<private/>` element is not removed, §9 note), with
what the server added before delivery (a XEP-0359 `<stanza-id/>` from the archive).
Copies are written straight to local sessions: they cannot bounce back to the sender
(§10.3). The full set of §6.1 rules is implemented, so `urn:xmpp:carbons:rules:0` is
advertised (§6.2).
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.core.slots import SessionSlot
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element
from dovecote.xml.forward import forwarded

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.jid import JID
    from dovecote.server import Server

CARBONS = "urn:xmpp:carbons:2"
SID = "urn:xmpp:sid:0"
CARBONS_RULES = "urn:xmpp:carbons:rules:0"
HINTS = "urn:xmpp:hints"
MUC_USER = "http://jabber.org/protocol/muc#user"
CONFERENCE = "jabber:x:conference"  # XEP-0249 direct invitations
#: §6.1: payloads typically used in IM: receipts (XEP-0184), chat states (XEP-0085),
#: chat markers (XEP-0333).
IM_PAYLOADS = frozenset(
    ("urn:xmpp:receipts", "http://jabber.org/protocol/chatstates", "urn:xmpp:chat-markers:0")
)

MODULE = ModuleInfo(
    name="carbons",
    summary="Message carbons (XEP-0280)",
    features=[CARBONS, CARBONS_RULES],
)
#: Per session: True while it has carbons enabled.
ENABLED = SessionSlot[bool]("carbons.enabled")
#: After the modules that may refuse an outgoing message (blocking: 100, roster: 50), so
#: that a refused message is not copied.
SENT_PRIORITY = -100


def is_eligible(stanza: Element, outgoing: bool, sender: JID | None = None) -> bool:
    """XEP-0280 §6.1: is this message copied to the user's other resources?

    `outgoing`: sent by the user's client (§8); otherwise received by the user (§7) from
    `sender`.
    """
    msg_type = stanza.attrs.get("type", "normal")
    if msg_type == "groupchat":
        return False  # §6.1 MUC rules: never copied
    has_body = im_payload = invitation = muc_user = False
    for child in stanza.children:
        if not isinstance(child, Element):
            continue
        child_ns = child.ns
        if child_ns == CARBONS:
            # <private/> (§6.1, §9); <sent/> or <received/>: already a carbon copy.
            return False
        if child_ns == HINTS:
            # XEP-0334 §4.3 no-copy; hints inside errors are ignored (XEP-0334 §5).
            if child.tag == "no-copy" and msg_type != "error":
                return False
        elif child.tag == "body" and child_ns == ns.CLIENT:
            has_body = True
        elif child_ns in IM_PAYLOADS:
            im_payload = True
        elif child.tag == "x" and child_ns == CONFERENCE:
            invitation = True
        elif child.tag == "x" and child_ns == MUC_USER:
            if child.find("invite", MUC_USER) is not None:
                invitation = True  # a mediated invitation (XEP-0045 §7.8.2)
            else:
                muc_user = True
    if msg_type == "error":
        # §6.1: an error in answer to an eligible message. The server keeps no record of
        # what was sent, so: an error carrying the bounced IM payload, or (incoming) one
        # from a bare JID, the answer to a message sent to an account (RFC 6121 §8.5.2).
        if has_body or im_payload:
            return True
        return not outgoing and sender is not None and sender.resource is None
    if invitation:
        return True  # §6.1 MUC rules: XEP-0249 and mediated invitations are copied
    if muc_user and not outgoing:
        # §6.1 MUC rules: a private message from an occupant is already sent by the room
        # to every joined client; one from the user to an occupant is copied (below).
        return False
    if msg_type == "chat":
        return True
    if msg_type == "normal":
        return has_body or im_payload
    return False  # headline: not instant messaging


def wrapped(direction: str, original: Element) -> Element:
    """`<sent/>` or `<received/>` with the original in `<forwarded/>` (§7, §8)."""
    # A shallow copy: modules may append to the original after this (a copy held back by
    # CSI is serialized later), and the copy must stay what the user sent or received.
    return Element(direction, CARBONS, {}, [forwarded(original.shallow_copy())])


def copy_for(payload: Element, original: Element, user: str, to: str) -> Element:
    """The wrapping message for one resource: from the bare JID, to the full JID."""
    attrs = {"from": user, "to": to}
    msg_type = original.attrs.get("type")
    if msg_type is not None:
        attrs["type"] = msg_type  # §7, §8: SHOULD keep the type
    return Element("message", ns.CLIENT, attrs, [payload])


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions
    #: Users of whom a session enabled carbons: a superset, pruned when found stale, so
    #: that a message of a user without carbons costs one set lookup. The flag itself lives
    #: in the session's slot, so it stays with a session resumed on a new connection.
    maybe_enabled: set[JID] = set()

    def enabled_resources(user: JID, skip: Container[Any]) -> list[Any]:
        """The user's sessions with carbons enabled, but those in `skip`."""
        if user not in maybe_enabled:
            return []
        enabled = [s for s in sessions.resources(user) if ENABLED.get(s)]
        if not enabled:
            maybe_enabled.discard(user)
        return [s for s in enabled if s not in skip]

    @events.on(f"iq/bare/set/{CARBONS}:enable")
    @events.on(f"iq/bare/set/{CARBONS}:disable")
    def toggle(event: StanzaEvent) -> bool:
        session: Any = event.origin
        # §4.1, §5.1: only a client of this server, for its own account.
        if session is None or event.to.bare != event.sender.bare:
            raise StanzaError("not-allowed", "carbons are set by a client for its own account")
        assert event.payload is not None
        if event.payload.tag == "enable":
            ENABLED.set(session, True)
            maybe_enabled.add(event.sender.bare)
        else:
            ENABLED.pop(session)
        event.reply()  # §4, §5 (and §10.1: a repeated request is no error)
        return True

    def send_copies(direction: str, original: Element, user: JID, targets: list[Any]) -> None:
        payload = wrapped(direction, original)
        user_text = str(user)
        for session in targets:
            session.send(copy_for(payload, original, user_text, str(session.jid)))

    @events.on("message/delivered")
    def copy_received(args: tuple[StanzaEvent, list[Any]]) -> None:
        """§7: the resources that did not get the message under RFC 6121 get a copy."""
        event, delivered = args
        user = event.to.bare
        targets = enabled_resources(user, delivered)
        if targets and is_eligible(event.stanza, outgoing=False, sender=event.sender):
            send_copies("received", event.stanza, user, targets)

    @events.on("stanza/from-client", SENT_PRIORITY)
    def copy_sent(event: StanzaEvent) -> bool:
        """§8: the sender's other resources get a copy; the message goes on its way."""
        stanza = event.stanza
        if stanza.tag != "message":
            return False
        user = event.sender.bare
        targets = enabled_resources(user, (event.origin,))
        if targets and is_eligible(stanza, outgoing=True):
            if event.archive_id is not None:
                # XEP-0313 §3.5 (archive ids): the sent copy carries the archive id.
                stanza = stanza.shallow_copy()
                stanza.append(Element("stanza-id", SID, {"by": str(user), "id": event.archive_id}))
            send_copies("sent", stanza, user, targets)
        return False
