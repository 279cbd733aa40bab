"""The plugin manager: built-ins and third-party packages, one registry per kind, and the
resolver that every call of a plugin's code goes through.

Built-in plugins are registered through the same manager as third-party ones; third-party
packages come in through the ``llama2rlhf`` entry-point group.

:func:`selected` is "the thing of kind K that the config selects, with its typed options"
(:func:`named` the same for a thing named elsewhere, as ``pipeline.stages`` names stages);
its :meth:`Selected.call` runs the thing with its options as keyword arguments, and a
third-party plugin that fails there is named in a one-line :class:`PluginError`;
:meth:`Selected.check` holds what it returned to its kind's contract (:class:`Returns`).
The other hooks (observers, logger hooks) go through :func:`call_hook`, one implementation
at a time, so that a failing or misbehaving one is named the same way.
:func:`option_problems` checks a run's plugin options before the run starts.

Environment variables:

* ``LLAMA2RLHF_DISABLE_AUTOLOAD=1``: do not load entry points; only the built-ins.
* ``LLAMA2RLHF_TRACE_HOOKS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from llama2rlhf import RewardCombiner, RewardLoss, Stage
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
    the keys of that group's base config class that the framework reads itself
    (documented there; never passed to the plugin as options), and how the core calls a
    registered thing: ``function(*inputs, **options)``."""

    hook: str
    group: str | None
    label: str
    framework_keys: tuple[str, ...] = ()
    function: str = "fn"
    inputs: tuple[str, ...] = ()

    @property
    def call_shape(self) -> str:
        return f"{self.function}({', '.join((*self.inputs, '**options'))})"


