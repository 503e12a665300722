"""The plugin host: a pluggy manager that loads entry points in group ``seqrec``.

A broken plugin never stops the others. Each entry point loads in its own try/except, each
plugin's ``register_models`` and ``register_commands`` run in their own too, and what went wrong
is recorded against the plugin (``seqrec plugins`` shows it as broken, with the reason) and
warned once with a :class:`PluginWarning` naming its distribution and entry point.
``SEQREC_LOAD_PLUGINS=a,b`` loads only the named entry points; set and empty, it loads none.
Default plugins inside core always load.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from seqrec import __version__, hookspecs

log = logging.getLogger("seqrec.plugins")

GROUP = "seqrec"
DEFAULT_PLUGINS = ("seqrec.default_plugins.popularity", "seqrec.default_plugins.markov")


class PluginWarning(UserWarning):
    """A plugin failed to load or one of its hooks failed; the other plugins keep working."""


@dataclass
class PluginInfo:
    """What ``seqrec plugins`` shows for one plugin.

    ``distribution``: the installed distribution that provides it (None for plugins registered
    in code); ``entry_point``: its entry point as written in that distribution's metadata
    (``name = module``); ``error``: why it is broken, or None."""

    name: str
    version: str | None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    default: bool = False
    distribution: str | None = None
    entry_point: str | None = None


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus a record of where each plugin came from and which ones broke."""

    def __init__(self) -> None:
        super().__init__("seqrec")
        self.add_hookspecs(hookspecs)
        #: plugin name -> why it is broken (it is unregistered, or was never registered)
        self.failures: dict[str, str] = {}
        self.versions: dict[str, str | None] = {}
        self.defaults: set[str] = set()
        #: plugin name -> (distribution name, "entry_point = module") for entry-point plugins
        self.sources: dict[str, tuple[str | None, str]] = {}

    def load_defaults(self) -> None:
        for modname in DEFAULT_PLUGINS:
            mod = importlib.import_module(modname)
            name = modname.rsplit(".", 1)[-1]
            self.register(mod, name=name)
            self.defaults.add(name)
            self.versions[name] = __version__  # default plugins ship with core

    def load_entrypoints(self, only: set[str] | None = None) -> None:
        for ep in entry_points(group=GROUP):
            if only is not None and ep.name not in only:
                continue
            if self.get_plugin(ep.name) is not None or self.is_blocked(ep.name):
                continue
            self.versions[ep.name] = ep.dist.version if ep.dist else None
            self.sources[ep.name] = (ep.dist.name if ep.dist else None, f"{ep.name} = {ep.value}")
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name)
                self._check_known_hooks(plugin)
            except Exception as exc:  # isolate: a broken plugin must not kill the host
                self.fail(ep.name, f"{type(exc).__name__}: {exc}", "failed to load", exc)

    def _check_known_hooks(self, plugin: object) -> None:
        """Reject a plugin implementing a hook seqrec does not define (``check_pending`` would
        otherwise fail the whole manager for it); ``optionalhook=True`` impls are allowed."""
        for caller in self.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not impl.optionalhook:
                    raise pluggy.PluginValidationError(
                        plugin, f"unknown hook '{caller.name}' (not in seqrec.hookspecs)"
                    )

    def origin(self, name: str) -> str:
        """Where plugin ``name`` comes from, for messages: its distribution and entry point."""
        if name in self.defaults:
            return f"plugin '{name}' (built into seqrec)"
        if name in self.sources:
            dist, ep = self.sources[name]
            version = self.versions.get(name)
            where = f"distribution {dist}{f' {version}' if version else ''}, " if dist else ""
            return f"plugin '{name}' ({where}entry point '{ep}')"
        return f"plugin '{name}'"

    def fail(self, name: str, reason: str, what: str, exc: BaseException | None = None) -> None:
        """Mark plugin ``name`` broken: unregister it, record ``reason`` (what ``seqrec
        plugins`` shows) and warn once, naming where it comes from. ``exc``, what it raised,
        is logged with its traceback at debug level (the warning stays one line)."""
        if self.get_plugin(name) is not None:
            self.unregister(name=name)
        if name in self.failures:
            return
        if exc is not None:
            log.debug("seqrec %s %s", self.origin(name), what, exc_info=exc)
        self.failures[name] = reason
        warnings.warn(
            f"seqrec {self.origin(name)} {what}: {reason}; the other plugins keep working",
            PluginWarning,
            stacklevel=3,
        )

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every plugin's implementation of ``hook`` on its own: one that raises marks
        its plugin broken (:meth:`fail`) and the others still run. Returns (plugin name,
        result) for those that returned."""
        results = []
        for impl in getattr(self.hook, hook).get_hookimpls():
            try:
                results.append((impl.plugin_name, impl.function(**kwargs)))
            except Exception as exc:
                reason = f"{hook} raised {type(exc).__name__}: {exc}"
                self.fail(impl.plugin_name, reason, "broke", exc)
        return results

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.list_name_plugin():
            if name is None:
                continue
            hooks = sorted(h.name for h in (self.get_hookcallers(plugin) or []))
            infos.append(self._info(name, hooks, None))
        for name, err in self.failures.items():
            infos.append(self._info(name, [], err))
        return sorted(infos, key=lambda i: (not i.default, i.name))

    def _info(self, name: str, hooks: list[str], error: str | None) -> PluginInfo:
        dist, ep = self.sources.get(name, (None, None))
        return PluginInfo(
            name,
            self.versions.get(name),
            hooks,
            error=error,
            default=name in self.defaults,
            distribution=dist,
            entry_point=ep,
        )


def _only_from_env() -> set[str] | None:
    raw = os.environ.get("SEQREC_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


_manager: PluginManager | None = None


def new_plugin_manager(load_entrypoints: bool = True) -> PluginManager:
    """A fresh manager with the default plugins and (optionally) entry-point plugins."""
    pm = PluginManager()
    pm.load_defaults()
    if load_entrypoints:
        pm.load_entrypoints(_only_from_env())
    pm.check_pending()
    return pm


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, created on first use (never at import time)."""
    global _manager
    if _manager is None:
        _manager = new_plugin_manager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests use a fresh one each)."""
    global _manager
    _manager = None


def model_origin(model_name: str, pm: PluginManager | None = None) -> str:
    """``model 'NAME' of plugin ...`` (its distribution and entry point), for messages."""
    from seqrec.models import model_registry

    pm = pm or get_plugin_manager()
    spec = model_registry(pm).get(model_name)
    if spec is None or not spec.plugin:
        return f"model '{model_name}'"
    return f"model '{model_name}' of {pm.origin(spec.plugin)}"
