"""Plugin registry: entry points, MFX_LOAD_PLUGINS gating, broken-plugin isolation, name clashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
        assert "owned by medforensics" in reasons
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


# --------------------------------------------------------------------------- names are owned, hooks are isolated




def _evil_detector_plugin(distribution: str = "evil-dist"):
    from medforensics_core.interfaces import Detector

    fitted = []

    class EvilDski(Detector):
        name = "dski"
        description = "not the real DSKI"

        def fit(self, train, val=None, ctx=None):
            fitted.append(True)
            return self

        def predict_proba(self, batch):
            raise AssertionError("the impostor must never run")

    module = types.ModuleType("evil_plugin")
    module.__mfx_distribution__ = distribution
    module.register_detectors = hookimpl(lambda register: register(EvilDski))
    return module, EvilDski


def test_runtime_plugin_claiming_dski_loses_and_is_listed_as_refused(fresh_registry):
    module, evil = _evil_detector_plugin()
    fresh_registry.register_plugin(module)
    try:
        registry = fresh_registry.get_registry()
        assert registry.detector("dski") is not evil
        assert registry.entries["detector"]["dski"].distribution == "medforensics"
        assert registry.origin("detector", "dski")["version"]  # reports record the owner and its version
        result = CliRunner().invoke(cli, ["plugins"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        refused_line = next(line for line in result.output.splitlines() if "evil-dist" in line and "dski" in line)
        assert "medforensics" in refused_line
        payload = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
        assert {"kind": "detector", "name": "dski", "distribution": "evil-dist", "plugin": "evil_plugin",
                "owner": "medforensics"} in payload["refused"]
    finally:
        fresh_registry.unregister_plugin(module)


class _FakeDist:
    def __init__(self, name: str):
        self.name, self.version = name, "6.6.6"


class _FakeEntryPoint:
    def __init__(self, name: str, module, dist: str):
        self.name, self._module, self.dist = name, module, _FakeDist(dist)

    def load(self):
        if isinstance(self._module, BaseException):
            raise self._module
        return self._module


def _entry_points_with(monkeypatch, *fakes):
    """Make the fake entry points come *before* mfx's own ones, as on the installs the issue describes."""
    import importlib.metadata

    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        return [*fakes, *real(**kwargs)]

    monkeypatch.setattr("medforensics_core.plugins.importlib.metadata.entry_points", entry_points)


def test_builtins_own_their_names_whatever_the_entry_point_order(fresh_registry, monkeypatch):
    module, evil = _evil_detector_plugin()
    _entry_points_with(monkeypatch, _FakeEntryPoint("aaa_evil", module, "aaa-evil"))
    registry = fresh_registry.get_registry()
    assert registry.detector("dski") is not evil
    assert [(r.name, r.distribution, r.owner) for r in registry.refused] == [("dski", "aaa-evil", "medforensics")]


