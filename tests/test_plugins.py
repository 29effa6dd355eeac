"""Plugin registry: entry points, MFX_LOAD_PLUGINS gating, broken-plugin isolation, name clashes."""

from __future__ import annotations

import json
import types

import pytest
from click.testing import CliRunner

from medforensics_core.cli import cli
from medforensics_core.errors import UnknownPluginError
from medforensics_core.hookspecs import hookimpl
from medforensics_core.interfaces import Perturbation


def test_builtin_perturbations_come_from_entry_points(fresh_registry):
    registry = fresh_registry.get_registry()
    assert {"jpeg", "blur", "resize", "noise"} <= set(registry.names("perturbation"))
    reg = registry.entries["perturbation"]["jpeg"]
    assert reg.distribution == "medforensics"
    assert reg.plugin == "mfx_perturbations"


def test_mfx_load_plugins_empty_loads_nothing(fresh_registry, monkeypatch):
    monkeypatch.setenv("MFX_LOAD_PLUGINS", "")
    assert fresh_registry.get_registry().names("perturbation") == []


def test_mfx_load_plugins_names_a_distribution(fresh_registry, monkeypatch):
    monkeypatch.setenv("MFX_LOAD_PLUGINS", "medforensics")
    assert "jpeg" in fresh_registry.get_registry().names("perturbation")
    fresh_registry.reset_registry()
    monkeypatch.setenv("MFX_LOAD_PLUGINS", "some-other-dist")
    assert fresh_registry.get_registry().names("perturbation") == []


def test_unknown_name_lists_known_ones_and_suggests(fresh_registry):
    with pytest.raises(UnknownPluginError) as info:
        fresh_registry.get_registry().perturbation("jpg")
    assert "Did you mean 'jpeg'" in str(info.value)
    assert "blur" in str(info.value)


class _Clash(Perturbation):
    name = "jpeg"
    description = "a second jpeg"

    def __call__(self, image, rng):
        return image


def test_broken_clashing_and_misspelled_plugins_are_reported_not_fatal(fresh_registry):
    broken = types.ModuleType("broken_plugin")

    def register_perturbations(register):
        raise RuntimeError("boom")

    broken.register_perturbations = hookimpl(register_perturbations)
    clash = types.ModuleType("clash_plugin")
    clash.register_perturbations = hookimpl(lambda register: register(_Clash))
    typo = types.ModuleType("typo_plugin")
    typo.register_detector = lambda register: None
    for plugin in (broken, clash, typo):
        fresh_registry.register_plugin(plugin)
    try:
        registry = fresh_registry.get_registry()
        reasons = " | ".join(p.reason for p in registry.problems)
        assert "boom" in reasons
        assert "already registered by medforensics" in reasons
        assert "register_detector" in reasons
        assert registry.perturbation("jpeg") is not _Clash  # the first registration wins
        result = CliRunner().invoke(cli, ["plugins", "--json"])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output)
        assert any(p["plugin"] == "broken_plugin" for p in payload["problems"])
        assert any(r["name"] == "blur" for r in payload["registered"])
    finally:
        for plugin in (broken, clash, typo):
            fresh_registry.unregister_plugin(plugin)
