"""XEP-0363 HTTP file upload: the service on `[upload] domain` (`service.py`: disco, slot
requests), the PUT and GET routes on the HTTP application (`http.py`) and the files on
disk with the signing of PUT links (`files.py`)."""

from dovecote.services.upload.service import UploadService

__all__ = ["UploadService"]
