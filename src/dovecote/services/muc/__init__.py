"""XEP-0045 Multi-User Chat: rooms (`room.py`), their configuration (`config.py`) and
the service that holds them on its own domain (`service.py`). Nothing here holds a socket,
a stream or a session: a room receives stanza events and sends through its `RoomHost`."""
