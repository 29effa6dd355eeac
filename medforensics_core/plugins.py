"""Plugin manager and registry.

Plugins are Python distributions that declare an entry point in the ``mfx``
group; mfx's own detectors are found exactly the same way. ``MFX_LOAD_PLUGINS``
restricts loading to a comma-separated list of distribution names (an empty
string loads none). A plugin that fails to import, implements a hook that does
not exist, registers a malformed class, or registers a name that is already
taken is recorded as a :class:`PluginProblem` (shown by ``mfx plugins``) and the
others keep working. ``SystemExit`` and other ``BaseException`` raised by a
plugin count as plugin problems too (only Ctrl-C goes through).

Names are owned: the distribution that ships ``medforensics_core`` registers
first, whatever order the entry points come in, so a third-party plugin can
never take over ``dski`` or ``jpeg``; its claim is *refused* and listed with
both distributions. Among third-party plugins the first in distribution-name
order keeps a name (deterministic across installs), runtime plugins come last.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.metadata
import logging
import os
import threading
from typing import Any, Iterable, Mapping

import pluggy

from . import hookspecs
from .errors import UnknownPluginError
from .interfaces import (PLUGIN_KINDS, Detector, Generator, NoiseExtractor, Perturbation, Plugin,
                         Retriever)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mfx"
LOAD_ENV = "MFX_LOAD_PLUGINS"

KIND_BASES: dict[str, type] = {
    "detector": Detector,
    "noise_extractor": NoiseExtractor,
    "retriever": Retriever,
    "generator": Generator,
    "perturbation": Perturbation,
}
KIND_HOOKS = {
    "detector": "register_detectors",
    "noise_extractor": "register_noise_extractors",
    "retriever": "register_retrievers",
    "generator": "register_generators",
    "perturbation": "register_perturbations",
}


@dataclasses.dataclass(frozen=True)
class Registration:
    """One registered class and the distribution that registered it."""

    kind: str
    name: str
    cls: type
    distribution: str
    plugin: str

    @property
    def description(self) -> str:
        return self.cls.description


@dataclasses.dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be (fully) loaded, with the reason."""

    plugin: str
    distribution: str
    reason: str


@dataclasses.dataclass(frozen=True)
class RefusedClaim:
    """A registration refused because another distribution already owns the name."""

    kind: str
    name: str
    distribution: str
    plugin: str
    owner: str


@dataclasses.dataclass
class LoadedPlugin:
    name: str
    distribution: str
    version: str
    hooks: list[str]


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self.entries: dict[str, dict[str, Registration]] = {kind: {} for kind in PLUGIN_KINDS}
        self.problems: list[PluginProblem] = []
        self.plugins: list[LoadedPlugin] = []
        self.refused: list[RefusedClaim] = []

    # -- lookup
    def get(self, kind: str, name: str) -> type:
        """The class registered as ``name``; unknown names list the known ones and a close match."""
        entries = self.entries[kind]
        if name in entries:
            return entries[name].cls
        known = sorted(entries)
        label = kind.replace("_", " ")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) if known else "(none registered)"
        raise UnknownPluginError(f"unknown {label} {name!r}.{hint} Registered: {listing}")

    def detector(self, name: str) -> type[Detector]:
        return self.get("detector", name)

    def noise_extractor(self, name: str) -> type[NoiseExtractor]:
        return self.get("noise_extractor", name)

    def retriever(self, name: str) -> type[Retriever]:
        return self.get("retriever", name)

    def generator(self, name: str) -> type[Generator]:
        return self.get("generator", name)

    def perturbation(self, name: str) -> type[Perturbation]:
        return self.get("perturbation", name)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all(self) -> Iterable[Registration]:
        for kind in PLUGIN_KINDS:
            yield from sorted(self.entries[kind].values(), key=lambda r: r.name)

    # -- registration
    def _register(self, kind: str, cls: type, plugin: str, distribution: str) -> None:
        base = KIND_BASES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{cls!r} is not a {base.__name__} subclass")
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise TypeError(f"{cls.__name__} has no valid 'name'")
        _check_class(cls)
        existing = self.entries[kind].get(name)
        if existing is not None and existing.cls is not cls:
            self.refused.append(RefusedClaim(kind, name, distribution, plugin, existing.distribution))
            self.problems.append(PluginProblem(
                plugin, distribution,
                f"{kind.replace('_', ' ')} name {name!r} is owned by {existing.distribution}; "
                f"the claim by {distribution} was refused"))
            return
        self.entries[kind][name] = Registration(kind, name, cls, distribution, plugin)

    def version_of(self, distribution: str) -> str:
        """The installed version of a distribution that registered something ("" when unknown)."""
        for loaded in self.plugins:
            if loaded.distribution == distribution and loaded.version:
                return loaded.version
        return ""

    def origin(self, kind: str, name: str) -> dict[str, str]:
        """Which distribution (and version) a registered name comes from: reports record it."""
        reg = self.entries[kind].get(name)
        if reg is None:
            return {"distribution": "", "version": ""}
        return {"distribution": reg.distribution, "version": self.version_of(reg.distribution)}

    def collect(self) -> None:
        """Call every registration hook, one plugin at a time, isolating failures.

        Built-in plugins go first so they own their names; see the module docstring.
        """
        for plugin_name, plugin in _ordered_plugins(self.manager):
            distribution = _distribution_of(self.manager, plugin)
            for kind, hook_name in KIND_HOOKS.items():
                impl = getattr(plugin, hook_name, None)
                if impl is None:
                    continue

                def register(cls: type, _kind: str = kind, _p: str = plugin_name, _d: str = distribution) -> None:
                    try:
                        self._register(_kind, cls, _p, _d)
                    except (TypeError, ValueError) as exc:  # one malformed class does not cost the plugin its others
                        self.problems.append(PluginProblem(_p, _d, f"{hook_name}: {exc}"))

                try:
                    impl(register=register)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit included: a broken plugin must not break the others
                    log.warning("plugin %s (%s) failed in %s: %r", plugin_name, distribution, hook_name, exc)
                    self.problems.append(PluginProblem(plugin_name, distribution, f"{hook_name} raised {exc!r}"))

    def add_commands(self, cli: Any) -> None:
        """Call every plugin's ``register_commands`` on its own: a failure costs only that plugin its commands.

        A plugin that raises half-way has the commands it added removed again, and a
        plugin command may not replace a built-in one (or an earlier plugin's).
        """
        for plugin_name, plugin in _ordered_plugins(self.manager):
            impl = getattr(plugin, "register_commands", None)
            if impl is None:
                continue
            distribution = _distribution_of(self.manager, plugin)
            before = dict(cli.commands)
            try:
                impl(cli=cli)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit included
                log.warning("plugin %s (%s) failed in register_commands: %r", plugin_name, distribution, exc)
                cli.commands.clear()
                cli.commands.update(before)
                self.problems.append(PluginProblem(plugin_name, distribution, f"register_commands raised {exc!r}"))
                continue
            for name, command in before.items():
                if cli.commands.get(name) is not command:
                    cli.commands[name] = command
                    self.problems.append(PluginProblem(
                        plugin_name, distribution, f"command {name!r} already exists; the plugin's was refused"))


