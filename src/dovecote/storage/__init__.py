"""Storage: interfaces per concern (`base`) and one SQL implementation (`sql`).

Typical use::

    storage = await open_storage(config.storage_url)
    await storage.accounts.create("alice", "example.org", derive_credentials("secret"))
    await storage.close()
"""

from typing import TYPE_CHECKING

from dovecote.storage.base import (
    AccountExists,
    AccountStore,
    KVStore,
    Storage,
    StorageBusy,
    StorageError,
    StorageFull,
    StorageUnavailable,
)
from dovecote.storage.credentials import (
    HASHES,
    ScramCredentials,
    derive_credentials,
    verify_password,
)

if TYPE_CHECKING:
    from dovecote.storage.sql import SQLStorage, open_storage


def __getattr__(name: str) -> object:
    # The SQL implementation loads SQLAlchemy: only when asked for (the CLI's --help and
    # check-config stay quick).
    if name in ("SQLStorage", "open_storage"):
        from dovecote.storage import sql

        return getattr(sql, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HASHES",
    "AccountExists",
    "AccountStore",
    "KVStore",
    "SQLStorage",
    "ScramCredentials",
    "Storage",
    "StorageBusy",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "derive_credentials",
    "open_storage",
    "verify_password",
]
