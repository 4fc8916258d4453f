"""XEP-0363 HTTP File Upload: the upload service at `[upload] domain`.

Nothing is served until `[upload] domain` is set. The service (`services/upload/`)
registers itself as the component of its domain, so the server's disco#items lists it
(§3: "a user's server SHOULD include any known entities that provide such services"),
and adds its PUT/GET routes to the HTTP application (`[listen] http` / `https`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleError, ModuleInfo
from dovecote.services.upload.http import UploadHttp
from dovecote.services.upload.service import UploadService

if TYPE_CHECKING:
    from dovecote.server import Server

MODULE = ModuleInfo(
    name="upload",
    summary="HTTP file upload (XEP-0363) at [upload] domain: signed single-use PUT links, "
    "quotas, expiry, range requests",
    config="upload",
)


def setup(server: Server) -> None:
    config = server.config
    if config.upload.domain is None:
        return
    if not (config.listen.http or config.listen.https):
        raise ModuleError("[upload] domain is set but neither [listen] http nor https is")
    if config.upload.domain in server.hosts:
        raise ModuleError(f"[upload] domain {config.upload.domain!r} is a domain of accounts")
    try:
        service = UploadService(server, config.upload)
    except OSError as exc:
        raise ModuleError(f"cannot use the upload storage: {exc}") from None
    server.components[service.domain] = service

    def add_routes(http: Any) -> None:
        UploadHttp(service, http).add_routes()

    server.http_routes.append(add_routes)
    # The server calls service.start() (the expiry sweeps) once it listens.