KINDS = {
    "reward_losses": Kind("register_reward_losses", "reward_loss", "reward loss", ("margin_scale",), "loss",
                          ("r_chosen", "r_rejected", "margin")),
    "samplers": Kind("register_samplers", "sampler", "sampler", (), "factory", ("model_path", "cfg")),
    "selectors": Kind("register_selectors", "selector", "selector", (), "select", ("candidates", "history")),
    "augmenters": Kind("register_augmenters", "augmenter", "augmenter", (), "augment", ("rows", "ctx")),
    "checkers": Kind("register_checkers", "checker", "checker", (), "make_check", ("cfg",)),
    "stages": Kind("register_stages", None, "stage", (), "run", ("ctx",)),
    "reward_combiners": Kind("register_reward_combiners", "reward", "reward combiner", ("whiten",), "fn",
                             ("scores", "is_safety")),
    "annotators": Kind("register_annotators", "annotator", "annotator", (), "factory", ("cfg", "world")),
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


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def describe_value(value: Any) -> str:
    """A returned value in a few words, for errors: its type, and its shape, size or value."""
    if value is None:
        return "None"
    kind = type(value).__name__
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # a tensor or an array, without importing either
        return f"{_a(kind)} of shape {tuple(shape)} ({value.dtype})"
    if isinstance(value, Mapping):
        keys = ", ".join(sorted(map(str, value))[:6])
        return f"{_a(kind)} with keys {keys or '(none)'}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return f"{_a(kind)} of {len(value)} item{'s' if len(value) != 1 else ''}"
    text = repr(value)
    return f"{_a(kind)} ({text if len(text) <= 40 else text[:37] + '...'})"


@dataclass(frozen=True)
class Returns:
    """What a registered thing, a method of what it made, or a hook must return.

    ``expected`` says it in words, for the error; ``problem(result, *inputs, **kw_inputs)``
    gets the call's own inputs (not the options), as the call passed them, and says in a
    few words what is wrong with ``result`` (:func:`describe_value` helps), or None. It runs on
    every call: types, lengths and shapes only, never a pass over values.
    """

    expected: str
    problem: Callable[..., str | None]


def _callable(obj: Any) -> Any:
    """The function a registered thing runs: a RewardLoss's, RewardCombiner's or Stage's own."""
    if isinstance(obj, (RewardLoss, RewardCombiner)):
        return obj.fn
    if isinstance(obj, Stage):
        return obj.run
    return obj


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

    @property
    def who(self) -> str:
        """``<kind> 'name' of plugin 'p' (distribution d)``: how errors name it."""
        return (f"{KINDS[self.kind].label} {self.name!r} of plugin {self.plugin!r} "
                f"(distribution {self.distribution or 'unknown'})")

    def _blamed(self, exc: Exception, passthrough: tuple[type[BaseException], ...] = ()) -> PluginError | None:
        """The PluginError that names this thing for ``exc``; None where ``exc`` passes as it
        is: an InputError (a PluginError already, or bad input the plugin named itself), a
        built-in's own error, an exception type in ``passthrough``."""
        if isinstance(exc, InputError) or self.builtin or isinstance(exc, passthrough):
            return None
        return PluginError(f"{self.who} failed: {type(exc).__name__}: {_one_line(exc)}")

    @contextmanager
    def blame(self, passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Re-raise a third-party plugin's failure inside the block as a one-line PluginError
        that names it; the built-ins' own errors, InputErrors (PluginErrors, and the
        ConfigErrors and DataErrors a plugin raises about its own options and files) and the
        exception types in ``passthrough`` (signals a plugin raises on purpose) pass through
        unchanged."""
        try:
            yield
        except Exception as exc:
            blamed = self._blamed(exc, passthrough)
            if blamed is None:
                raise
            raise blamed from exc

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """``obj(*args, **kwargs, **options)`` under :meth:`blame`. Options it cannot take
        (a ``TypeError`` that :meth:`option_problems` explains) are a PluginError naming the
        key, the built-ins' included: the options are the user's."""
        try:
            return self.obj(*args, **kwargs, **self.options)
        except Exception as exc:
            problems = self.option_problems() if isinstance(exc, TypeError) else []
            if problems:
                raise problems[0] from exc
            blamed = self._blamed(exc)
            if blamed is None:
                raise
            raise blamed from exc

    def check(self, returns: Returns, result: Any, *inputs: Any, **kw_inputs: Any) -> Any:
        """``result`` when it is what ``returns`` asks for; otherwise a one-line PluginError
        that names the thing, what it returned and what was expected. Built-ins' results are
        not checked."""
        return self._check(returns, result, inputs, kw_inputs)

    def _check(self, returns: Returns, result: Any, inputs: tuple, kw_inputs: Mapping[str, Any],
               method: str | None = None) -> Any:
        if self.builtin:
            return result
        try:
            problem = returns.problem(result, *inputs, **kw_inputs)
        except Exception:  # a result too odd for the check itself
            problem = describe_value(result)
        if problem is not None:
            source = f" from {method}()" if method else ""
            raise PluginError(f"{self.who} returned {problem}{source}; expected {returns.expected} "
                              f"(see {KINDS[self.kind].hook})")
        return result

    def wrap(self, product: Any, *methods: str, passthrough: tuple[type[BaseException], ...] = (),
             returns: Returns | Mapping[str, Returns] | None = None) -> Any:
        """What the thing made (a sampler, a check, an annotator) with its calls under
        :meth:`blame`: ``methods`` of an object, or the product itself when it is a bare
        callable and no methods are named; ``returns`` is what each call must return (a
        :class:`Returns` for a bare callable, ``{method: Returns}`` for methods). A context
        manager a method returns (``keep_prefixes()``) is entered and left under blame too.
        The built-ins' products come back as they are."""
        if self.builtin:
            return product
        if not methods:
            @functools.wraps(product)
            def blamed(*args: Any, **kwargs: Any) -> Any:
                with self.blame(passthrough):
                    result = product(*args, **kwargs)
                return result if returns is None else self._check(returns, result, args, kwargs)

            return blamed
        return Blamed(product, self, methods, passthrough, dict(returns or {}))

    def option_problems(self) -> list[PluginError]:
        """Why the options cannot be passed to the callable as the core calls it
        (``Kind.call_shape``), read from its signature: an option it has no parameter for,
        a parameter without a default that no option sets; empty when they fit (or the
        callable has no signature to read)."""
        kind = KINDS[self.kind]
        try:
            signature = inspect.signature(_callable(self.obj))
        except (TypeError, ValueError):
            return []
        params = list(signature.parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        inputs = {p.name for p in positional[:len(kind.inputs)]}
        own = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in inputs]
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        where = (f"{kind.label} {self.name!r} (plugin {self.plugin!r}, distribution "
                 f"{self.distribution or 'unknown'})")
        group = kind.group or kind.label
        names = ", ".join(p.name for p in own) or "(none)"
        problems = [PluginError(f"{group}.{key}: not an option of {where}; its options: {names}")
                    for key in self.options if not takes_any and key not in {p.name for p in own}]
        problems += [PluginError(f"{group}.{p.name}: {where} needs this option and it is not set; give it with "
                                 f"+{group}.{p.name}=<value>")
                     for p in own if p.default is p.empty and p.name not in self.options]
        if not problems:
            try:
                signature.bind(*kind.inputs, **self.options)
            except TypeError as exc:
                problems.append(PluginError(f"{where} cannot be called as {kind.call_shape}: {_one_line(exc)}"))
        return problems

    def record(self) -> dict[str, Any]:
        """The entry of ``summary.json``'s ``plugins``."""
        return {"name": self.name, "plugin": self.plugin, "distribution": self.distribution,
                "version": self.version, "options": dict(self.recorded)}


class Blamed:
    """A third-party plugin's product whose named methods run under its :meth:`Selected.blame`,
    their results checked (:meth:`Selected.check`) where a :class:`Returns` is given; every
    other attribute, read or set, is the product's own (``__wrapped__`` is the product)."""

    __slots__ = ("__wrapped__", "_selected", "_methods", "_passthrough", "_returns")

    def __init__(self, product: Any, selected: Selected, methods: tuple[str, ...],
                 passthrough: tuple[type[BaseException], ...] = (), returns: Mapping[str, Returns] | None = None):
        object.__setattr__(self, "__wrapped__", product)
        object.__setattr__(self, "_selected", selected)
        object.__setattr__(self, "_methods", frozenset(methods))
        object.__setattr__(self, "_passthrough", passthrough)
        object.__setattr__(self, "_returns", dict(returns or {}))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.__wrapped__, name)
        if name not in self._methods or not callable(attr):
            return attr
        selected, passthrough, returns = self._selected, self._passthrough, self._returns.get(name)

        @functools.wraps(attr)
        def blamed(*args: Any, **kwargs: Any) -> Any:
            with selected.blame(passthrough):
                result = attr(*args, **kwargs)
            if returns is not None:
                return selected._check(returns, result, args, kwargs, method=name)
            if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
                return _BlamedContext(result, selected, passthrough)
            return result

        return blamed

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    def __repr__(self) -> str:
        return f"Blamed({self.__wrapped__!r})"


