"""The uploaded files on disk, and the signatures of PUT links.

Layout under `[upload] storage_dir`: a stored file is `<id[:2]>/<id>` (the slot's random
id; its name and type are in storage, never taken from the file system), an upload in
progress `tmp/<id>.part`, renamed into place once complete, so that a file is either
whole or absent. `tmp/` is emptied at start: no PUT survives a restart.

A PUT link carries its expiry and an HMAC-SHA256 over the slot's id, file name, size,
content type and expiry (XEP-0363 §9.1: "headers may be signed"), keyed by a secret kept
in `data_dir/upload.secret` (made on first start, mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import shutil
from pathlib import Path

#: Slot ids: 32 URL-safe characters from 24 random bytes (XEP-0363 §9.1: "long randomized
#: parts in their URLs").
ID_BYTES = 24
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}")
SECRET_BYTES = 32


def new_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def load_secret(path: Path) -> bytes:
    """The signing key at `path`, made on first use (readable by the server only)."""
    try:
        secret = path.read_bytes()
        if len(secret) >= SECRET_BYTES:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(SECRET_BYTES)
    temp = path.with_name(path.name + ".new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    return secret


class FileStore:
    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self._secret = secret

    def prepare(self) -> None:
        """Create the directories; drop what interrupted uploads left (at start)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(exist_ok=True)

    def path(self, id: str) -> Path:
        return self.root / id[:2] / id

    def temp_path(self, id: str) -> Path:
        return self.tmp / f"{id}.part"

    def remove(self, id: str) -> None:
        for path in (self.path(id), self.temp_path(id)):
            path.unlink(missing_ok=True)

    # ---- signatures -----------------------------------------------------------------------
    def sign(self, id: str, filename: str, size: int, content_type: str, expires: int) -> str:
        message = "\n".join((id, filename, str(size), content_type, str(expires)))
        digest = hmac.new(self._secret, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def verify(
        self, signature: str, id: str, filename: str, size: int, content_type: str, expires: int
    ) -> bool:
        expected = self.sign(id, filename, size, content_type, expires)
        return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
