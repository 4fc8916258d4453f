"""XEP-0065 SOCKS5 bytestreams proxy: `socks5.py` (the RFC 1928 handshake, without I/O),
`relay.py` (connections and the relay between two of them: pacing and flow control),
`service.py` (the service at `[proxy65] domain`: disco, streamhost address, activation)."""
