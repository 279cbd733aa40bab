"""The plugin manager: built-ins and third-party packages, one registry per kind, and the
resolver that every call of a plugin's code goes through.

Built-in plugins are registered through the same manager as third-party ones; third-party
packages come in through the ``llama2rlhf`` entry-point group.

:func:`selected` is "the thing of kind K that the config selects, with its typed options"
(:func:`named` the same for a thing named elsewhere, as ``pipeline.stages`` names stages);
its :meth:`Selected.call` runs the thing with its options as keyword arguments, and a
third-party plugin that fails there is named in a one-line :class:`PluginError`.

Environment variables:

* ``LLAMA2RLHF_DISABLE_AUTOLOAD=1``: do not load entry points; only the built-ins.
* ``LLAMA2RLHF_TRACE_HOOKS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import pluggy

from llama2rlhf import Stage
from llama2rlhf.data.errors import InputError
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

BUILTIN_DISTRIBUTION = "llama2rlhf"


@dataclass(frozen=True)
class Kind:
    """One registry kind: the hook that fills it, the Hydra config group that selects one of
    its names (None: named elsewhere, as stages are), what errors call one of its things,
    and the keys of that group's base config class that the framework reads itself
    (documented there; never passed to the plugin as options)."""

    hook: str
    group: str | None
    label: str
    framework_keys: tuple[str, ...] = ()


KINDS = {
    "reward_losses": Kind("register_reward_losses", "reward_loss", "reward loss", ("margin_scale",)),
    "samplers": Kind("register_samplers", "sampler", "sampler"),
    "selectors": Kind("register_selectors", "selector", "selector"),
    "augmenters": Kind("register_augmenters", "augmenter", "augmenter"),
    "checkers": Kind("register_checkers", "checker", "checker"),
    "stages": Kind("register_stages", None, "stage"),
    "reward_combiners": Kind("register_reward_combiners", "reward", "reward combiner", ("whiten",)),
    "annotators": Kind("register_annotators", "annotator", "annotator"),
}


class PluginError(InputError):
    """A plugin failed to load, registered something wrong, or failed when called; the
    message names it and its distribution (one line; exit code 2 on the command line)."""


@dataclass(frozen=True)
class Registered:
    """One registered thing and the plugin that provided it."""

    name: str
    obj: Any
    plugin: str
    distribution: str | None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


@dataclass(frozen=True)
class Selected:
    """A registered thing as a run uses it: the plugin that provided it and its options.

    ``options`` are the extra keys of its config node, typed as the node's dataclass types
    them (the built-ins' nodes and :func:`hookspecs.register_configs` nodes), less the keys
    the framework reads itself (``Kind.framework_keys``); ``recorded`` is the same as plain
    JSON values, for ``summary.json``.
    """

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str | None
    version: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    recorded: Mapping[str, Any] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @contextmanager
    def blame(self, passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Re-raise a third-party plugin's failure inside the block as a one-line PluginError
        that names it; the built-ins' own errors, InputErrors (PluginErrors, and the
        ConfigErrors and DataErrors a plugin raises about its own options and files) and the
        exception types in ``passthrough`` (signals a plugin raises on purpose) pass through
        unchanged."""
        try:
            yield
        except InputError:  # a PluginError already, or bad input the plugin named itself
            raise
        except Exception as exc:
            if self.builtin or isinstance(exc, passthrough):
                raise
            raise PluginError(f"{KINDS[self.kind].label} {self.name!r} of plugin {self.plugin!r} (distribution "
                              f"{self.distribution or 'unknown'}) failed: {type(exc).__name__}: {_one_line(exc)}"
                              ) from exc

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """``obj(*args, **kwargs, **options)`` under :meth:`blame`."""
        with self.blame():
            return self.obj(*args, **kwargs, **self.options)

    def wrap(self, product: Any, *methods: str, passthrough: tuple[type[BaseException], ...] = ()) -> Any:
        """What the thing made (a sampler, a check, an annotator) with its calls under
        :meth:`blame`: ``methods`` of an object, or the product itself when it is a bare
        callable and no methods are named. The built-ins' products come back as they are."""
        if self.builtin:
            return product
        if not methods:
            @functools.wraps(product)
            def blamed(*args: Any, **kwargs: Any) -> Any:
                with self.blame(passthrough):
                    return product(*args, **kwargs)

            return blamed
        return Blamed(product, self, methods, passthrough)

    def record(self) -> dict[str, Any]:
        """The entry of ``summary.json``'s ``plugins``."""
        return {"name": self.name, "plugin": self.plugin, "distribution": self.distribution,
                "version": self.version, "options": dict(self.recorded)}


class Blamed:
    """A third-party plugin's product whose named methods run under its :meth:`Selected.blame`;
    every other attribute, read or set, is the product's own (``__wrapped__`` is the product)."""

    __slots__ = ("__wrapped__", "_selected", "_methods", "_passthrough")

    def __init__(self, product: Any, selected: Selected, methods: tuple[str, ...],
                 passthrough: tuple[type[BaseException], ...] = ()):
        object.__setattr__(self, "__wrapped__", product)
        object.__setattr__(self, "_selected", selected)
        object.__setattr__(self, "_methods", frozenset(methods))
        object.__setattr__(self, "_passthrough", passthrough)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.__wrapped__, name)
        if name not in self._methods or not callable(attr):
            return attr

        @functools.wraps(attr)
        def blamed(*args: Any, **kwargs: Any) -> Any:
            with self._selected.blame(self._passthrough):
                return attr(*args, **kwargs)

        return blamed

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    def __repr__(self) -> str:
        return f"Blamed({self.__wrapped__!r})"


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
        _plugin_dists[name] = BUILTIN_DISTRIBUTION
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
    hook_name = KINDS[kind].hook
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
            if kind == "stages" and not isinstance(obj, Stage):
                raise PluginError(
                    f"plugin {_plugin!r} ({_plugin_dists.get(_plugin, 'unknown distribution')}) registered stage "
                    f"{name!r} as a {type(obj).__name__}, not a llama2rlhf.Stage: register({name!r}, Stage(run))"
                )
            if kind == "stages" and obj.summary_key is Stage.NAME:
                obj = dataclasses.replace(obj, summary_key=name)
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


