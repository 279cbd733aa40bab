"""The plugin manager: built-ins and third-party packages, one registry per kind.

Built-in plugins are registered through the same manager as third-party ones; third-party
packages come in through the ``llama2rlhf`` entry-point group.

Environment variables:

* ``LLAMA2RLHF_DISABLE_AUTOLOAD=1``: do not load entry points; only the built-ins.
* ``LLAMA2RLHF_TRACE_HOOKS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import pluggy

from llama2rlhf.plugins import hookspecs

ENTRY_POINT_GROUP = "llama2rlhf"
DISABLE_AUTOLOAD_ENV = "LLAMA2RLHF_DISABLE_AUTOLOAD"
TRACE_ENV = "LLAMA2RLHF_TRACE_HOOKS"

# name -> module; the names match the entry points in pyproject.toml so that loading the
# entry points afterwards skips them instead of registering them twice.
BUILTIN_PLUGINS = {
    "annotators": "llama2rlhf.recipe.annotators",
    "augmenters": "llama2rlhf.gatt.augmenter",
    "checkers": "llama2rlhf.gatt.checkers",
    "loggers": "llama2rlhf.runtime.loggers",
    "reward_combiners": "llama2rlhf.reward.combiners",
    "reward_losses": "llama2rlhf.reward.losses",
    "samplers": "llama2rlhf.sampling.hf",
    "selectors": "llama2rlhf.sampling.selectors",
    "stages": "llama2rlhf.recipe.stages",
}

# registry kind -> (hook name, Hydra config group that selects one of its names, or None)
KINDS = {
    "reward_losses": ("register_reward_losses", "reward_loss"),
    "samplers": ("register_samplers", "sampler"),
    "selectors": ("register_selectors", "selector"),
    "augmenters": ("register_augmenters", "augmenter"),
    "checkers": ("register_checkers", "checker"),
    "stages": ("register_stages", None),
    "reward_combiners": ("register_reward_combiners", "reward"),
    "annotators": ("register_annotators", "annotator"),
}


class PluginError(RuntimeError):
    """A plugin failed to load or registered something wrong; the message names it."""


@dataclass(frozen=True)
class Registered:
    """One registered thing and the plugin that provided it."""

    name: str
    obj: Any
    plugin: str
    distribution: str | None

    @contextmanager
    def blame(self, what: str) -> Iterator[None]:
        """Re-raise a third-party plugin's failure inside the block as a PluginError that
        names it (``what`` says which kind, e.g. "selector"); the built-ins' own errors pass
        through unchanged."""
        try:
            yield
        except PluginError:
            raise
        except Exception as exc:
            if self.distribution == "llama2rlhf":
                raise
            raise PluginError(f"{what} {self.name!r} of plugin {self.plugin!r} ({self.distribution}) failed: "
                              f"{type(exc).__name__}: {exc}") from exc


_pm: pluggy.PluginManager | None = None
_registries: dict[str, dict[str, Registered]] = {}
_plugin_dists: dict[str, str] = {}  # plugin name -> distribution that installed it


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else None
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} (distribution {dist or 'unknown'}, entry point "
                f"{ep.value!r}) failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        pm.register(module, name=ep.name)
        if dist is not None:
            _plugin_dists[ep.name] = dist


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, created on first use."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("llama2rlhf")
    pm.add_hookspecs(hookspecs)
    for name, module_name in BUILTIN_PLUGINS.items():
        pm.register(importlib.import_module(module_name), name=name)
        _plugin_dists[name] = "llama2rlhf"
    if not _env_flag(DISABLE_AUTOLOAD_ENV):
        _load_entry_points(pm)
    if _env_flag(TRACE_ENV):
        pm.trace.root.setwriter(lambda message: sys.stderr.write(message))
        pm.enable_tracing()
    _pm = pm
    return pm


def reset() -> None:
    """Forget the manager and registries (tests, or after installing a plugin in-process)."""
    global _pm
    _pm = None
    _registries.clear()
    _plugin_dists.clear()


def registry(kind: str) -> dict[str, Registered]:
    """All things of one kind, by name, from every loaded plugin."""
    if kind not in KINDS:
        raise KeyError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    if kind in _registries:
        return _registries[kind]
    pm = get_plugin_manager()
    hook_name = KINDS[kind][0]
    found: dict[str, Registered] = {}
    # pluggy traces calls made through pm.hook; these are made one implementation at a
    # time, so they go through its tracer by hand (a no-op unless LLAMA2RLHF_TRACE_HOOKS).
    hooktrace = pm.trace.root.get("hook")
    # Each implementation is called on its own so that every name is traced to its plugin.
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        plugin = impl.plugin_name

        def register(name: str, obj: Any, _plugin: str = plugin) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_plugin!r} registered a {kind} entry with an invalid name {name!r}")
            if name in found:
                other = found[name]
                raise PluginError(
                    f"{kind} name {name!r} is registered twice: by plugin {other.plugin!r} "
                    f"({other.distribution or 'unknown distribution'}) and by plugin {_plugin!r} "
                    f"({_plugin_dists.get(_plugin, 'unknown distribution')})"
                )
            found[name] = Registered(name, obj, _plugin, _plugin_dists.get(_plugin))

        hooktrace(hook_name, {"plugin": plugin})
        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r} ({_plugin_dists.get(plugin, 'unknown distribution')}) failed in "
                f"{hook_name}: {type(exc).__name__}: {exc}"
            ) from exc
        hooktrace("finish", hook_name, "-->", sorted(n for n, r in found.items() if r.plugin == plugin))
    _registries[kind] = found
    return found


def get(kind: str, name: str) -> Registered:
    """One registered thing; a clear error listing the names that exist otherwise."""
    things = registry(kind)
    if name not in things:
        raise PluginError(f"no {kind} named {name!r}; available: {', '.join(sorted(things)) or '(none)'}")
    return things[name]


def describe() -> list[dict[str, Any]]:
    """What each loaded plugin is and registers (for ``llama2rlhf plugins``)."""
    pm = get_plugin_manager()
    by_plugin: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        for item in registry(kind).values():
            by_plugin.setdefault(item.plugin, {}).setdefault(kind, []).append(item.name)
    out = []
    for name, module in pm.list_name_plugin():
        dist = _plugin_dists.get(name)
        version = None
        if dist:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        out.append(
            {
                "name": name,
                "module": getattr(module, "__name__", repr(module)),
                "distribution": dist,
                "version": version,
                "hooks": sorted(h.name for h in pm.get_hookcallers(module) or []),
                "registers": {k: sorted(v) for k, v in sorted(by_plugin.get(name, {}).items())},
            }
        )
    return sorted(out, key=lambda p: (p["distribution"] != "llama2rlhf", p["name"]))
