"""XML: the incremental stream parser, the stanza element and the serializer."""

from dovecote.xml.element import XML_LANG, E, Element, serialize
from dovecote.xml.parser import StreamParser, XMLStreamError

__all__ = ["XML_LANG", "E", "Element", "StreamParser", "XMLStreamError", "serialize"]
