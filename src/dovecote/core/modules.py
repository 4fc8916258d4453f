"""Module loader and module metadata.

A module is `dovecote.modules.<name>` with a `setup(server)` function and one
`MODULE = ModuleInfo(...)` object: its name, the disco#info features it adds to the server
and to each account, the IQs to an account that anyone may send (PUBLIC_ACCOUNT_IQS, as
"{type}/{ns}:{tag}"), the modules it needs, and the `Config` section holding its options.
The reference in docs/modules.md is generated from these (scripts/gen_module_docs.py).

Dependencies: a module's dependencies are loaded before it, also when they are not in the
list (they are loaded automatically), unless `[modules] disabled` names them: then the
server refuses to start, naming both (`module 'pep' needs 'caps', which is disabled`).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import pkgutil
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)

PACKAGE = "dovecote.modules"

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
    # Serves `[pubsub] domain` when set, nothing otherwise.
    "pubsub",
    "csi",
    "disco",
    "ping",
    "version",
    "time",
    "last",
    "muc",
    # Serves `[proxy65] domain` when set, nothing otherwise.
    "proxy65",
    # Serves `[upload] domain` when set, nothing otherwise.
    "upload",
    # Act only for `[components]` granted privileges or delegations.
    "privilege",
    "delegation",
]


class ModuleError(Exception):
    pass


@dataclass(frozen=True)
class ModuleInfo:
    """What a module is, in one place (ejabberd's mod_options/mod_doc, Prosody's module
    metadata): read by the loader, disco#info, the config reference and `check-config`."""

    #: The name `[modules] enabled/disabled` use: the file name in dovecote/modules/.
    name: str
    #: One line for the reference: what the module implements (RFCs, XEPs).
    summary: str
    #: disco#info features of the server.
    features: Sequence[str] = ()
    #: disco#info features of every account.
    account_features: Sequence[str] = ()
    #: IQs to an account anyone may send ("{type}/{ns}:{tag}"); the router answers other
    #: strangers' IQs service-unavailable (RFC 6121 §8.5.1).
    public_account_iqs: Sequence[str] = ()
    #: Modules that must be loaded before this one.
    depends: Sequence[str] = ()
    #: The `Config` section (a TOML table) holding this module's options, if any.
    config: str | None = None


@dataclass(frozen=True)
class OptionInfo:
    """One configuration key of a section: `[section] name`, for the reference."""

    section: str
    name: str
    type: str
    default: str
    doc: str


@cache
def available_modules() -> tuple[str, ...]:
    """The names of the modules shipped in dovecote/modules/ (without importing them)."""
    package = importlib.import_module(PACKAGE)
    return tuple(
        sorted(
            info.name
            for info in pkgutil.iter_modules(package.__path__)
            if not info.name.startswith("_")
        )
    )


def import_module(name: str) -> ModuleType:
    if name not in available_modules():
        raise ModuleError(f"unknown module {name!r}")
    return importlib.import_module(f"{PACKAGE}.{name}")


def module_info(name: str) -> ModuleInfo:
    """The metadata of module `name` (imports it; runs no setup)."""
    info = getattr(import_module(name), "MODULE", None)
    if not isinstance(info, ModuleInfo):
        raise ModuleError(f"module {name!r} declares no MODULE = ModuleInfo(...)")
    if info.name != name:
        raise ModuleError(f"module {name!r} declares the name {info.name!r}")
    return info


def module_names(enabled: Iterable[str], disabled: Iterable[str]) -> list[str]:
    """The modules to load, dependencies first: the defaults without `disabled`, then
    `enabled`, each preceded by what it depends on. A dependency that is disabled, or that
    does not exist, is a ModuleError naming both modules; so is a name in either list that
    is no module."""
    disabled = list(disabled)
    for name in [*enabled, *disabled]:
        if name not in available_modules():
            raise ModuleError(f"unknown module {name!r}")
    wanted = [m for m in DEFAULT_MODULES if m not in disabled]
    wanted += [m for m in enabled if m not in wanted]
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str, needed_by: str | None) -> None:
        if name in order:
            return
        if needed_by is not None:
            if name not in available_modules():
                raise ModuleError(f"module {needed_by!r} needs {name!r}, which does not exist")
            if name in disabled:
                raise ModuleError(f"module {needed_by!r} needs {name!r}, which is disabled")
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise ModuleError(f"modules depend on each other in a cycle: {cycle}")
        visiting.append(name)
        for dependency in module_info(name).depends:
            visit(dependency, name)
        visiting.pop()
        order.append(name)

    for name in wanted:
        visit(name, None)
    return order


def load_modules(server: Server, names: list[str]) -> dict[str, ModuleType]:
    """Set up the modules `names` (as `module_names` orders them) on `server`."""
    loaded: dict[str, ModuleType] = {}
    for name in names:
        if name in loaded:
            continue
        info = module_info(name)
        for dependency in info.depends:
            if dependency not in loaded:
                raise ModuleError(f"module {name!r} needs {dependency!r}, which is not loaded")
        module = import_module(name)
        module.setup(server)
        server.features.update(info.features)
        server.account_features.update(info.account_features)
        server.public_account_iqs.update(info.public_account_iqs)
        loaded[name] = module
        log.debug("loaded module %s", name)
    return loaded


# ---- option metadata, from the pydantic sections of dovecote.config ------------------------
def section_model(section: str) -> type[BaseModel]:
    from dovecote.config import Config

    field_info = Config.model_fields.get(section)
    model = field_info.annotation if field_info is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ModuleError(f"no config section {section!r}")
    return model


def options(section: str) -> list[OptionInfo]:
    """The keys of config section `section`: type, default, and the `#:` comment above
    each field in dovecote/config.py (the one place they are written)."""
    model = section_model(section)
    comments = _field_comments(model)
    found = []
    for name, field_info in model.model_fields.items():
        default = field_info.get_default(call_default_factory=True)
        found.append(
            OptionInfo(
                section,
                name,
                _type_text(field_info.annotation, field_info.metadata),
                _toml(default),
                comments.get(name, ""),
            )
        )
    return found


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    lines, _start = inspect.getsourcelines(model)
    source = textwrap.dedent("".join(lines))
    source_lines = source.splitlines()
    tree = ast.parse(source)
    comments: dict[str, str] = {}
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text: list[str] = []
        row = node.lineno - 2  # the line above, 0-based
        while row >= 0 and source_lines[row].strip().startswith("#:"):
            text.insert(0, source_lines[row].strip()[2:].strip())
            row -= 1
        comments[node.target.id] = " ".join(text)
    return comments


def _type_text(annotation: Any, metadata: Sequence[Any]) -> str:
    name = getattr(annotation, "__name__", None)
    args = getattr(annotation, "__args__", None)
    if args and name:
        text = f"{name}[{', '.join(_type_text(a, ()) for a in args)}]"
    else:
        text = name or str(annotation).replace("typing.", "")
    bounds = []
    for constraint in metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(constraint, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "(none)"
    if isinstance(value, list | tuple):
        return f"[{', '.join(_toml(v) for v in value)}]"
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    return repr(value)
