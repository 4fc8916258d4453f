"""XEP-0059: Result Set Management — read a request's <set/>, build the response's.

`parse_request` turns `<set xmlns='http://jabber.org/protocol/rsm'>` into an `RSMRequest`
(malformed input raises `RSMError`, answered with bad-request); `response_set` builds the
<set/> that describes the page returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from dovecote.xml.element import Element

RSM = "http://jabber.org/protocol/rsm"


class RSMError(ValueError):
    """A malformed <set/>; answer with bad-request."""


@dataclass(slots=True, frozen=True)
class RSMRequest:
    """What a requesting entity asked for (XEP-0059 §2).

    `before` is None when absent and "" for an empty <before/>: the last page (§2.5).
    """

    max: int | None = None
    after: str | None = None
    before: str | None = None
    index: int | None = None

    @property
    def backwards(self) -> bool:
        """Paging backwards (§2.3, §2.5): the page ends where <before/> says."""
        return self.before is not None


def _non_negative(text: str, what: str) -> int:
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise RSMError(f"<{what}/> must be a non-negative integer")
    return int(value)


def parse_request(set_el: Element) -> RSMRequest:
    """Read a request <set/> (XEP-0059 §2)."""
    max_el = set_el.find("max", RSM)
    index_el = set_el.find("index", RSM)
    after_el = set_el.find("after", RSM)
    before_el = set_el.find("before", RSM)
    after = after_el.text if after_el is not None else None
    if after == "":
        raise RSMError("<after/> needs the UID of an item")  # §2.2: only <before/> may be empty
    return RSMRequest(
        max=_non_negative(max_el.text, "max") if max_el is not None else None,
        after=after,
        before=before_el.text if before_el is not None else None,
        index=_non_negative(index_el.text, "index") if index_el is not None else None,
    )


def find_request(parent: Element) -> RSMRequest | None:
    """The RSM request inside `parent` (e.g. a MAM <query/>), or None."""
    set_el = parent.find("set", RSM)
    return parse_request(set_el) if set_el is not None else None


def response_set(
    first: str | None = None,
    last: str | None = None,
    count: int | None = None,
    first_index: int | None = None,
) -> Element:
    """The <set/> of a response (§2.1): <first index=>, <last> of a non-empty page (§2.2:
    neither for an empty one) and the <count/> of the whole result set."""
    set_el = Element("set", RSM)
    if first is not None and last is not None:
        attrs = {"index": str(first_index)} if first_index is not None else None
        set_el.add("first", attrs=attrs, text=first)
        set_el.add("last", text=last)
    if count is not None:
        set_el.add("count", text=str(count))
    return set_el
