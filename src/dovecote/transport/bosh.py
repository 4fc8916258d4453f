"""BOSH (XEP-0124 1.11) carrying an XMPP stream (XEP-0206 1.4): one `BoshSession` is
one client stream spread over many HTTP requests.

The stream is the same `C2SStream` (negotiation machine, SASL, binding, XEP-0198, the
`ClientSession`) as on TCP and WebSocket; `BoshSession` is its transport
(transport/base.py `StreamTransport`):

- the session creation request (XEP-0124 §7) is the stream header, its response carries
  the session's attributes (`sid`, `wait`, `requests`, `hold`, `polling`, `inactivity`,
  `maxpause`, `ver`, `ack`) and the stream's (`authid`, `from`, `xmpp:version`,
  XEP-0206 §4), then the stream features; `xmpp:restart='true'` is a stream restart
  (XEP-0206 §5);
- requests are handled in `rid` order (§14.2): one ahead of a gap waits for it, one
  beyond the window of `requests` ends the session with `item-not-found`; a `rid`
  answered already gets the same response again from a cache of the last `requests`
  responses (§14.3), one received and not yet answered takes the place of the first
  (answered with the recoverable `type='error'`);
- what the stream writes is queued and answers the oldest held request; a request is
  held at most `wait` seconds (then answered empty), at most `hold` are held (§8);
  `ack` both ways (§9); `pause` (§10); `type='terminate'` (§13); polling too often and
  too many requests are `policy-violation` (§11, §12);
- no request for `inactivity` seconds (or a paused session's `pause`) and the
  connection is taken for dropped: with XEP-0198 the `ClientSession` hibernates and may
  be resumed from anywhere; a stream error ends the session with the terminal condition
  `remote-stream-error` and the `<stream:error/>` inside (XEP-0206 §7);
- no STARTTLS: TLS belongs to HTTP (`secure` when the creation request came over
  https, a trusted proxy's https, or `[bosh] consider_secure`), and no channel binding.

`http/bosh.py` turns HTTP requests into `request()` calls and keeps the sessions by sid.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dovecote.stream.c2s import C2SStream
from dovecote.stream.negotiation import Framing
from dovecote.transport.base import TokenBucket, uncount_connection
from dovecote.xml import ns
from dovecote.xml.element import XML_LANG, Element, escape_attr, serialize
from dovecote.xml.parser import (
    ElementReceived,
    StreamClosed,
    StreamHeader,
    StreamOpened,
    StreamParser,
    XMLStreamError,
)

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)

HTTPBIND = "http://jabber.org/protocol/httpbind"
#: XEP-0206 §3: the `xmpp:` attributes (version, restart, restartlogic).
XBOSH = "urn:xmpp:xbosh"
#: The protocol version we speak (XEP-0124 §7 'ver').
VERSION = (1, 11)
#: A stream opens with the session creation `<body/>` (its attributes the header's).
BOSH_FRAMING = Framing(HTTPBIND, "body", None, None)
#: Seconds after which a response the client says it lacks is reported (§9.3).
REPORT_AFTER = 1.0
#: Bytes waiting for a request before backlogs (offline messages) wait for the client.
WRITE_HIGH_WATER = 64 * 1024
#: How far the start tag of a body that does not parse is looked for.
_START_TAG_MAX = 4096
_XBOSH_VERSION = f"{{{XBOSH}}}version"
_XBOSH_RESTART = f"{{{XBOSH}}}restart"
_STREAM_PREFIXES = {ns.STREAMS: "stream"}
#: XEP-0124 §17.2: the HTTP codes a legacy client (no 'ver') gets instead of these
#: terminal conditions; any other condition is sent as a terminal condition.
LEGACY_STATUS = {"bad-request": 400, "policy-violation": 403, "item-not-found": 404}
#: Stream errors that stand for a terminal binding condition of their own while the
#: session is being created (XEP-0124 §17.2): the rest are `remote-stream-error`.
_CREATION_CONDITIONS = frozenset(("host-unknown", "improper-addressing"))


class BoshError(Exception):
    """A terminal binding condition (XEP-0124 §17.2); `sid`: the session of a request
    whose `<body/>` start tag could be read."""

    def __init__(self, condition: str, text: str = "", sid: str | None = None) -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.sid = sid


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP response to a BOSH request."""

    body: bytes
    status: int = 200


