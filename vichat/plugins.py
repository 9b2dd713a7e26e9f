"""Plugin manager: built-in and third-party plugins load through one entry-point path.

Each plugin is imported and each of its hook implementations is called on its own, so a plugin
that fails to import, raises in a hook or registers an invalid spec costs one warning naming it,
and the rest keep working. ``VICHAT_STRICT_PLUGINS=1`` re-raises instead (for plugin authors).

Environment:
    VICHAT_PLUGINS          comma-separated allowlist of plugin (entry-point) names
    VICHAT_DISABLE_PLUGINS  comma-separated denylist; blocked plugins are never imported
    VICHAT_STRICT_PLUGINS   "1" to raise on the first plugin problem
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import os
import threading
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .records import VichatError
from .specs import KINDS, SpecError

ENTRY_POINT_GROUP = "vichat"
HOOKS = {kind: f"register_{kind}" for kind in KINDS}
SINGULAR = {
    "datasets": "dataset",
    "base_models": "base model",
    "translators": "translator",
    "judges": "judge",
    "templates": "template",
    "judge_prompts": "judge prompt set",
}


class PluginWarning(UserWarning):
    """A plugin was skipped or partly skipped; the message names it and says why."""


class UnknownNameError(VichatError, KeyError):
    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind, self.name, self.available = kind, name, available
        what = SINGULAR.get(kind, kind)
        msg = f"no {what} named {name!r}."
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
        if close:
            msg += f" Did you mean {close[0]!r}?"
        msg += f" Registered {kind.replace('_', ' ')}: {', '.join(available) or '(none)'}."
        msg += " Run `vichat plugins` to see which plugin provides what."
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class UnknownKindError(VichatError, KeyError):
    """A kind string that is not one of :data:`vichat.specs.KINDS`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(f"no kind of component named {kind!r}.{hint} Kinds: {', '.join(KINDS)}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class NameConflictError(VichatError):
    def __init__(self, kind: str, name: str, owners: list[str]) -> None:
        self.kind, self.name, self.owners = kind, name, owners
        super().__init__(
            f"{SINGULAR.get(kind, kind)} {name!r} is registered by more than one plugin: "
            + " and ".join(repr(o) for o in owners)
            + ". Names must be unique (they are stored in votes and reports): uninstall one, or "
            "block it with VICHAT_DISABLE_PLUGINS=<plugin>."
        )


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str = ""
    version: str = ""
    registered: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "registered": self.registered,
            "errors": self.errors,
        }