class _BlamedContext:
    """A context manager a third-party product returned, entered and left under its blame;
    an error of the ``with`` block itself passes through it as it is."""

    def __init__(self, manager: Any, selected: Selected, passthrough: tuple[type[BaseException], ...]):
        self._manager, self._selected, self._passthrough = manager, selected, passthrough

    def __enter__(self) -> Any:
        with self._selected.blame(self._passthrough):
            return self._manager.__enter__()

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> Any:
        try:
            return self._manager.__exit__(typ, exc, tb)
        except Exception as raised:
            if raised is exc:
                raise
            with self._selected.blame(self._passthrough):
                raise


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
                f"{ep.value!r}) failed to import: {type(exc).__name__}: {_one_line(exc)}"
            ) from exc
        try:
            pm.register(module, name=ep.name)
            pm.check_pending()  # a function marked as a hook that no spec has: a misspelt name
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {ep.name!r} (distribution {dist or 'unknown'}, entry point {ep.value!r}) "
                              f"is not a valid llama2rlhf plugin: {_one_line(exc)}") from exc
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


@dataclass(frozen=True)
class Implementation:
    """One plugin's implementation of a hook, called on its own (:func:`implementations`)."""

    hook: str
    plugin: str
    distribution: str | None
    impl: Any  # pluggy's HookImpl

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def who(self) -> str:
        return f"hook {self.hook} of plugin {self.plugin!r} (distribution {self.distribution or 'unknown'})"

    def __call__(self, **kwargs: Any) -> Any:
        """The implementation with the arguments it declares (a hook implementation may take
        fewer than its spec gives, as pluggy allows)."""
        return self.impl.function(*(kwargs[name] for name in self.impl.argnames))


