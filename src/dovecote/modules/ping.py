"""XEP-0199: XMPP Ping — answer pings to the server and to accounts (an account answers
its owner and contacts only: the router gives strangers service-unavailable, the answer of
a missing account, RFC 6121 §8.5.1)."""

from dovecote.core.modules import ModuleInfo
from dovecote.xml import ns

MODULE = ModuleInfo(
    name="ping",
    summary="XMPP Ping (XEP-0199) of the server and of accounts",
    features=[ns.PING],
)


def setup(server):  # type: ignore[no-untyped-def]
    @server.events.on(f"iq/host/get/{ns.PING}:ping")
    @server.events.on(f"iq/bare/get/{ns.PING}:ping")
    def pong(event):  # type: ignore[no-untyped-def]
        event.reply()  # XEP-0199 §4.2: an empty result
        return True