@dataclass
class Problem:
    plugin: str
    message: str

    def __str__(self) -> str:
        return f"vichat plugin {self.plugin!r}: {self.message}"


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[Problem] = []
        self._items: dict[str, dict[str, tuple[Any, str]]] = {k: {} for k in KINDS}
        self.conflicts: dict[tuple[str, str], list[str]] = {}

    # -- lookup ------------------------------------------------------------------------------
    def _kind(self, kind: str) -> dict[str, tuple[Any, str]]:
        try:
            return self._items[kind]
        except (KeyError, TypeError):
            raise UnknownKindError(kind) from None

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, one of ``datasets``, ``base_models``, ``translators``,
        ``judges``, ``templates``, ``judge_prompts`` (:data:`vichat.specs.KINDS`)."""
        return sorted(self._kind(kind))

    def get(self, kind: str, name: str) -> Any:
        self._kind(kind)
        if (kind, name) in self.conflicts:
            raise NameConflictError(kind, name, self.conflicts[(kind, name)])
        try:
            return self._items[kind][name][0]
        except KeyError:
            raise UnknownNameError(kind, name, self.names(kind)) from None

    def owner(self, kind: str, name: str) -> str:
        self.get(kind, name)
        return self._items[kind][name][1]

    def all(self, kind: str) -> list[Any]:
        return [self._items[kind][n][0] for n in self.names(kind)]

    def dataset(self, name: str):
        return self.get("datasets", name)

    def base_model(self, name: str):
        return self.get("base_models", name)

    def translator(self, name: str):
        return self.get("translators", name)

    def judge(self, name: str):
        return self.get("judges", name)

    def template(self, name: str):
        return self.get("templates", name)

    # -- building ----------------------------------------------------------------------------
    def _problem(self, plugin: str, message: str, strict: bool, exc: BaseException | None = None) -> None:
        problem = Problem(plugin, message)
        self.problems.append(problem)
        if plugin in self.plugins:
            self.plugins[plugin].errors.append(message)
        if strict:
            raise VichatError(str(problem)) from exc
        warnings.warn(str(problem), PluginWarning, stacklevel=3)

    def _add(self, kind: str, spec: Any, plugin: str) -> None:
        # Every plugin that registered a name lists it, whichever came first: a clash shows under
        # both owners (and in ``conflicts``), never only under the one that happened to load first.
        self.plugins[plugin].registered[kind].append(spec.name)
        existing = self._items[kind].get(spec.name)
        if existing is not None:
            owners = self.conflicts.setdefault((kind, spec.name), [existing[1]])
            owners.append(plugin)
            return
        self._items[kind][spec.name] = (spec, plugin)


def _hook_mistakes(pm: pluggy.PluginManager, obj: Any) -> list[str]:
    """Hook implementations that would silently do nothing: a marked function whose name is no
    hook (``register_judge`` for ``register_judges``), or a hook-like function left unmarked."""
    hooks = sorted(HOOKS.values())
    out: list[str] = []
    for attr in dir(obj):
        if not attr.startswith("register"):
            continue
        try:
            value = getattr(obj, attr)
        except Exception:  # noqa: BLE001 - a property that raises is not a hook
            continue
        if not callable(value):
            continue
        close = difflib.get_close_matches(attr, hooks, n=1, cutoff=0.8)
        marked = pm.parse_hookimpl_opts(obj, attr) is not None
        if marked and attr not in hooks:
            hint = f" Did you mean {close[0]!r}?" if close else ""
            out.append(f"{attr} is marked @hookimpl but vichat has no hook of that name, so it is never "
                       f"called.{hint} Hooks: {', '.join(hooks)}.")
        elif not marked and (attr in hooks or close):
            hook = attr if attr in hooks else close[0]
            fix = "" if attr == hook else f" and rename it to {hook!r}"
            out.append(f"{attr} is not marked with @hookimpl, so it is never called: decorate it with "
                       f"`@hookimpl` (from vichat.plugin import hookimpl){fix}.")
    return out


def _iter_entry_points() -> list[md.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    out = []
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        out.append(ep)
    return sorted(out, key=lambda e: e.name)


def build_registry(
    extra: Iterable[tuple[str, Any]] = (),
    *,
    entry_points: bool = True,
    strict: bool | None = None,
) -> Registry:
    """Load plugins and collect what they register.

    :param extra: ``(name, module_or_object)`` plugins to add in-process (tests, notebooks).
    :param entry_points: also load every installed plugin of the ``vichat`` entry-point group.
    :param strict: raise on the first problem; defaults to ``VICHAT_STRICT_PLUGINS``.
    """
    if strict is None:
        strict = os.environ.get("VICHAT_STRICT_PLUGINS", "") not in ("", "0", "false")
    allow = _env_list("VICHAT_PLUGINS")
    deny = _env_list("VICHAT_DISABLE_PLUGINS") or set()
    registry = Registry()
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)

    candidates: list[tuple[str, str, str, str, Any]] = []  # name, module, dist, version, loader
    if entry_points:
        for ep in _iter_entry_points():
            dist = ep.dist.name if ep.dist is not None else ""
            version = ep.dist.version if ep.dist is not None else ""
            candidates.append((ep.name, ep.value, dist, version, ep.load))
    for name, obj in extra:
        module = obj.__name__ if isinstance(obj, ModuleType) else type(obj).__name__
        candidates.append((name, module, "(in-process)", "", lambda obj=obj: obj))

    for name, module, dist, version, load in candidates:
        if name in deny or (allow is not None and name not in allow):
            continue  # blocked before import
        if name in registry.plugins:
            registry.plugins.setdefault(name, PluginInfo(name, module, dist, version))
            registry._problem(name, f"a second plugin uses the entry-point name {name!r} ({module}); skipped", strict)
            continue
        registry.plugins[name] = PluginInfo(name, module, dist, version)
        try:
            obj = load()
        except Exception as exc:  # noqa: BLE001 - any import failure is contained
            registry._problem(name, f"failed to import {module}: {type(exc).__name__}: {exc}", strict, exc)
            continue
        try:
            pm.register(obj, name=name)
        except Exception as exc:  # noqa: BLE001
            registry._problem(name, f"invalid hook implementation: {exc}", strict, exc)
            continue
        for mistake in _hook_mistakes(pm, obj):
            registry._problem(name, mistake, strict)

    for kind, hook_name in HOOKS.items():
        spec_type = KINDS[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name
            collected: list[Any] = []

            def register(spec: Any, _collected: list = collected) -> None:
                _collected.append(spec)

            try:
                impl.function(*[register for _ in impl.argnames])
            except Exception as exc:  # noqa: BLE001
                registry._problem(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}", strict, exc)
                continue  # nothing from a failed hook call is kept: it may be half-done
            for spec in collected:
                try:
                    if not isinstance(spec, spec_type):
                        raise SpecError(
                            f"{hook_name} must register {spec_type.__name__} objects, got {type(spec).__name__}"
                        )
                    spec.validate()
                except SpecError as exc:
                    registry._problem(plugin, f"invalid spec skipped: {exc}", strict, exc)
                    continue
                registry._add(kind, spec, plugin)

    for (kind, name), owners in registry.conflicts.items():
        err = NameConflictError(kind, name, owners)
        if strict:
            raise err
        warnings.warn(str(err), PluginWarning, stacklevel=2)
    return registry


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = build_registry()
        return _registry


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin or changing the environment)."""
    global _registry
    with _lock:
        _registry = None