def implementations(hook: str) -> list[Implementation]:
    """Every loaded plugin's implementation of ``hook``, in the order pluggy calls them
    (``tryfirst``/``trylast`` honoured), each to be called on its own so that what it does
    is traced to its plugin. Hook wrappers are refused: the hooks here are not made for them."""
    pm = get_plugin_manager()
    out = []
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        dist = _plugin_dists.get(impl.plugin_name)
        if impl.hookwrapper or impl.wrapper:
            raise PluginError(f"plugin {impl.plugin_name!r} (distribution {dist or 'unknown'}) implements {hook} as "
                              "a hook wrapper, which llama2rlhf does not call: use a plain @hookimpl")
        out.append(Implementation(hook, impl.plugin_name, dist, impl))
    return out


def call_hook(hook: str, *, returns: Returns | None = None, **kwargs: Any) -> list[Any]:
    """Call ``hook`` (the observer and logger hooks of :mod:`hookspecs`) with ``kwargs``:
    every implementation on its own, in pluggy's order, and their results that are not
    None, in that order (what ``pm.hook.<hook>(**kwargs)`` returns). A third-party
    implementation that raises is a one-line PluginError naming the hook, its plugin and
    distribution (the built-ins' own errors pass as they are); one whose result breaks
    ``returns`` is one too. Traced like pluggy's own calls (``LLAMA2RLHF_TRACE_HOOKS``)."""
    hooktrace = get_plugin_manager().trace.root.get("hook")
    results = []
    for impl in implementations(hook):
        hooktrace(hook, {"plugin": impl.plugin, **kwargs})
        try:
            result = impl(**kwargs)
        except InputError:  # a PluginError already, or bad input the plugin named itself
            raise
        except Exception as exc:
            if impl.builtin:
                raise
            raise PluginError(f"{impl.who} failed: {type(exc).__name__}: {_one_line(exc)}") from exc
        hooktrace("finish", hook, "-->", result)
        if result is None:
            continue
        if returns is not None and not impl.builtin:
            try:
                problem = returns.problem(result, **kwargs)
            except Exception:
                problem = describe_value(result)
            if problem is not None:
                raise PluginError(f"{impl.who} returned {problem}; expected {returns.expected}")
        results.append(result)
    return results


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
    for impl in implementations(hook_name):
        plugin = impl.plugin

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
            impl(register=register)
        except InputError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r} ({impl.distribution or 'unknown distribution'}) failed in "
                f"{hook_name}: {type(exc).__name__}: {_one_line(exc)}"
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
    typed by its fields, then any key added to it (``+selector.alpha=1``) as it is; a plain
    mapping gives them as they are. ``name`` and the kind's ``framework_keys`` are not
    options. A dataclass that refuses the values (its ``__post_init__`` raises) is a
    PluginError naming the keys it refuses and the plugin.
    """
    from omegaconf import OmegaConf

    group = KINDS[kind].group
    if OmegaConf.is_config(node) and OmegaConf.is_missing(node, "name"):
        raise PluginError(f"{group}.name is not set; choose one of: {', '.join(sorted(registry(kind)))}")
    if OmegaConf.is_config(node):
        plain = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        typed = _to_object(kind, node, plain)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        plain = OmegaConf.to_container(OmegaConf.structured(node), resolve=True, enum_to_str=True)
        typed = node
    elif isinstance(node, Mapping):
        plain, typed = dict(node), dict(node)
    else:
        raise PluginError(f"the {group} config node must be a mapping with a name, got "
                          f"{type(node).__name__}")
    if dataclasses.is_dataclass(typed):
        values = {f.name: getattr(typed, f.name) for f in dataclasses.fields(typed)}
        values.update({k: v for k, v in plain.items() if k not in values})  # keys added to the node
    else:
        values = dict(typed)
    name = values.pop("name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{group}.name must name a registered {KINDS[kind].label}, got {name!r}")
    skip = set(KINDS[kind].framework_keys)
    options = {k: v for k, v in values.items() if k not in skip}
    return name, options, {k: plain[k] for k in options}


def _to_object(kind: str, node: Any, plain: dict[str, Any]) -> Any:
    """``OmegaConf.to_object(node)``; when the node's dataclass refuses its values, a
    PluginError naming the keys it refuses alone (each tried with the others at their
    defaults; all the changed ones when none fails alone), the thing and its plugin."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_object(node)
    except Exception as exc:
        schema = OmegaConf.get_type(node)
        if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
            raise
        group, kind_ = KINDS[kind].group, KINDS[kind]
        fields = {f.name for f in dataclasses.fields(schema)} - {"name"}
        defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=True, enum_to_str=True)
        changed = [k for k in plain if k in fields and plain[k] != defaults.get(k)]

        def refuses(key: str) -> bool:
            try:
                OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), {key: plain[key]}))
            except Exception:
                return True
            return False

        keys = [k for k in changed if refuses(k)] or changed
        item = registry(kind).get(plain.get("name"))
        who = (f"{kind_.label} {item.name!r} (plugin {item.plugin!r}, distribution {item.distribution or 'unknown'})"
               if item is not None else f"the {group} node {schema.__name__}")
        what = ", ".join(f"{group}.{k}={plain[k]}" for k in keys) or group
        raise PluginError(f"{what}: refused by {who}: {type(exc).__name__}: {_one_line(exc)}") from exc


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


