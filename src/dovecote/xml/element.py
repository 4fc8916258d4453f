"""The stanza object: a light XML element, its builders and its serializer.

Children are kept in document order as `Element`s and text strings, so a stanza can be
forwarded byte-for-byte faithfully (mixed content such as XHTML-IM included).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dovecote.xml import ns

# CR is escaped so that it survives XML end-of-line normalization (XML 1.0 §2.11).
_ESCAPE_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ESCAPE_ATTR = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "'": "&apos;",
        '"': "&quot;",
        "\n": "&#10;",
        "\r": "&#13;",
        "\t": "&#9;",
    }
)
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def escape_text(text: str) -> str:
    return text.translate(_ESCAPE_TEXT)


def escape_attr(text: str) -> str:
    return text.translate(_ESCAPE_ATTR)


class Element:
    """An XML element: `tag` (local name), `ns` (namespace URI), `attrs`, `children`.

    Attribute names are local names; a namespaced attribute is spelled `{uri}name`
    (`xml:lang` is `{http://www.w3.org/XML/1998/namespace}lang`, see XML_LANG).
    """

    __slots__ = ("attrs", "children", "ns", "tag")

    def __init__(
        self,
        tag: str,
        ns: str = "",
        attrs: dict[str, str] | None = None,
        children: list[Element | str] | None = None,
        text: str | None = None,
    ) -> None:
        self.tag = tag
        self.ns = ns
        self.attrs: dict[str, str] = attrs if attrs is not None else {}
        self.children: list[Element | str] = children if children is not None else []
        if text:
            self.children.append(text)

    # ---- reading -------------------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    @property
    def text(self) -> str:
        """The element's own character data (not its descendants')."""
        return "".join(c for c in self.children if isinstance(c, str))

    @property
    def elements(self) -> Iterator[Element]:
        return (c for c in self.children if isinstance(c, Element))

    def find(self, tag: str, ns: str | None = None) -> Element | None:
        """First child element with that local name (and namespace, when given)."""
        for child in self.children:
            if isinstance(child, Element) and child.tag == tag and (ns is None or child.ns == ns):
                return child
        return None

    def find_all(self, tag: str | None = None, ns: str | None = None) -> list[Element]:
        return [
            c
            for c in self.children
            if isinstance(c, Element)
            and (tag is None or c.tag == tag)
            and (ns is None or c.ns == ns)
        ]

    def find_text(self, tag: str, ns: str | None = None) -> str | None:
        child = self.find(tag, ns)
        return child.text if child is not None else None

    def __repr__(self) -> str:
        return f"<Element {{{self.ns}}}{self.tag} {self.attrs!r}>"

    def __str__(self) -> str:
        return serialize(self)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Element)
            and self.tag == other.tag
            and self.ns == other.ns
            and self.attrs == other.attrs
            and self.children == other.children
        )

    __hash__ = None  # type: ignore[assignment]

    # ---- building ------------------------------------------------------------------
    def append(self, child: Element | str) -> Element | str:
        self.children.append(child)
        return child

    def add(
        self,
        tag: str,
        ns: str | None = None,
        attrs: dict[str, str] | None = None,
        text: str | None = None,
    ) -> Element:
        """Append and return a new child element (inheriting this namespace by default)."""
        child = Element(tag, self.ns if ns is None else ns, attrs, text=text)
        self.children.append(child)
        return child

    def remove(self, child: Element) -> None:
        self.children = [c for c in self.children if c is not child]

    def copy(self) -> Element:
        """Deep copy (stanzas are mutated when re-addressed; the original stays intact)."""
        return Element(
            self.tag,
            self.ns,
            dict(self.attrs),
            [c.copy() if isinstance(c, Element) else c for c in self.children],
        )

    def shallow_copy(self) -> Element:
        """New attribute dict, shared children: enough to change `to`/`from`/`type`."""
        return Element(self.tag, self.ns, dict(self.attrs), list(self.children))


def E(tag: str, ns: str, attrs: dict[str, Any] | None = None, *children: Element | str) -> Element:
    """Builder: `E("iq", ns.CLIENT, {"type": "result"}, E("query", ns.PING))`."""
    clean = {k: str(v) for k, v in (attrs or {}).items() if v is not None}
    return Element(tag, ns, clean, list(children))


# ---- serializing ----------------------------------------------------------------------
def serialize(
    element: Element, default_ns: str = "", prefixes: dict[str, str] | None = None
) -> str:
    """Serialize `element` as it is written inside a stream whose default namespace is
    `default_ns` and whose header declared `prefixes` (uri -> prefix, e.g. the
    `stream:` prefix of the streams namespace)."""
    parts: list[str] = []
    _write(element, default_ns, prefixes or {}, parts)
    return "".join(parts)


#: Namespaces in XML 1.0 §3: the `xml` prefix is bound to the XML namespace by definition
#: (declaring another prefix or the default namespace for it is an error), and the xmlns
#: namespace may not be used for element or attribute names at all.
_XMLNS = "http://www.w3.org/2000/xmlns/"
_RESERVED_NAMESPACES = frozenset((ns.XML, _XMLNS))


def _reserved_prefix(uri: str) -> str:
    """The prefix an element or attribute in a reserved namespace is written with."""
    if uri == ns.XML:
        return "xml"
    raise ValueError(f"names in the namespace {uri} cannot be serialized (Namespaces in XML §3)")


def _write(el: Element, parent_ns: str, prefixes: dict[str, str], out: list[str]) -> None:
    element_ns = el.ns
    prefix = prefixes.get(element_ns)
    if prefix is None and element_ns in _RESERVED_NAMESPACES:
        prefix = _reserved_prefix(element_ns)
    if prefix is not None:
        # A prefixed element leaves the default namespace of its children unchanged.
        name = f"{prefix}:{el.tag}"
        child_default = parent_ns
        out.append(f"<{name}")
    else:
        name = el.tag
        child_default = element_ns
        out.append(f"<{name}")
        if element_ns != parent_ns:
            out.append(f" xmlns='{escape_attr(element_ns)}'")
    extra_decls = 0
    for key, value in el.attrs.items():
        if key[0] == "{":
            # Local names cannot contain '}', namespace URIs can: split at the last one.
            uri, _, local = key[1:].rpartition("}")
            if uri in _RESERVED_NAMESPACES:
                out.append(f" {_reserved_prefix(uri)}:{local}='{escape_attr(value)}'")
                continue
            if not uri:
                out.append(f" {local}='{escape_attr(value)}'")
                continue
            attr_prefix = f"a{extra_decls}"
            extra_decls += 1
            out.append(f" xmlns:{attr_prefix}='{escape_attr(uri)}'")
            out.append(f" {attr_prefix}:{local}='{escape_attr(value)}'")
        elif ":" in key or key == "xmlns":
            # A namespace declaration or a raw prefixed name would change what the
            # serializer's own declarations mean: only {uri}local names are namespaced.
            raise ValueError(f"attribute name {key!r} cannot be serialized; use {{uri}}local")
        else:
            out.append(f" {key}='{escape_attr(value)}'")
    if not el.children:
        out.append("/>")
        return
    out.append(">")
    for child in el.children:
        if isinstance(child, str):
            out.append(child.translate(_ESCAPE_TEXT))
        else:
            _write(child, child_default, prefixes, out)
    out.append(f"</{name}>")
