"""Plugin discovery: a pluggy manager per Queue, backends resolved by URL scheme.

Entry points in the ``polyqueue`` group are imported lazily and only by the
name a URL asks for, so one broken plugin cannot break other backends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any, cast

import pluggy

from . import hookspecs
from .errors import ConfigurationError
from .urls import did_you_mean

__all__ = [
    "ENTRY_POINT_GROUP",
    "backend_class_for",
    "call_hook",
    "known_schemes",
    "make_plugin_manager",
    "plugin_headers",
    "unloaded_plugins",
]

ENTRY_POINT_GROUP = "polyqueue"
log = logging.getLogger("polyqueue.plugins")


def make_plugin_manager(plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A fresh manager with the hook specs, the built-in backends and ``plugins``.

    ``plugins`` are plugin objects (modules or instances) or names of entry
    points in the ``polyqueue`` group.
    """
    from .backends import builtin

    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="polyqueue.builtin")
    for plugin in plugins:
        if isinstance(plugin, str):
            if not _load_entry_point(pm, plugin):
                raise ConfigurationError(
                    f"no plugin named {plugin!r} is installed (entry-point group {ENTRY_POINT_GROUP!r})"
                )
        elif pm.get_name(plugin) is None:
            pm.register(plugin)
    _check_hooks(pm, "a plugin given to connect()")
    return pm


def _load_entry_point(pm: pluggy.PluginManager, name: str) -> bool:
    """Import the ``polyqueue`` entry point called ``name``; False if there is none."""
    if pm.has_plugin(name):
        return True
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        return False
    for ep in found:
        try:
            plugin = ep.load()
        except Exception as exc:
            raise ConfigurationError(
                f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        if pm.get_name(plugin) is None:
            pm.register(plugin, name=_free_plugin_name(pm, ep))
    _check_hooks(pm, f"plugin {name!r}")
    return True


def _free_plugin_name(pm: pluggy.PluginManager, ep: metadata.EntryPoint) -> str:
    """``ep.name``, or when two installed packages offer that name, one that also names the second package."""
    if not pm.has_plugin(ep.name):
        return ep.name
    return f"{ep.name} (from {ep.dist.name if ep.dist else ep.value})"


def _check_hooks(pm: pluggy.PluginManager, what: str) -> None:
    """pluggy's check for misspelt hooks, as a ConfigurationError naming the plugin."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigurationError(f"{what} implements an unknown hook: {exc}") from exc


def _backend_table(pm: pluggy.PluginManager) -> dict[str, tuple[type, str]]:
    table: dict[str, tuple[type, str]] = {}
    for impl in pm.hook.polyqueue_backends.get_hookimpls():
        offered = cast("Mapping[str, type]", impl.function() or {})
        for scheme, cls in offered.items():
            if scheme in table and table[scheme][0] is not cls:
                raise ConfigurationError(
                    f"URL scheme {scheme!r} is claimed by two plugins: {table[scheme][1]} and {_describe(impl)}; "
                    "uninstall one of them"
                )
            table[scheme] = (cls, _describe(impl))
    return table


def _describe(impl: pluggy.HookImpl) -> str:
    module = getattr(impl.plugin, "__name__", type(impl.plugin).__name__)
    return f"{impl.plugin_name!r} (module {module})"


def known_schemes(pm: pluggy.PluginManager) -> list[str]:
    """The URL schemes the backends registered now serve (built-ins and plugins already loaded)."""
    return sorted(_backend_table(pm))


def unloaded_plugins(pm: pluggy.PluginManager) -> list[str]:
    """Installed entry points of the ``polyqueue`` group not loaded yet.

    Each may add schemes or only lifecycle hooks (metrics, tracing): nothing
    says which until it is imported, and listing them imports nothing.
    """
    names = {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(name for name in names if not pm.has_plugin(name) and name not in _backend_table(pm))


def backend_class_for(pm: pluggy.PluginManager, scheme: str) -> type:
    """The backend class serving ``scheme``, loading its entry point if needed."""
    table = _backend_table(pm)
    if scheme not in table and _load_entry_point(pm, scheme):
        table = _backend_table(pm)
    if scheme not in table and pm.has_plugin(scheme):
        raise ConfigurationError(
            f"{scheme!r} is a lifecycle plugin, not a backend: open a backend's URL (sqlite:///polyqueue.db, "
            f"postgresql://...) with connect(url, plugins=[{scheme!r}]) or POLYQUEUE_PLUGINS={scheme}"
        )
    if scheme not in table:
        known, unloaded = known_schemes(pm), unloaded_plugins(pm)
        others = f"; installed plugins, not loaded: {', '.join(unloaded)}" if unloaded else ""
        raise ConfigurationError(
            f"unknown URL scheme {scheme!r}{did_you_mean(scheme, [*known, *unloaded])} "
            f"Known schemes: {', '.join(known)}{others}. "
            f"Backends for other databases are plugins registered under the entry-point group "
            f"{ENTRY_POINT_GROUP!r} (pip install the plugin package)"
        )
    return table[scheme][0]


def call_hook(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> None:
    """Call the lifecycle hook ``name`` when some plugin implements it.

    A plugin that raises is logged and ignored: a metrics or tracing plugin
    must never fail, repeat or undo the work it observes (an enqueue that
    already committed, a job that already ran).
    """
    hook = getattr(pm.hook, name)
    if not hook.get_hookimpls():
        return
    try:
        hook(**kwargs)
    except Exception:
        log.exception("plugin hook %s failed; the operation it observed stands", name)


def plugin_headers(pm: pluggy.PluginManager, **kwargs: Any) -> dict[str, str] | None:
    """The headers plugins add to a job about to be stored (``polyqueue_enqueue_headers``), merged.

    None when no plugin implements the hook or none returns any. A plugin
    that raises or returns something other than a mapping is logged and
    ignored, so an enqueue never fails because of a plugin. When two plugins
    name the same header, the one pluggy calls first (the last registered) wins.
    """
    hook = pm.hook.polyqueue_enqueue_headers
    if not hook.get_hookimpls():
        return None
    try:
        results = hook(**kwargs)
    except Exception:
        log.exception("plugin hook polyqueue_enqueue_headers failed; the job is stored without its headers")
        return None
    merged: dict[str, str] = {}
    for result in results:
        if not isinstance(result, Mapping):
            log.error("plugin hook polyqueue_enqueue_headers returned a %s, not a dict; ignored", type(result).__name__)
            continue
        for key, value in result.items():
            merged.setdefault(key, value)
    return merged or None