@dataclass(slots=True)
class ParsedBody:
    attrs: dict[str, str]
    elements: list[ElementReceived]


def parse_body(data: bytes, max_stanza_size: int) -> ParsedBody:
    """One request's `<body/>` (XEP-0124 §4): its attributes and payload elements, with
    the RFC 6120 §11 restrictions and the stanza size limit of TCP. Stanzas that do not
    declare 'jabber:client' are taken as in it (XEP-0206 §3 notes clients that leave the
    namespace out). Raises BoshError: 'bad-request' for anything else, 'policy-violation'
    for a stanza over the size limit, naming the session when the start tag was read."""
    parser = StreamParser(max_stanza_size)
    try:
        events = parser.feed(data)
    except XMLStreamError as exc:
        condition = "policy-violation" if exc.condition == "policy-violation" else "bad-request"
        raise BoshError(condition, str(exc), _sid_of(data)) from None
    finally:
        parser.close()
    if not events or not isinstance(events[0], StreamOpened):
        raise BoshError("bad-request", "the request must be one <body/> element")
    header = events[0].header
    if header.ns != HTTPBIND or header.tag != "body":
        raise BoshError("bad-request", f"the root element must be {{{HTTPBIND}}}body")
    if not isinstance(events[-1], StreamClosed):
        raise BoshError("bad-request", "the <body/> element is not complete")
    elements = [event for event in events if isinstance(event, ElementReceived)]
    for event in elements:
        _as_client(event.element)
    return ParsedBody(header.attrs, elements)


def _sid_of(data: bytes) -> str | None:
    """The 'sid' of a body that does not parse, if its start tag does (read a byte at a
    time, so that no error after it hides it; rare, and bounded)."""
    parser = StreamParser(_START_TAG_MAX)
    try:
        for start in range(min(len(data), _START_TAG_MAX)):
            for event in parser.feed(data[start : start + 1]):
                if isinstance(event, StreamOpened):
                    header = event.header
                    if header.ns == HTTPBIND and header.tag == "body":
                        return header.attrs.get("sid")
                    return None
    except XMLStreamError:
        return None
    finally:
        parser.close()
    return None


def _as_client(element: Element) -> None:
    """Elements left in the body's namespace are in 'jabber:client'."""
    if element.ns == HTTPBIND:
        element.ns = ns.CLIENT
    for child in element.elements:
        _as_client(child)


def parse_version(text: str | None) -> tuple[int, int] | None:
    """'1.11' -> (1, 11); None for anything else."""
    if not text:
        return None
    major, _, minor = text.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def body(attrs: dict[str, str], payload: bytes = b"") -> bytes:
    """A response `<body/>` with `attrs` (names as written: 'xmpp:version', 'xml:lang')
    around the serialized payload."""
    parts = [f"<body xmlns='{HTTPBIND}'"]
    if any(name.startswith("xmpp:") for name in attrs):
        parts.append(f" xmlns:xmpp='{XBOSH}'")
    if payload:
        # XEP-0206 §3: stream features and errors use the stream: prefix.
        parts.append(f" xmlns:stream='{ns.STREAMS}'")
    for name, value in attrs.items():
        parts.append(f" {name}='{escape_attr(value)}'")
    if not payload:
        parts.append("/>")
        return "".join(parts).encode()
    parts.append(">")
    return "".join(parts).encode() + payload + b"</body>"


def terminate(condition: str, payload: bytes = b"", *, legacy: bool = False) -> Reply:
    """A terminal binding condition (XEP-0124 §17.2), or the HTTP error a legacy client
    understands (§17.1)."""
    if legacy and condition in LEGACY_STATUS:
        return Reply(b"", LEGACY_STATUS[condition])
    return Reply(body({"type": "terminate", "condition": condition}, payload))