def option_problems(cfg: Any, run_dir: Path, stages: list[str]) -> Iterable[InputError]:
    """The plugins a run will use, checked before it starts (a check of
    ``llama2rlhf.recipe.validate``): that every installed plugin loads and registers, and,
    for every kind the stages the run plans use
    (``Stage.uses``; all kinds for a stage that does not say), that the selected name is
    registered and its options fit: the node's dataclass accepts the values, and the
    callable can take the options as the core calls it (:meth:`Selected.option_problems`).
    One problem per bad key or name."""
    problems: list[InputError] = []
    try:
        get_plugin_manager()
    except InputError as exc:  # a plugin that does not import is all there is to say
        return [exc]
    try:
        registry("stages")
    except InputError as exc:  # a stage plugin whose register_stages fails: no stage can be looked up
        return [exc]
    kinds: dict[str, None] = {}
    for name in stages:
        try:
            stage = named("stages", name)
        except InputError:  # the config's own check names the list, the stage and the nearest match
            continue
        kinds.update(dict.fromkeys(KINDS if stage.obj.uses is None else stage.obj.uses))
    for kind in KINDS:
        if kind not in kinds or KINDS[kind].group is None:
            continue
        try:
            problems.extend(selected(kind, cfg).option_problems())
        except InputError as exc:
            problems.append(exc)
    return list({str(p): p for p in problems}.values())  # a registry that failed fails every lookup


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