def _ordered_plugins(manager: pluggy.PluginManager) -> list[tuple[str, object]]:
    """Plugins in registration-priority order: built-ins, then entry points by distribution name, then runtime."""
    builtin = _builtin_distribution().lower()
    plugins = [(name, plugin) for name, plugin in manager.list_name_plugin()
               if plugin is not None and plugin is not hookspecs]

    def priority(item: tuple[str, object]) -> tuple[int, str]:
        dist = _distribution_of(manager, item[1]).lower()
        from_entry_point = getattr(item[1], "__mfx_entry_point__", False)
        if from_entry_point and dist == builtin:  # a runtime plugin cannot claim to be built in
            return 0, ""
        return (1 if from_entry_point else 2), dist

    return sorted(plugins, key=priority)  # stable: entry-point order within one distribution


@functools.lru_cache(maxsize=1)
def _builtin_distribution() -> str:
    """The distribution that ships this core (``medforensics`` when installed normally)."""
    for dist in importlib.metadata.packages_distributions().get(__name__.split(".")[0], []):
        return dist
    return "medforensics"


def _check_class(cls: type) -> None:
    """Refuse a class whose metadata would crash ``mfx plugins`` or planning later (presets=None, no config...)."""
    presets = getattr(cls, "presets", None)
    if not isinstance(presets, Mapping) or not all(isinstance(k, str) and isinstance(v, Mapping)
                                                    for k, v in presets.items()):
        raise TypeError(f"{cls.__name__}.presets must map preset names to dicts of overrides, not {presets!r}")
    if not isinstance(getattr(cls, "description", ""), str):
        raise TypeError(f"{cls.__name__}.description must be a string")
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise TypeError(f"{cls.__name__}.config_class must be a dataclass, not {config_class!r}")
    for preset in cls.preset_names():
        try:
            cls.make_config(preset)
        except Exception as exc:  # noqa: BLE001 - whatever the config raises, the class is unusable
            raise TypeError(f"{cls.__name__}: preset {preset!r} does not build a config ({exc})") from None


def _distribution_of(manager: pluggy.PluginManager, plugin: object) -> str:
    for dist_plugin, dist in manager.list_plugin_distinfo():
        if dist_plugin is plugin:
            return dist.project_name if hasattr(dist, "project_name") else dist.metadata["Name"]
    return getattr(plugin, "__mfx_distribution__", "runtime")


def _allowed_distributions() -> set[str] | None:
    raw = os.environ.get(LOAD_ENV)
    if raw is None:
        return None
    return {part.strip().lower() for part in raw.split(",") if part.strip()}


def _misspelled_hooks(plugin: object) -> list[str]:
    """Attributes that look like mfx hooks (``register_*``) but are not a known hook."""
    known = set(KIND_HOOKS.values()) | {"register_commands"}
    return sorted(attr for attr in dir(plugin)
                  if attr.startswith("register_") and attr not in known and callable(getattr(plugin, attr)))


