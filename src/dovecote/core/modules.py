"""Module loader: a module is `dovecote.modules.<name>` with `setup(server)`.

A module may declare FEATURES (disco#info features of the server), ACCOUNT_FEATURES
(disco#info features of each account) and PUBLIC_ACCOUNT_IQS (IQs to an account, as
"{type}/{ns}:{tag}", that anyone may send, not only the owner and contacts), and may add
stream features through the `c2s/features` event.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)

DEFAULT_MODULES = [
    "presence",
    "roster",
    "blocking",
    "offline",
    "vcard",
    "private",
    "register",
    "carbons",
    "mam",
    "caps",
    "pep",
    "csi",
    "disco",
    "ping",
    "version",
    "time",
    "last",
]


class ModuleError(Exception):
    pass


def load_modules(server: Server, names: list[str]) -> dict[str, ModuleType]:
    loaded: dict[str, ModuleType] = {}
    for name in names:
        if name in loaded:
            continue
        try:
            module = importlib.import_module(f"dovecote.modules.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dovecote.modules.{name}":
                raise ModuleError(f"unknown module {name!r}") from None
            raise
        module.setup(server)
        server.features.update(getattr(module, "FEATURES", ()))
        server.account_features.update(getattr(module, "ACCOUNT_FEATURES", ()))
        server.public_account_iqs.update(getattr(module, "PUBLIC_ACCOUNT_IQS", ()))
        loaded[name] = module
        log.debug("loaded module %s", name)
    return loaded
