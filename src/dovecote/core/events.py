"""The event bus: named hooks with priorities, the way modules plug into the server.

Handlers run from the highest priority down; a handler returning True has handled the
event and stops the chain. Handlers may be plain functions (the hot path allocates no
coroutine) or coroutines.
"""

from __future__ import annotations

import bisect
import inspect
import itertools
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], Any]


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
        """Run the handlers of `name`; True when one of them handled the event."""
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
        """Run every handler (notifications: nothing can 'handle' them)."""
        for _, _, handler in tuple(self._handlers.get(name, ())):
            result = handler(event)
            if inspect.isawaitable(result):
                await result