def distribution_of(plugin: str) -> str | None:
    """The distribution that installed a loaded plugin (``llama2rlhf`` for the built-ins)."""
    get_plugin_manager()
    return _plugin_dists.get(plugin)


@functools.lru_cache(maxsize=None)
def version_of(distribution: str | None) -> str | None:
    """The installed version of a distribution, or None (not installed, or unknown)."""
    if not distribution:
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def node_options(kind: str, node: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(name, options, the options as plain JSON values) of a config node of ``kind``'s group.

    A structured node (a dataclass, or an OmegaConf node typed by one) gives its options
    typed by its fields; a plain mapping gives them as they are. ``name`` and the kind's
    ``framework_keys`` are not options.
    """
    from omegaconf import OmegaConf

    group = KINDS[kind].group
    if OmegaConf.is_config(node) and OmegaConf.is_missing(node, "name"):
        raise PluginError(f"{group}.name is not set; choose one of: {', '.join(sorted(registry(kind)))}")
    if OmegaConf.is_config(node):
        plain = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        typed = OmegaConf.to_object(node)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        plain = OmegaConf.to_container(OmegaConf.structured(node), resolve=True, enum_to_str=True)
        typed = node
    elif isinstance(node, Mapping):
        plain, typed = dict(node), dict(node)
    else:
        raise PluginError(f"the {group} config node must be a mapping with a name, got "
                          f"{type(node).__name__}")
    values = ({f.name: getattr(typed, f.name) for f in dataclasses.fields(typed)}
              if dataclasses.is_dataclass(typed) else dict(typed))
    name = values.pop("name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{group}.name must name a registered {KINDS[kind].label}, got {name!r}")
    skip = set(KINDS[kind].framework_keys)
    options = {k: v for k, v in values.items() if k not in skip}
    return name, options, {k: plain[k] for k in options}


def named(kind: str, name: str, options: Mapping[str, Any] | None = None) -> Selected:
    """The thing of ``kind`` registered as ``name``, with ``options`` (none by default): for
    things a list names (``pipeline.stages``) or the framework picks itself."""
    item = get(kind, name)
    options = dict(options or {})
    return Selected(kind, item.name, item.obj, item.plugin, item.distribution, version_of(item.distribution),
                    options, options)


def selected(kind: str, cfg: Any) -> Selected:
    """The thing of ``kind`` that ``cfg`` selects (``<group>.name``), with the other keys of
    its config node as its options."""
    if kind not in KINDS:
        raise KeyError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    group = KINDS[kind].group
    if group is None:
        raise KeyError(f"{kind} are not selected by a config group; use plugins.named({kind!r}, name)")
    name, options, recorded = node_options(kind, cfg[group] if isinstance(cfg, Mapping) else getattr(cfg, group))
    item = get(kind, name)
    return Selected(kind, item.name, item.obj, item.plugin, item.distribution, version_of(item.distribution),
                    options, recorded)


def register(plugin: Any, name: str, distribution: str | None = None) -> None:
    """Register a plugin object or module in the process's manager, as if ``distribution``
    had installed it (plugins defined in-process, tests); the registries are built anew."""
    get_plugin_manager().register(plugin, name=name)
    if distribution is not None:
        _plugin_dists[name] = distribution
    _registries.clear()


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
        version = version_of(dist)
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
    return sorted(out, key=lambda p: (p["distribution"] != BUILTIN_DISTRIBUTION, p["name"]))