def test_sys_exit_at_import_or_in_a_hook_and_malformed_classes_are_plugin_problems(fresh_registry, monkeypatch):
    class NoPresets(Perturbation):
        name = "nopresets"
        presets = None

        def __call__(self, image, rng):
            return image

    class BadConfig(Perturbation):
        name = "badconfig"
        config_class = dict  # not a dataclass

        def __call__(self, image, rng):
            return image

    exits = types.ModuleType("exits_in_hook")

    def register_perturbations(register):
        raise SystemExit(3)

    exits.register_perturbations = hookimpl(register_perturbations)
    malformed = types.ModuleType("malformed_plugin")
    malformed.register_perturbations = hookimpl(lambda register: [register(NoPresets), register(BadConfig)])
    _entry_points_with(monkeypatch, _FakeEntryPoint("exits_at_import", SystemExit(2), "exit-dist"),
                       _FakeEntryPoint("exits_in_hook", exits, "exit-hook-dist"),
                       _FakeEntryPoint("malformed", malformed, "malformed-dist"))
    registry = fresh_registry.get_registry()
    reasons: dict[str, str] = {}
    for p in registry.problems:
        reasons[p.plugin] = reasons.get(p.plugin, "") + p.reason + " | "
    assert "SystemExit" in reasons["exits_at_import"]
    assert "SystemExit" in reasons["exits_in_hook"]
    assert "NoPresets.presets" in reasons["malformed"] and "BadConfig.config_class" in reasons["malformed"]
    assert {"jpeg", "blur"} <= set(registry.names("perturbation"))
    assert "nopresets" not in registry.names("perturbation")
    for args in (["--help"], ["plugins"], ["plugins", "--json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    text = CliRunner().invoke(cli, ["plugins", "--json"]).output
    problems = {p["plugin"] for p in json.loads(text)["problems"]}
    assert {"exits_at_import", "exits_in_hook", "malformed"} <= problems


@pytest.fixture
def fresh_commands():
    """Forget the plugin commands added to the ``mfx`` group, before and after the test."""
    saved = dict(cli.commands)
    cli._plugins_added = False
    yield
    cli.commands.clear()
    cli.commands.update(saved)
    cli._plugins_added = False


def test_register_commands_failure_costs_only_that_plugin(fresh_registry, fresh_commands):
    import click

    good = types.ModuleType("good_commands")

    def good_register(cli):
        @cli.command("hello-plugin")
        def hello():
            """A plugin command that works."""
            click.echo("hello")

    good.register_commands = hookimpl(good_register)
    broken = types.ModuleType("broken_commands")

    def broken_register(cli):
        @cli.command("half-added")
        def half():
            """Added before the plugin raised: removed again."""

        @cli.command("compare")
        def hijack():
            """Would replace a built-in command."""

        raise RuntimeError("command hook exploded")

    broken.register_commands = hookimpl(broken_register)
    hijacker = types.ModuleType("hijack_commands")

    def hijack_register(cli):
        @cli.command("predict")
        def predict():
            """Would replace a built-in command."""

    hijacker.register_commands = hookimpl(hijack_register)
    for plugin in (broken, good, hijacker):
        fresh_registry.register_plugin(plugin)
    try:
        help_text = CliRunner().invoke(cli, ["--help"]).output
        assert "hello-plugin" in help_text
        assert "half-added" not in help_text
        assert "Train (or load)" in help_text  # the built-in compare is still there
        assert CliRunner().invoke(cli, ["hello-plugin"]).output.strip() == "hello"
        cli._plugins_added = False
        listing = CliRunner().invoke(cli, ["plugins"], env={"COLUMNS": "200"})
        assert listing.exit_code == 0, listing.output
        assert "broken_commands" in listing.output and "command hook exploded" in listing.output
        assert "hijack_commands" in listing.output and "'predict' already exists" in listing.output
    finally:
        for plugin in (broken, good, hijacker):
            fresh_registry.unregister_plugin(plugin)



HEAVY_AT_FIRST_USE = ("torchvision", "sklearn", "pandas", "pydicom", "nibabel")
"""Libraries a detector or reader needs only once it runs; importing them costs seconds (``medforensics_core.lazy``)."""


@pytest.mark.parametrize("args", [["--help"], ["plugins"]])
def test_listing_commands_and_plugins_imports_no_library_it_does_not_use(args):
    """``mfx --help`` and ``mfx plugins`` load every built-in plugin, yet import none of the heavy libraries
    those plugins use only to train, score or read images: the listing stays quick."""
    probe = ("import sys\nfrom click.testing import CliRunner\nfrom medforensics_core.cli import cli\n"
             f"result = CliRunner().invoke(cli, {args!r})\nassert result.exit_code == 0, result.output\n"
             "print(result.output)\n"
             f"print('IMPORTED', sorted(m for m in {HEAVY_AT_FIRST_USE!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPORTED []" in result.stdout
    if args == ["plugins"]:  # every built-in still registered, so the plugins were really loaded
        assert all(name in result.stdout for name in ("dski", "cnnspot", "npr", "univfd", "fatformer", "rine"))


def test_a_lazy_module_imports_on_first_use_and_then_is_the_module():
    from medforensics_core.lazy import lazy_module

    sys.modules.pop("colorsys", None)
    stand_in = lazy_module("colorsys")
    assert "colorsys" not in sys.modules and "not imported yet" in repr(stand_in)
    assert stand_in.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert stand_in.rgb_to_hsv is sys.modules["colorsys"].rgb_to_hsv
    assert "not" not in repr(stand_in)
    import copy
    import pickle

    for again in (pickle.loads(pickle.dumps(stand_in)), copy.deepcopy(stand_in)):  # e.g. in a DataLoader worker
        assert again.rgb_to_hsv is stand_in.rgb_to_hsv


def test_a_lazy_module_that_cannot_import_is_one_error_naming_it():
    from medforensics_core.errors import MfxError
    from medforensics_core.lazy import lazy_module

    missing = lazy_module("mfx_no_such_library.transforms")
    with pytest.raises(MfxError, match="mfx_no_such_library.transforms failed to import .*torch"):
        _ = missing.Compose
