"""Storage: interfaces per concern (`base`) and one SQL implementation (`sql`).

Typical use::

    storage = await open_storage(config.storage_url)
    await storage.accounts.create("alice", "example.org", derive_credentials("secret"))
    await storage.close()
"""

from dovecote.storage.base import AccountExists, AccountStore, KVStore, Storage, StorageError
from dovecote.storage.credentials import (
    HASHES,
    ScramCredentials,
    derive_credentials,
    verify_password,
)
from dovecote.storage.sql import SQLStorage, open_storage

__all__ = [
    "HASHES",
    "AccountExists",
    "AccountStore",
    "KVStore",
    "SQLStorage",
    "ScramCredentials",
    "Storage",
    "StorageError",
    "derive_credentials",
    "open_storage",
    "verify_password",
]
