"""TCP transport for external components (XEP-0114, jabber:component:accept): the shared
`XMLStreamProtocol` with a `ComponentStream`. XEP-0114 has no TLS: listen on a loopback or
private address."""

from __future__ import annotations

from dovecote.stream.component import ComponentStream
from dovecote.transport.tcp import XMLStreamProtocol
from dovecote.xml import ns


class ComponentTCPProtocol(XMLStreamProtocol):
    # XEP-0114 §3: the server's header is in the component namespace.
    content_ns = ns.COMPONENT
    max_write_buffer = 32 * 1024 * 1024

    def make_stream(self) -> ComponentStream:
        return ComponentStream(self.server, self)
