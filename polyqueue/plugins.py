"""Plugin discovery: a pluggy manager per Queue, backends resolved by URL scheme.

Entry points in the ``polyqueue`` group are imported lazily and only by the
name a URL asks for, so one broken plugin cannot break other backends.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigurationError

__all__ = ["ENTRY_POINT_GROUP", "make_plugin_manager", "backend_class_for", "known_schemes"]

ENTRY_POINT_GROUP = "polyqueue"


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
            _load_entry_point(pm, plugin)
        elif pm.get_name(plugin) is None:
            pm.register(plugin)
    pm.check_pending()
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
            pm.register(plugin, name=ep.name)
    pm.check_pending()
    return True


def _backend_table(pm: pluggy.PluginManager) -> dict[str, tuple[type, str]]:
    table: dict[str, tuple[type, str]] = {}
    for impl in pm.hook.polyqueue_backends.get_hookimpls():
        for scheme, cls in (impl.function() or {}).items():
            if scheme in table and table[scheme][0] is not cls:
                raise ConfigurationError(
                    f"URL scheme {scheme!r} is claimed by two plugins: {table[scheme][1]!r} and {impl.plugin_name!r}"
                )
            table[scheme] = (cls, impl.plugin_name)
    return table


def known_schemes(pm: pluggy.PluginManager) -> list[str]:
    """Schemes registered now plus those installed entry points offer."""
    names = set(_backend_table(pm))
    names.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def backend_class_for(pm: pluggy.PluginManager, scheme: str) -> type:
    """The backend class serving ``scheme``, loading its entry point if needed."""
    table = _backend_table(pm)
    if scheme not in table and _load_entry_point(pm, scheme):
        table = _backend_table(pm)
    if scheme not in table:
        raise ConfigurationError(
            f"unknown URL scheme {scheme!r}; known schemes: {', '.join(known_schemes(pm))}. "
            f"Backends for other databases are plugins registered under the entry-point group "
            f"{ENTRY_POINT_GROUP!r} (pip install the plugin package)"
        )
    return table[scheme][0]
