"""Module metadata, dependencies and the generated module reference (core/modules.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from dovecote.config import Config, ConfigError, config_from_dict
from dovecote.core import modules
from dovecote.core.modules import (
    DEFAULT_MODULES,
    ModuleError,
    ModuleInfo,
    available_modules,
    module_info,
    module_names,
    options,
)

ROOT = Path(__file__).resolve().parents[2]


def gen_module_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_module_docs", ROOT / "scripts" / "gen_module_docs.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_every_module_declares_its_metadata() -> None:
    assert set(DEFAULT_MODULES) <= set(available_modules())
    for name in available_modules():
        info = module_info(name)
        assert info.name == name and info.summary
        for dependency in info.depends:
            assert dependency in available_modules(), (name, dependency)
        if info.config is not None:
            # The section is a field of Config, and every key says what it does.
            assert info.config in Config.model_fields
            for option in options(info.config):
                assert option.doc, f"[{info.config}] {option.name} has no #: comment"


def test_options_come_from_the_config_sections() -> None:
    found = {o.name: o for o in options("mam")}
    assert found["max_page_size"].type == "int (>= 1)"
    assert found["max_page_size"].default == "250"
    assert found["default"].default == '"always"'
    assert found["retention_days"].doc == "Days messages are kept; 0 keeps them forever."


def test_dependencies_come_first() -> None:
    names = module_names([], [])
    assert sorted(names) == sorted(DEFAULT_MODULES)
    for name in names:
        for dependency in module_info(name).depends:
            assert names.index(dependency) < names.index(name), (dependency, name)


def test_a_disabled_dependency_is_an_error() -> None:
    with pytest.raises(ModuleError, match="module 'pep' needs 'caps', which is disabled"):
        module_names([], ["caps"])
    with pytest.raises(ModuleError, match="module 'offline' needs 'presence', which is disabled"):
        module_names([], ["presence", "roster"])
    # Leaving out the modules that need it too is fine.
    names = module_names([], ["caps", "pep"])
    assert "caps" not in names and "pep" not in names


def test_dependencies_not_listed_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modules, "DEFAULT_MODULES", ["ping"])
    assert module_names(["pep"], []) == ["ping", "presence", "caps", "pep"]


def test_a_dependency_cycle_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    infos = {
        "ping": ModuleInfo("ping", "a", depends=["time"]),
        "time": ModuleInfo("time", "b", depends=["ping"]),
    }
    monkeypatch.setattr(modules, "module_info", infos.__getitem__)
    monkeypatch.setattr(modules, "DEFAULT_MODULES", ["ping"])
    with pytest.raises(ModuleError, match="cycle: ping -> time -> ping"):
        module_names([], [])


@pytest.mark.parametrize("key", ["enabled", "disabled"])
def test_unknown_module_names_are_config_errors(key: str) -> None:
    with pytest.raises(ConfigError, match=f"'modules.{key}': unknown module 'mma'"):
        config_from_dict({"modules": {key: ["mma"]}})
    with pytest.raises(ModuleError, match="unknown module 'mma'"):
        module_names(["mma"] if key == "enabled" else [], ["mma"] if key == "disabled" else [])


def test_generated_module_reference_is_up_to_date() -> None:
    script = gen_module_docs()
    current = (ROOT / "docs" / "modules.md").read_text(encoding="utf-8")
    assert script.updated(current) == current, "run scripts/gen_module_docs.py"
    # It is the reference: each module, its features and its config keys.
    assert "### `mam`" in current
    assert "| `max_page_size` | int (>= 1) | `250` |" in current
    assert "| depends on | `presence`, `caps` |" in current
