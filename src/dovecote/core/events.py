"""The event bus: named hooks with priorities, the way modules plug into the server.

Handlers run from the highest priority down; a handler returning True has handled the
event and stops the chain. Handlers may be plain functions (the hot path allocates no
coroutine) or coroutines.

Failures are contained:

- `fire_all` (notifications) runs every handler: one that raises is logged (ERROR, with
  the event, the handler and the stanza id / session JID of the argument) and the others
  still run, so a failing `presence/outgoing` handler skips neither offline delivery nor
  the broadcast to contacts.
- `fire` (a chain until handled) lets exceptions propagate and stops the chain: a raising
  handler has not decided, and carrying on could skip a check (blocking, privacy) that a
  lower handler relies on. `StanzaError` is how a stanza handler answers with an error
  (RFC 6120 §8.3); any other exception is a bug, which the router logs and answers with
  internal-server-error for that stanza only (`Router.route`).
"""

from __future__ import annotations

import bisect
import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], Any]

log = logging.getLogger(__name__)


def describe(argument: Any) -> str:
    """What a log line should say about an event argument: the stanza id and the session
    JID it carries (a StanzaEvent, a session, an element or a tuple of those)."""
    parts: list[str] = []
    items = argument if isinstance(argument, tuple) else (argument,)
    for item in items:
        stanza = getattr(item, "stanza", None)
        if stanza is None and hasattr(item, "attrs") and hasattr(item, "tag"):
            stanza = item
        if stanza is not None:
            attrs = getattr(stanza, "attrs", {})
            parts.append(
                f"{getattr(stanza, 'tag', '?')} id={attrs.get('id')!r} "
                f"from={attrs.get('from')!r} to={attrs.get('to')!r}"
            )
            continue
        jid = getattr(item, "jid", None)
        if jid is not None:
            parts.append(f"session {jid}")
    return ", ".join(parts) or type(argument).__name__


def handler_name(handler: Handler) -> str:
    module = getattr(handler, "__module__", None) or "?"
    name = getattr(handler, "__qualname__", None) or repr(handler)
    return f"{module}.{name}"


def log_failure(what: str, handler: Handler, argument: Any) -> None:
    """Log the exception being handled, raised by `handler` for `what` (call in `except`)."""
    log.exception("%s: handler %s failed (%s)", what, handler_name(handler), describe(argument))


class EventBus:
    def __init__(self) -> None:
        # name -> sorted list of (-priority, insertion order, handler)
        self._handlers: dict[str, list[tuple[int, int, Handler]]] = {}
        self._order = itertools.count()

    def add(self, name: str, handler: Handler, priority: int = 0) -> None:
        bisect.insort(self._handlers.setdefault(name, []), (-priority, next(self._order), handler))

    def remove(self, name: str, handler: Handler) -> None:
        entries = self._handlers.get(name, [])
        self._handlers[name] = [e for e in entries if e[2] is not handler]

    def on(self, name: str, priority: int = 0) -> Callable[[Handler], Handler]:
        """Decorator form of `add`."""

        def register(handler: Handler) -> Handler:
            self.add(name, handler, priority)
            return handler

        return register

    def has(self, name: str) -> bool:
        return bool(self._handlers.get(name))

    async def fire(self, name: str, event: Any) -> bool:
        """Run the handlers of `name`; True when one of them handled the event.

        An exception stops the chain and propagates (see the module docstring): the
        caller answers the stanza (StanzaError: that error; anything else:
        internal-server-error)."""
        entries = self._handlers.get(name)
        if not entries:
            return False
        for _, _, handler in tuple(entries):
            result = handler(event)
            if inspect.isawaitable(result):
                result = await result
            if result:
                return True
        return False

    async def fire_all(self, name: str, event: Any) -> None:
        """Run every handler (notifications: nothing can 'handle' them). A handler that
        raises is logged and the others still run."""
        for _, _, handler in tuple(self._handlers.get(name, ())):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log_failure(name, handler, event)