def build_manager(extra_plugins: Iterable[tuple[object, str]] = ()) -> tuple[pluggy.PluginManager, list[PluginProblem], list[LoadedPlugin]]:
    """A plugin manager with the entry-point plugins (gated by ``MFX_LOAD_PLUGINS``) plus ``extra_plugins``."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    problems: list[PluginProblem] = []
    loaded: list[LoadedPlugin] = []
    allowed = _allowed_distributions()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist_name = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else ""
        if allowed is not None and dist_name.lower() not in allowed:
            continue
        try:
            module = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - isolate a plugin that fails to import (sys.exit() included)
            log.warning("plugin %s from %s failed to import: %r", ep.name, dist_name, exc)
            problems.append(PluginProblem(ep.name, dist_name, f"failed to import: {type(exc).__name__}: {exc}"))
            continue
        _add(manager, module, ep.name, dist_name, version, problems, loaded, entry_point=True)
    for module, name in extra_plugins:
        _add(manager, module, name, getattr(module, "__mfx_distribution__", "runtime"), "", problems, loaded)
    return manager, problems, loaded


def _add(manager: pluggy.PluginManager, module: object, name: str, dist_name: str, version: str,
         problems: list[PluginProblem], loaded: list[LoadedPlugin], entry_point: bool = False) -> None:
    if manager.is_registered(module) or manager.get_plugin(name) is not None:
        return
    for bad in _misspelled_hooks(module):
        problems.append(PluginProblem(name, dist_name, f"unknown hook {bad!r} (misspelled?); ignored"))
    try:
        setattr(module, "__mfx_distribution__", dist_name)
        setattr(module, "__mfx_entry_point__", entry_point)
    except (AttributeError, TypeError):
        pass
    try:
        manager.register(module, name=name)
    except Exception as exc:  # noqa: BLE001 - pluggy validation errors (bad hook signature...)
        problems.append(PluginProblem(name, dist_name, f"rejected by the plugin manager: {exc}"))
        return
    hooks = [h for h in [*KIND_HOOKS.values(), "register_commands"] if hasattr(module, h)]
    loaded.append(LoadedPlugin(name, dist_name, version, hooks))


_lock = threading.Lock()
_registry: Registry | None = None
_runtime_plugins: list[tuple[object, str]] = []


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    with _lock:
        if _registry is None:
            manager, problems, loaded = build_manager(_runtime_plugins)
            registry = Registry(manager)
            registry.problems.extend(problems)
            registry.plugins = loaded
            registry.collect()
            _registry = registry
        return _registry


def register_plugin(module: object, name: str | None = None) -> None:
    """Register a plugin object at run time (tests, notebooks); the registry is rebuilt."""
    _runtime_plugins.append((module, name or getattr(module, "__name__", repr(module))))
    reset_registry()


def unregister_plugin(module: object) -> None:
    _runtime_plugins[:] = [(m, n) for m, n in _runtime_plugins if m is not module]
    reset_registry()


def reset_registry() -> None:
    """Forget the registry so the next :func:`get_registry` reloads plugins (e.g. after ``pip install``)."""
    global _registry
    with _lock:
        _registry = None


def capabilities(cls: type) -> list[str]:
    """The optional capabilities a detector class declares (``reference-bank``, ``distributed``)."""
    from .contract import capabilities as declared

    return declared(cls)


def check_plugin_references(config: Any, registry: Registry | None = None) -> None:
    """A config field named after a plugin kind (``retriever``, ``noise_extractors``...), or declaring one in its
    metadata (``dataclasses.field(metadata={"plugin_kind": "noise_extractor"})``), must name registered ones;
    ``"optional": True`` in the metadata says that the empty name turns the part off (the error says so too).

    Run at plan time, so ``--set dski.retriever=faiss-flt`` fails in one line
    (with a suggestion) before a run directory exists or any image is decoded.
    """
    registry = registry or get_registry()
    for field in dataclasses.fields(config):
        kind = field.name[:-1] if field.name.endswith("s") and field.name[:-1] in KIND_HOOKS else field.name
        kind = field.metadata.get("plugin_kind", kind)
        if kind not in KIND_HOOKS:
            continue
        value = getattr(config, field.name)
        for name in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(name, str) and name:
                try:
                    registry.get(kind, name)
                except UnknownPluginError as exc:
                    hint = f"; `{field.name}=` (empty) turns it off" if field.metadata.get("optional") else ""
                    raise UnknownPluginError(f"config key {field.name!r}: {exc}{hint}") from None


def plugin_rows(registry: Registry | None = None) -> list[dict[str, Any]]:
    """JSON-able rows describing every registered class (used by ``mfx plugins`` and the docs)."""
    registry = registry or get_registry()
    rows = []
    for reg in registry.all():
        cls: type[Plugin] = reg.cls
        rows.append({
            "kind": reg.kind, "name": reg.name, "description": cls.description,
            "distribution": reg.distribution, "plugin": reg.plugin,
            "presets": cls.preset_names(), "config": cls.config_class.__name__,
            "capabilities": capabilities(cls) if reg.kind == "detector" else [],
        })
    return rows
