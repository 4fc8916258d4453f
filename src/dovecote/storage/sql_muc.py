"""The SQL implementation of `MucStore`, with its tables (on the shared `metadata`).

Rooms are keyed by the service's domain and the room's localpart; affiliations belong to
their room (ON DELETE CASCADE, and deleted explicitly too where foreign keys are not
enforced).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKeyConstraint,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)

from dovecote.storage.muc import MucStore, StoredAffiliation, StoredRoom
from dovecote.storage.schema import BARE_JID, JID_PART, metadata

if TYPE_CHECKING:
    from dovecote.storage.sql import SQLStorage

muc_rooms = Table(
    "muc_rooms",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    # JSON object: the room's configuration (services/muc/config.py RoomConfig).
    Column("config", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("subject_by", String(JID_PART), nullable=False),
    # XEP-0421: the secret occupant ids are derived from.
    Column("secret", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

muc_affiliations = Table(
    "muc_affiliations",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("jid", String(BARE_JID), primary_key=True),
    Column("affiliation", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("nick", String(JID_PART), nullable=False),
    ForeignKeyConstraint(
        ["domain", "local"], ["muc_rooms.domain", "muc_rooms.local"], ondelete="CASCADE"
    ),
)


class SQLMucStore(MucStore):
    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage

    async def load_room(self, domain: str, local: str) -> StoredRoom | None:
        async with self._storage.read() as conn:
            row = (
                await conn.execute(
                    select(muc_rooms).where(
                        muc_rooms.c.domain == domain, muc_rooms.c.local == local
                    )
                )
            ).first()
            if row is None:
                return None
            affiliations = (
                await conn.execute(
                    select(muc_affiliations).where(
                        muc_affiliations.c.domain == domain, muc_affiliations.c.local == local
                    )
                )
            ).all()
        return StoredRoom(
            local,
            json.loads(row.config),
            row.subject,
            row.subject_by,
            row.secret,
            [StoredAffiliation(a.jid, a.affiliation, a.reason, a.nick) for a in affiliations],
        )

    async def save_room(self, domain: str, room: StoredRoom) -> None:
        values = {
            "config": json.dumps(room.config, sort_keys=True),
            "subject": room.subject,
            "subject_by": room.subject_by,
            "secret": room.secret,
        }
        where = (muc_rooms.c.domain == domain, muc_rooms.c.local == room.local)
        async with self._storage.begin(f"room {room.local}@{domain}") as conn:
            changed = await conn.execute(update(muc_rooms).where(*where).values(**values))
            if changed.rowcount == 0:
                await conn.execute(
                    insert(muc_rooms).values(
                        domain=domain, local=room.local, created_at=datetime.now(UTC), **values
                    )
                )

    async def replace_affiliations(
        self, domain: str, local: str, affiliations: list[StoredAffiliation]
    ) -> None:
        async with self._storage.begin(f"affiliations of {local}@{domain}") as conn:
            await conn.execute(
                delete(muc_affiliations).where(
                    muc_affiliations.c.domain == domain, muc_affiliations.c.local == local
                )
            )
            rows = [
                {
                    "domain": domain,
                    "local": local,
                    "jid": a.jid,
                    "affiliation": a.affiliation,
                    "reason": a.reason,
                    "nick": a.nick,
                }
                for a in affiliations
                if a.affiliation != "none"
            ]
            if rows:
                await conn.execute(insert(muc_affiliations), rows)

    async def set_affiliation(self, domain: str, local: str, item: StoredAffiliation) -> None:
        where = (
            muc_affiliations.c.domain == domain,
            muc_affiliations.c.local == local,
            muc_affiliations.c.jid == item.jid,
        )
        async with self._storage.begin(f"affiliation in {local}@{domain}") as conn:
            await conn.execute(delete(muc_affiliations).where(*where))
            if item.affiliation != "none":
                await conn.execute(
                    insert(muc_affiliations).values(
                        domain=domain,
                        local=local,
                        jid=item.jid,
                        affiliation=item.affiliation,
                        reason=item.reason,
                        nick=item.nick,
                    )
                )

    async def delete_room(self, domain: str, local: str) -> None:
        async with self._storage.begin(f"deletion of room {local}@{domain}") as conn:
            await conn.execute(
                delete(muc_affiliations).where(
                    muc_affiliations.c.domain == domain, muc_affiliations.c.local == local
                )
            )
            await conn.execute(
                delete(muc_rooms).where(muc_rooms.c.domain == domain, muc_rooms.c.local == local)
            )

    async def list_rooms(self, domain: str) -> list[StoredRoom]:
        async with self._storage.read() as conn:
            rows = (
                await conn.execute(
                    select(muc_rooms)
                    .where(muc_rooms.c.domain == domain)
                    .order_by(muc_rooms.c.local)
                )
            ).all()
        return [
            StoredRoom(r.local, json.loads(r.config), r.subject, r.subject_by, r.secret)
            for r in rows
        ]

    async def rooms_owned(self, domain: str, jid: str) -> int:
        async with self._storage.read() as conn:
            return (
                await conn.execute(
                    select(func.count()).where(
                        muc_affiliations.c.domain == domain,
                        muc_affiliations.c.jid == jid,
                        muc_affiliations.c.affiliation == "owner",
                    )
                )
            ).scalar_one()
