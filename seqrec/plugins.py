"""The plugin host: a pluggy manager that loads entry points in group ``seqrec``.

Each entry point loads in its own try/except, so one broken plugin is reported (``seqrec
plugins`` shows it) and does not stop the others. ``SEQREC_LOAD_PLUGINS=a,b`` loads only the named
entry points; set and empty, it loads none. Default plugins inside core always load.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from seqrec import __version__, hookspecs

GROUP = "seqrec"
DEFAULT_PLUGINS = ("seqrec.default_plugins.popularity", "seqrec.default_plugins.markov")


@dataclass
class PluginInfo:
    """What ``seqrec plugins`` shows for one plugin."""

    name: str
    version: str | None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    default: bool = False


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus a record of which plugins failed to load and why."""

    def __init__(self) -> None:
        super().__init__("seqrec")
        self.add_hookspecs(hookspecs)
        self.failures: dict[str, str] = {}
        self.versions: dict[str, str | None] = {}
        self.defaults: set[str] = set()

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
            version = ep.dist.version if ep.dist else None
            registered = False
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name)
                registered = True
                self._check_known_hooks(plugin)
            except Exception as exc:  # isolate: a broken plugin must not kill the host
                if registered:
                    self.unregister(name=ep.name)
                msg = f"{type(exc).__name__}: {exc}"
                self.failures[ep.name] = msg
                self.versions[ep.name] = version
                warnings.warn(f"seqrec plugin '{ep.name}' failed to load: {msg}", stacklevel=2)
                continue
            self.versions[ep.name] = version

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

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.list_name_plugin():
            if name is None:
                continue
            hooks = sorted(h.name for h in (self.get_hookcallers(plugin) or []))
            infos.append(
                PluginInfo(name, self.versions.get(name), hooks, default=name in self.defaults)
            )
        for name, err in self.failures.items():
            infos.append(PluginInfo(name, self.versions.get(name), [], error=err))
        return sorted(infos, key=lambda i: (not i.default, i.name))


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