@dataclass(frozen=True, slots=True)
class SessionParams:
    """What was agreed at session creation (XEP-0124 §7)."""

    wait: int
    hold: int
    requests: int
    inactivity: int
    polling: int
    maxpause: int
    ver: str | None
    #: The client acknowledges responses (it sent ack='1', §9.2): so do we.
    acks: bool


class _Request:
    """A request received and not yet answered."""

    __slots__ = ("attrs", "elements", "future", "gone", "held_at", "rid", "size", "timer")

    def __init__(
        self,
        rid: int,
        attrs: dict[str, str],
        elements: list[ElementReceived],
        size: int,
        future: asyncio.Future[Reply],
        gone: Callable[[], bool] | None = None,
    ) -> None:
        self.rid = rid
        self.attrs = attrs
        self.elements = elements
        self.size = size
        self.future = future
        #: True once the HTTP connection this request came on is closed (the page that
        #: sent it was reloaded or closed): it can no longer carry a response.
        self.gone = gone
        self.timer: asyncio.TimerHandle | None = None
        self.held_at = 0.0


class BoshSession:
    """The StreamTransport (transport/base.py) of one BOSH session; see the module
    docstring. `registry` maps sids to live sessions (the HTTP side's)."""

    framing = BOSH_FRAMING
    can_starttls = False

    def __init__(
        self,
        server: Server,
        registry: dict[str, BoshSession],
        params: SessionParams,
        peer_address: str,
        secure: bool,
        counted_as: str | None,
        max_buffer: int,
    ) -> None:
        self.server = server
        self.registry = registry
        self.sid = secrets.token_urlsafe(24)
        self.params = params
        self.peer_address = peer_address
        self.secure = secure
        self.write_paused = False
        self.max_buffer = max_buffer
        self.max_stanza_size = server.config.limits.max_stanza_size
        limits = server.config.limits
        self._bucket = (
            TokenBucket(limits.c2s_rate, max(limits.c2s_burst, limits.max_stanza_size))
            if limits.c2s_rate
            else None
        )
        self._counted_as = counted_as
        #: The highest rid handled, all below it handled too.
        self.rid = 0
        #: Requests received, by rid, waiting for their turn (a gap, or paused input).
        self._inbox: dict[int, _Request] = {}
        #: Requests handled and waiting for something to answer (oldest first).
        self._held: deque[_Request] = deque()
        #: The last responses by rid, for retransmission (§14.3).
        self._cache: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        #: §9.3: a response the client says it has not received: (rid, ms since sent).
        self._report: tuple[int, int] | None = None
        #: Serialized elements waiting for a request to carry them.
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None
        #: Attributes for the next response: the creation response's, then the stream
        #: header's if it came later (§7 'from').
        self._next_attrs: dict[str, str] = {}
        self._created = False
        self.to = ""
        self.lang = ""
        #: Key sequencing (§15): the key the next request's must hash to.
        self._key: str | None = None
        self._inactivity_timer: asyncio.TimerHandle | None = None
        self._pause: int | None = None
        self._negotiation_timer: asyncio.TimerHandle | None = None
        self._last_request_at = 0.0
        self._last_empty = False
        self._last_response_empty = False
        #: Our side ended the stream: the terminal condition and its payload (a stream
        #: error), answered on the oldest held request or the next one to come.
        self._terminal: tuple[str, bytes] | None = None
        self._closing = False
        #: Gone: out of the registry, no more answers.
        self.ended = False
        self._drained_callbacks: list[Callable[[], None]] = []
        self._paused_for: set[str] = set()
        self.stream: C2SStream | None = C2SStream(server, self)

    def __repr__(self) -> str:
        return f"<BoshSession {self.sid[:8]} from {self.peer_address}>"

    @property
    def legacy(self) -> bool:
        """The client sent no 'ver' (XEP-0124 §17.1: HTTP error codes)."""
        return self.params.ver is None

    # ---- requests ------------------------------------------------------------------------
    async def start(self, rid: int, parsed: ParsedBody) -> Reply:
        """The session creation request (§7): the stream header."""
        params = self.params
        attrs = parsed.attrs
        self.rid = rid - 1
        self.to = attrs.get("to", "")
        self.lang = attrs.get(XML_LANG, "")
        self._key = (attrs.get("newkey") or "").lower() or None
        creation = {
            "sid": self.sid,
            "wait": str(params.wait),
            "requests": str(params.requests),
            "hold": str(params.hold),
            "polling": str(params.polling),
            "inactivity": str(params.inactivity),
        }
        if params.maxpause:
            creation["maxpause"] = str(params.maxpause)
        if params.ver is not None:
            creation["ver"] = params.ver
        if params.acks:
            creation["ack"] = str(rid)
        creation["xmpp:restartlogic"] = "true"
        self._next_attrs = creation
        self.server.streams.add(self.stream)
        loop = asyncio.get_running_loop()
        timeout = self.server.config.limits.negotiation_timeout
        self._negotiation_timer = loop.call_later(timeout, self._negotiation_timeout)
        request = _Request(rid, attrs, [], 0, loop.create_future())
        self._inbox[rid] = request
        self._pump(creation=True)
        return await request.future

    async def request(
        self,
        rid: int,
        parsed: ParsedBody,
        size: int,
        gone: Callable[[], bool] | None = None,
    ) -> Reply:
        """A request of this session (after creation); `gone` tells whether its HTTP
        connection has closed."""
        if self.ended:
            return terminate("item-not-found", legacy=self.legacy)
        loop = asyncio.get_running_loop()
        self._cancel_inactivity()
        if rid <= self.rid:
            # §14.3: a request sent again (its response was lost).
            cached = self._cache.get(rid)
            if cached is not None:
                self._idle_if_done()
                return Reply(cached[0])
            for old in self._held:
                if old.rid == rid:
                    # Answered at once (recoverable), the answer goes to the new request.
                    previous = old.future
                    old.future = loop.create_future()
                    _resolve(previous, Reply(body({"type": "error"})))
                    return await old.future
            self._idle_if_done()
            return self.terminate_with("item-not-found", "no response to send again for this rid")
        if self._terminal is not None and not self._held:
            # Our side ended the session: the first request to come gets it.
            return self._answer_terminal_now(rid)
        window = self.params.requests
        if "pause" in parsed.attrs or parsed.attrs.get("type") == "terminate":
            window += 1  # §12: one more request to pause or terminate
        if rid > self.rid + window:
            return self.terminate_with("item-not-found", "rid outside the window")
        waiting = self._inbox.get(rid)
        if waiting is not None:
            previous = waiting.future
            waiting.future = loop.create_future()
            _resolve(previous, Reply(body({"type": "error"})))
            return await waiting.future
        request = _Request(rid, parsed.attrs, parsed.elements, size, loop.create_future(), gone)
        self._inbox[rid] = request
        if rid != self.rid + 1:
            # Ahead of a gap: waits for it, at most `wait` seconds (then the recoverable
            # error: the client sends again what it sent before this one).
            request.timer = loop.call_later(self.params.wait, self._gap_timeout, request)
        self._pump()
        return await request.future

    def _pump(self, creation: bool = False) -> None:
        """Handle the requests whose turn it is, in rid order."""
        while not self._paused_for and not self.ended:
            request = self._inbox.pop(self.rid + 1, None)
            if request is None:
                return
            if request.timer is not None:
                request.timer.cancel()
                request.timer = None
            try:
                self._handle(request, creation)
            except BoshError as exc:
                self.terminate_with(exc.condition, exc.text, request)
                return
            except Exception:
                log.exception("internal error on %r", self)
                self.terminate_with("internal-server-error", "", request)
                return
            creation = False

    def _handle(self, request: _Request, creation: bool) -> None:
        """One request in its turn (§8): its payload to the stream, then held."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        attrs = request.attrs
        self.rid = request.rid
        params = self.params
        if not creation:
            self._check_key(attrs)
        ack = attrs.get("ack")
        if ack is not None and ack.isdigit() and not creation:
            # §9.3: the client has these responses; they need not be kept.
            acked = int(ack)
            for rid in [rid for rid in self._cache if rid <= acked]:
                del self._cache[rid]
            missing = self._cache.get(acked + 1)
            if self.params.acks and missing is not None and now - missing[1] >= REPORT_AFTER:
                # §9.3: a response the client has not seen, sent a while ago (not one
                # still on its way): tell it which (it may send that request again).
                self._report = (acked + 1, int((now - missing[1]) * 1000))
        kind = attrs.get("type")
        pause = attrs.get("pause")
        restart = attrs.get(_XBOSH_RESTART) in ("true", "1")
        stream = self.stream
        if creation:
            header = {"to": self.to, "version": attrs.get(_XBOSH_VERSION) or "1.0"}
            if self.lang:
                header[XML_LANG] = self.lang
            if "from" in attrs:
                header["from"] = attrs["from"]
            if stream is not None:
                stream.receive((StreamOpened(StreamHeader("body", HTTPBIND, None, header)),))
        elif kind == "terminate":
            # §13: the payload goes through (unavailable presence), then the stream ends.
            if stream is not None:
                stream.receive([*request.elements, StreamClosed()])
            self._client_terminated(request)
            return
        elif pause is not None:
            self._paused(request, pause)
            return
        elif restart:
            # XEP-0206 §5: the payload of a restart request is ignored.
            header = {"to": attrs.get("to") or self.to, "version": "1.0"}
            lang = attrs.get(XML_LANG) or self.lang
            if lang:
                header[XML_LANG] = lang
            if stream is not None:
                stream.receive((StreamOpened(StreamHeader("body", HTTPBIND, None, header)),))
        elif request.elements:
            if self._bucket is not None:
                wait = self._bucket.take(request.size, now)
                if wait:
                    # Traffic shaping: the requests after this one wait their turn.
                    self._paused_for.add("rate")
                    loop.call_later(wait, self._resume, "rate")
            if stream is not None:
                stream.receive(request.elements)
        else:
            self._check_polling(now)
        self._last_empty = not request.elements and not restart and not creation
        self._last_request_at = now
        request.held_at = now
        request.timer = loop.call_later(params.wait, self._wait_over, request)
        self._held.append(request)
        if self._report is not None:
            report, time = self._report
            self._report = None
            self._answer(self._held.popleft(), {"report": str(report), "time": str(time)})
        self._schedule_flush()

    def _check_key(self, attrs: dict[str, str]) -> None:
        """§15.3: each key hashes to the previous one; a break is item-not-found."""
        expected = self._key
        key = attrs.get("key")
        if expected is not None:
            if key is None or hashlib.sha1(key.lower().encode()).hexdigest() != expected:
                raise BoshError("item-not-found", "invalid key sequence")
        newkey = attrs.get("newkey")
        if newkey:
            self._key = newkey.lower()
        elif key is not None:
            self._key = key.lower()

    def _drop_abandoned(self) -> None:
        """Held requests whose HTTP connection closed (a reloaded page resuming its
        session) are answered empty and dropped, keeping what waits to be sent for a
        request that can carry it; they no longer count as held (§11, §12)."""
        for old in [r for r in self._held if r.gone is not None and r.gone()]:
            self._held.remove(old)
            if old.timer is not None:
                old.timer.cancel()
                old.timer = None
            self._answer(old, with_output=False)

    def _check_polling(self, now: float) -> None:
        """§11, §12: empty requests more often than `polling` allows (requests whose
        connection is gone do not count)."""
        self._drop_abandoned()
        params = self.params
        if not params.polling or not self._last_empty:
            return
        if now - self._last_request_at >= params.polling:
            return
        if params.hold == 0:
            # §11: the response to the previous poll carried nothing either.
            if self._last_response_empty:
                raise BoshError("policy-violation", "polling too frequently")
        elif len(self._held) + 1 >= params.requests:
            # §12: as many empty requests at once as allowed, too close together.
            raise BoshError("policy-violation", "requesting too frequently")

    def _paused(self, request: _Request, pause: str) -> None:
        """§10: answer every held request now (no payload), longer inactivity once."""
        maxpause = self.params.maxpause
        if not maxpause:
            raise BoshError("bad-request", "this session cannot be paused")
        if not pause.isdigit() or int(pause) > maxpause:
            raise BoshError("policy-violation", f"a pause is at most {maxpause} seconds")
        self._pause = int(pause)
        while self._held:
            self._answer(self._held.popleft(), with_output=False)
        self._answer(request, with_output=False, cache=False)
        self._idle_if_done()

    def _client_terminated(self, request: _Request) -> None:
        """§13: the oldest pending request carries type='terminate', the rest are empty."""
        held = [*self._held, request]
        self._held.clear()
        self._closing = True
        self._answer(held[0], {"type": "terminate"})
        for other in held[1:]:
            self._answer(other, with_output=False)
        # The stream ends itself once it has handled the payload (a clean end: the
        # session does not hibernate).
        self._end(drop_stream=False)

    def _answer_terminal_now(self, rid: int) -> Reply:
        assert self._terminal is not None
        condition, payload = self._terminal
        self.rid = rid
        reply = self._terminal_reply(condition, payload)
        self._end()
        return reply

    def _terminal_reply(self, condition: str, payload: bytes) -> Reply:
        attrs = {**self._next_attrs, "type": "terminate"}
        self._next_attrs = {}
        if condition:
            attrs["condition"] = condition
            if self.legacy and condition in LEGACY_STATUS:
                return Reply(b"", LEGACY_STATUS[condition])
        return Reply(body(attrs, b"".join(self._take_output()) + payload))

    def terminate_with(
        self, condition: str, text: str = "", request: _Request | None = None
    ) -> Reply:
        """A terminal binding condition caused by the client (§17.2): every pending
        request gets it and the stream ends as after a stream error (no hibernation)."""
        log.info(
            "BOSH session %s from %s: %s (%s)", self.sid[:8], self.peer_address, condition, text
        )
        reply = terminate(condition, legacy=self.legacy)
        pending = [*self._held, *self._inbox.values()]
        if request is not None:
            pending.append(request)
        self._held.clear()
        self._inbox.clear()
        for other in pending:
            if other.timer is not None:
                other.timer.cancel()
            _resolve(other.future, reply)
        self._closing = True
        stream = self.stream
        if stream is not None and not stream.closed:
            stream.close()
        self._end()
        return reply

    # ---- answering -----------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        """Answer what can be answered once the current work is done (what the stream
        writes in one go goes out in one response)."""
        if self._flush_handle is None and not self.ended:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        held = self._held
        hold = self.params.hold
        while held and not self.ended:
            if self._terminal is not None:
                condition, payload = self._terminal
                first = held.popleft()
                self._resolve_request(first, self._terminal_reply(condition, payload), cache=True)
                while held:
                    self._answer(held.popleft(), with_output=False)
                self._end()
                return
            if self._out:
                self._answer(held.popleft())
            elif len(held) > hold:
                self._answer(held.popleft())
            else:
                break
        self._idle_if_done()

    def _answer(
        self,
        request: _Request,
        attrs: dict[str, str] | None = None,
        *,
        with_output: bool = True,
        cache: bool = True,
    ) -> None:
        all_attrs = {**self._next_attrs, **(attrs or {})}
        self._next_attrs = {}
        if self.params.acks and self.rid != request.rid and "ack" not in all_attrs:
            # §9.1: we have every request up to this rid.
            all_attrs["ack"] = str(self.rid)
        payload = b"".join(self._take_output()) if with_output else b""
        self._last_response_empty = not payload
        self._resolve_request(request, Reply(body(all_attrs, payload)), cache=cache)

    def _resolve_request(self, request: _Request, reply: Reply, *, cache: bool) -> None:
        if request.timer is not None:
            request.timer.cancel()
            request.timer = None
        if cache and reply.status == 200:
            now = asyncio.get_running_loop().time()
            self._cache[request.rid] = (reply.body, now)
            while len(self._cache) > self.params.requests:
                self._cache.popitem(last=False)
        _resolve(request.future, reply)

    def _take_output(self) -> list[bytes]:
        out, self._out = self._out, []
        self._out_size = 0
        if self.write_paused:
            self.write_paused = False
            self._call_drained()
        return out

    def _wait_over(self, request: _Request) -> None:
        """§8: `wait` seconds without anything to send: an empty response (and the ones
        before it, which are older)."""
        request.timer = None
        held = self._held
        while held and request in held:
            self._answer(held.popleft())
        self._idle_if_done()

    def _gap_timeout(self, request: _Request) -> None:
        """A request ahead of a gap that did not fill: the recoverable error (§17.3)."""
        request.timer = None
        if self._inbox.get(request.rid) is request:
            del self._inbox[request.rid]
            _resolve(request.future, Reply(body({"type": "error"})))
        self._idle_if_done()

    # ---- inactivity (§10) ----------------------------------------------------------------
    def _idle_if_done(self) -> None:
        """No request pending: the inactivity period starts."""
        if self.ended or self._held or self._inbox or self._inactivity_timer is not None:
            return
        seconds = self._pause if self._pause is not None else self.params.inactivity
        self._pause = None
        self._inactivity_timer = asyncio.get_running_loop().call_later(seconds, self._inactive)

    def _cancel_inactivity(self) -> None:
        if self._inactivity_timer is not None:
            self._inactivity_timer.cancel()
            self._inactivity_timer = None

    def _inactive(self) -> None:
        self._inactivity_timer = None
        log.info("BOSH session %s from %s: inactive", self.sid[:8], self.peer_address)
        self._lost()

    def _lost(self) -> None:
        """The client is gone (inactivity, a buffer it never collects): the stream ends
        as a dropped connection (XEP-0198: the session hibernates)."""
        if self.ended:
            return
        self._closing = True
        pending = [*self._held, *self._inbox.values()]
        self._held.clear()
        self._inbox.clear()
        reply = terminate("remote-connection-failed")
        for request in pending:
            if request.timer is not None:
                request.timer.cancel()
            _resolve(request.future, reply)
        self._end()

    def _end(self, *, drop_stream: bool = True) -> None:
        """Out of the registry; the stream learns its connection is gone (unless it is
        ending itself: `drop_stream=False`)."""
        if self.ended:
            return
        self.ended = True
        self._closing = True
        self._cancel_inactivity()
        for timer in (self._negotiation_timer, self._flush_handle):
            if timer is not None:
                timer.cancel()
        self._negotiation_timer = self._flush_handle = None
        for request in [*self._held, *self._inbox.values()]:
            if request.timer is not None:
                request.timer.cancel()
            _resolve(request.future, Reply(body({})))
        self._held.clear()
        self._inbox.clear()
        self._out = []
        self._out_size = 0
        if self.registry.get(self.sid) is self:
            del self.registry[self.sid]
        key, self._counted_as = self._counted_as, None
        uncount_connection(self.server, key)
        stream = self.stream
        if stream is not None and drop_stream:
            self.stream = None
            self.server.streams.discard(stream)
            stream.connection_lost()
        self._call_drained()

    def shutdown(self) -> None:
        """The server stops: what is held gets `system-shutdown` (§17.2)."""
        if self.ended:
            return
        stream = self.stream
        if stream is not None and not stream.closed:
            stream.close("system-shutdown", "the server is shutting down")
        self._terminal = self._terminal or ("system-shutdown", b"")
        self._flush()
        self._end()

    def _negotiation_timeout(self) -> None:
        # Cancelled by `stream_bound` once negotiation is over.
        self._negotiation_timer = None
        if self.stream is not None:
            self.stream.fail("connection-timeout", "negotiation took too long")

    # ---- StreamTransport ---------------------------------------------------------------
    @property
    def closing(self) -> bool:
        """Nothing written from now on reaches the client."""
        return self._closing or self.ended

    def notify_drained(self, callback: Callable[[], None]) -> None:
        if not self.write_paused or self.closing:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._drained_callbacks.append(callback)

    def _call_drained(self) -> None:
        callbacks, self._drained_callbacks = self._drained_callbacks, []
        for callback in callbacks:
            callback()

    def send_header(self, attrs: dict[str, str]) -> None:
        """XEP-0206 §4: the stream's id and version on the creation response ('from'
        and 'authid'); a restart's header has nothing to say (XEP-0206 §5)."""
        if self._created:
            return
        self._created = True
        header = {"from": attrs.get("from", ""), "authid": attrs.get("id", "")}
        header["xmpp:version"] = attrs.get("version", "1.0")
        if XML_LANG in attrs:
            header["xml:lang"] = attrs[XML_LANG]
        self._next_attrs.update(header)
        self._schedule_flush()

    def serialize(self, element: Element) -> bytes:
        """An element as written inside `<body/>`: stanzas declare 'jabber:client', the
        body declares the stream: prefix (XEP-0206 §3)."""
        if element.ns == ns.STREAMS:
            return serialize(element, "", _STREAM_PREFIXES).encode()
        return serialize(element).encode()

    def send_element(self, element: Element) -> None:
        if element.ns == ns.STREAMS and element.tag == "error":
            # XEP-0206 §7: a stream error is remote-stream-error with the error inside;
            # before the session exists, a bad 'to' is its own condition (XEP-0124 §17.2).
            condition = next(
                (child.tag for child in element.elements if child.ns == ns.STREAM_ERRORS), ""
            )
            if condition in _CREATION_CONDITIONS and not self._cache:
                self._terminal = (condition, b"")
            elif condition == "system-shutdown":
                self._terminal = (condition, b"")
            else:
                self._terminal = ("remote-stream-error", self.serialize(element))
            self._schedule_flush()
            return
        self.write(self.serialize(element))

    def write(self, data: bytes) -> None:
        """Queue serialized elements for the next response."""
        if self.closing or self._terminal is not None:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > WRITE_HIGH_WATER:
            if self._out_size > self.max_buffer:
                log.warning(
                    "BOSH session from %s does not collect its data; dropping it",
                    self.peer_address,
                )
                self._lost()
                return
            self.write_paused = True
        self._schedule_flush()

    def send_close(self) -> None:
        """The stream ends (a stream error, or our answer to the client's end): the
        next response is type='terminate'."""
        if self._terminal is None and not self.ended:
            self._terminal = ("", b"")
        self._schedule_flush()

    def reset_stream(self) -> None:
        """XEP-0206 §5: each request is parsed on its own; nothing to reset."""

    async def starttls(self) -> None:
        raise ConnectionError("no STARTTLS over BOSH (XEP-0206 §3)")

    def channel_bindings(self) -> dict[str, bytes]:
        """None: the TLS of the HTTP layer is not ours to bind to (no -PLUS)."""
        return {}

    def stream_bound(self) -> None:
        if self._negotiation_timer is not None:
            self._negotiation_timer.cancel()
            self._negotiation_timer = None

    def close(self) -> None:
        """The stream is done: the terminating response goes out on the oldest held
        request, or the next request to come (within `inactivity`)."""
        if self._terminal is None:
            self._terminal = ("", b"")
        self._closing = True
        if self.stream is not None:
            self.server.streams.discard(self.stream)
            if self.ended:
                self.stream = None
        self._schedule_flush()
        self._idle_if_done()

    def pause_reading(self) -> None:
        self._paused_for.add("backlog")

    def resume_reading(self) -> None:
        self._resume("backlog")

    def _resume(self, reason: str) -> None:
        self._paused_for.discard(reason)
        if not self._paused_for:
            self._pump()


def _resolve(future: asyncio.Future[Any], reply: Reply) -> None:
    if not future.done():
        future.set_result(reply)
