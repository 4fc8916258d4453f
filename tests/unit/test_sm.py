"""XEP-0198 counters: acknowledgements and the 2^32 wrap-around."""

import pytest

from dovecote.stream.sm import MODULO, AckError, StreamManagement
from dovecote.xml.element import Element


def sent(state: StreamManagement, count: int) -> list[Element]:
    stanzas = [Element("message", "jabber:client", {"id": str(i)}) for i in range(count)]
    for stanza in stanzas:
        state.stanza_sent(stanza)
    return stanzas


def test_ack_drops_exactly_the_acknowledged() -> None:
    state = StreamManagement("id", True)
    stanzas = sent(state, 5)
    assert state.acknowledge(2) == 2
    assert list(state.unacked) == stanzas[2:]
    assert state.acknowledge(2) == 0  # repeated: nothing new
    assert state.acknowledge(5) == 3
    assert not state.unacked


def test_ack_beyond_sent_is_an_error() -> None:
    state = StreamManagement("id", True)
    sent(state, 2)
    with pytest.raises(AckError):
        state.acknowledge(3)
    with pytest.raises(AckError):
        state.acknowledge(-1)


def test_counters_wrap_at_2_pow_32() -> None:
    state = StreamManagement("id", True)
    state.sent = MODULO - 2  # as if 2^32 - 2 stanzas had been sent and acknowledged
    stanzas = sent(state, 4)
    assert state.sent == 2
    assert state.acknowledge(MODULO - 1) == 1
    assert state.acknowledge(0) == 1
    assert state.acknowledge(1) == 1
    assert list(state.unacked) == stanzas[3:]
    assert state.acknowledge(2) == 1
    state.handled = MODULO - 1
    state.stanza_handled()
    assert state.handled == 0


def test_ack_due_every_five() -> None:
    state = StreamManagement("id", True)
    sent(state, 4)
    assert not state.ack_due
    sent(state, 1)
    assert state.ack_due
    state.requested_at = state.sent
    assert not state.ack_due
