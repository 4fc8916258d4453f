"""XEP-0199: XMPP Ping — answer pings to the server and to accounts."""

from dovecote.xml import ns

FEATURES = [ns.PING]


def setup(server):  # type: ignore[no-untyped-def]
    @server.events.on(f"iq/host/get/{ns.PING}:ping")
    @server.events.on(f"iq/bare/get/{ns.PING}:ping")
    def pong(event):  # type: ignore[no-untyped-def]
        event.reply()  # XEP-0199 §4.2: an empty result
        return True
