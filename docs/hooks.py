"""mkdocs hooks (``hooks:`` in mkdocs.yml): the pages generated from the code at build time.

* ``reference/configuration.md``: every key of ``llama2rlhf.config.Config`` and of the
  built-in plugins' nodes in Hydra's ConfigStore, with its dotted path, type, default (and
  the default run's value where ``conf/`` changes it) and doc. A field's doc is its
  ``metadata["help"]``, else the comment lines right above it or at the end of its line,
  else its entry in the class docstring's ``Parameters:`` section; a subclass inherits the
  doc of a field it only gives a new default. A key with no doc is a build warning, so
  ``mkdocs build --strict`` fails on it.
* ``plugin-configs.md``: the base config class of each plugin kind.

Links from a page to files of the repository outside ``docs/`` (the source, the example
plugin) work where the Markdown is read in the repository; on the site they become plain
code text, and one to a path that does not exist is a build warning.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import logging
import os
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PAGE = "reference/configuration.md"
PLUGIN_CONFIGS_PAGE = "plugin-configs.md"

# warnings under the "mkdocs" logger count for --strict
log = logging.getLogger("mkdocs.hooks.llama2rlhf")


def _import_from_this_checkout() -> None:
    """Document the source next to this file, not whichever llama2rlhf is installed."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


# --- field docs -----------------------------------------------------------------------


def _clean(lines: list[str]) -> str:
    return " ".join(line.strip().lstrip("#").strip() for line in lines).strip()


def _docstring_params(cls: type) -> dict[str, str]:
    """Entries of a ``Parameters:`` / ``Args:`` / ``Attributes:`` section of the class
    docstring (Hugging Face's style: ``name (`type`, ...):`` then indented text)."""
    doc = _own_docstring(cls)
    out: dict[str, str] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() not in ("Parameters:", "Args:", "Attributes:"):
            continue
        indent = len(line) - len(line.lstrip())
        name, body, body_depth = None, [], 0
        for entry in lines[i + 1:]:
            if not entry.strip():
                continue
            depth = len(entry) - len(entry.lstrip())
            if depth <= indent:
                break
            match = re.match(r"(\w+) \(.*\):\s*$", entry.strip())
            if match and (name is None or depth < body_depth):  # a new entry, not a line of one
                if name:
                    out[name] = _clean(body)
                name, body, body_depth = match.group(1), [], depth + 1
            elif name:
                body.append(entry)
        if name:
            out[name] = _clean(body)
    return out


def own_field_docs(cls: type) -> dict[str, str]:
    """The docs of the fields that ``cls`` itself declares (not its bases)."""
    own = set(cls.__dict__.get("__annotations__", {}))
    docs: dict[str, str] = {}
    for name in own:
        f = cls.__dataclass_fields__.get(name) if dataclasses.is_dataclass(cls) else None
        help_text = f.metadata.get("help") if f is not None else None
        if help_text:
            docs[name] = str(help_text).strip()
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        source = ""
    if source:
        lines = source.splitlines()
        comments: dict[int, str] = {}  # line number -> comment token
        code_lines: set[int] = set()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                                  tokenize.ENDMARKER):
                code_lines.update(range(tok.start[0], tok.end[0] + 1))
        body = ast.parse(source).body[0].body
        for node in body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            name = node.target.id
            above = []
            line = node.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, lines[line - 1])
                line -= 1
            trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1)
                        if n in comments and n in code_lines]
            text = _clean(above + trailing)
            if text and name not in docs:
                docs[name] = text
    for name, text in _docstring_params(cls).items():
        if name in own and text:
            docs.setdefault(name, text)
    return docs


def field_doc(cls: type, name: str) -> str:
    """The doc of field ``name`` of dataclass ``cls``: its own, else the nearest base's."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            doc = own_field_docs(klass).get(name)
            if doc:
                return doc
    return ""


def _own_docstring(cls: type) -> str:
    """The docstring written in the class, not the signature dataclasses puts there."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def class_doc(cls: type) -> str:
    """The class docstring up to its ``Parameters:`` section, as one paragraph per blank line."""
    doc = _own_docstring(cls)
    doc = re.split(r"^(?:Parameters|Args|Attributes):\s*$", doc, flags=re.M)[0]
    return "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n") if p.strip())


# --- rendering ------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Markdown-safe text for a table cell: code spans kept as they are (the tables
    extension reads a ``|`` inside one as text), Markdown's special characters escaped
    outside them."""
    parts = re.split(r"(``.+?``|`[^`]+`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append("`" + part.strip("`") + "`")
        else:
            out.append(part.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")
                       .replace("_", "\\_"))
    return "".join(out)


def type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def render_value(value: Any) -> str:
    """A value as it is written on the command line (Hydra's override syntax)."""
    from omegaconf import MISSING

    if value is MISSING or value == "???":
        return "???"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if value and not re.search(r"[\s,:\[\]{}]", value) else repr(value)
    return repr(value)


def default_of(f: dataclasses.Field) -> Any:
    from omegaconf import MISSING

    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


class Key:
    """One config key as the reference lists it (a plain class: mkdocs loads this file
    without putting it in ``sys.modules``, which dataclasses need)."""

    def __init__(self, path: str, type: str, default: str, doc: str, owner: type) -> None:
        self.path, self.type, self.default, self.doc, self.owner = path, type, default, doc, owner
        self.run_default: str | None = None


def walk(cls: type, prefix: str = "", doc: str = "") -> Iterator[tuple[str, type, str, list[Key]]]:
    """``(section path, class, doc of the field holding it, keys)`` for ``cls`` and, depth
    first, every nested dataclass."""
    keys: list[Key] = []
    nested = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        hint = hints.get(f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            nested.append((path, hint, field_doc(cls, f.name)))
            continue
        keys.append(Key(path, type_name(f.type), render_value(default_of(f)), field_doc(cls, f.name), cls))
    yield prefix.rstrip("."), cls, doc, keys
    for path, hint, hint_doc in nested:
        yield from walk(hint, path + ".", hint_doc)


def _table(keys: list[Key], with_run: bool) -> list[str]:
    head = ["| key | type | default | |", "| --- | --- | --- | --- |"]
    rows = []
    for k in keys:
        default = f"`{k.default}`"
        if with_run and k.run_default is not None and k.run_default != k.default:
            default += f"<br>default run: `{k.run_default}`"
        rows.append(f"| <code>{k.path}</code> | `{k.type}` | {default} | {_escape(k.doc)} |")
    return head + rows


def _warn_undocumented(keys: list[Key]) -> None:
    for k in keys:
        if k.doc:
            continue
        name = k.path.rsplit(".", 1)[-1]
        # the class that declares the field first: a doc there serves every subclass
        declared = [c for c in k.owner.__mro__ if name in c.__dict__.get("__annotations__", {})]
        owner = declared[-1] if declared else k.owner
        source = inspect.getsourcefile(owner)
        rel = os.path.relpath(source, ROOT) if source else owner.__module__
        log.warning("config key %s has no doc: add a comment above %s.%s in %s", k.path, owner.__qualname__, name, rel)


@contextlib.contextmanager
def builtins_only() -> Iterator[None]:
    """The built-in plugins alone, with the config store filled from them: the reference
    is the same whatever else is installed."""
    import copy

    from hydra.core.config_store import ConfigStore

    from llama2rlhf import config, plugins

    # the store is process-wide: nodes that installed plugins stored earlier in this
    # process would otherwise show up too
    store = ConfigStore.instance()
    ours = [k for k in store.repo if k != "hydra"]  # Hydra's own nodes stay as they are
    saved = {k: copy.deepcopy(store.repo[k]) for k in ours}
    before = os.environ.get(plugins.DISABLE_AUTOLOAD_ENV)
    os.environ[plugins.DISABLE_AUTOLOAD_ENV] = "1"
    plugins.reset()
    for key in ours:
        del store.repo[key]
    try:
        config.store_configs()
        yield
    finally:
        for key in [k for k in store.repo if k != "hydra"]:
            del store.repo[key]
        store.repo.update(saved)
        plugins.reset()
        if before is None:
            os.environ.pop(plugins.DISABLE_AUTOLOAD_ENV, None)
        else:
            os.environ[plugins.DISABLE_AUTOLOAD_ENV] = before


def base_schema(group: str) -> type | None:
    """The dataclass every node of a plugin group subclasses; None for another group."""
    from llama2rlhf import config

    return {**config.GROUP_SCHEMAS, "logger": config.LoggerConfig}.get(group)


def typed_nodes() -> dict[str, list[tuple[str, type]]]:
    """The typed nodes in Hydra's ConfigStore, by group (call inside ``builtins_only``):
    in a plugin group, those whose class adds keys to the group's base schema; in any other
    group (a node that a package stores for a key of its own), all of them."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    out: dict[str, list[tuple[str, type]]] = {}
    for group, entries in sorted(ConfigStore.instance().repo.items()):
        if group == "hydra" or not isinstance(entries, dict):
            continue
        base = base_schema(group)
        for file, node in sorted(entries.items()):
            if not hasattr(node, "node"):
                continue
            cls = OmegaConf.get_type(node.node)
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or cls is base:
                continue
            if base is None or issubclass(cls, base):
                out.setdefault(group, []).append((file.removesuffix(".yaml"), cls))
    return out


def _store_group(group: str) -> list[str]:
    from hydra.core.config_store import ConfigStore

    return list(ConfigStore.instance().repo.get(group, {}))


def default_run_config() -> Any:
    """The default run's config (``llama2rlhf`` with no overrides), unresolved."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("llama2rlhf.config.conf", version_base="1.3"):
            return compose("config")
    finally:
        GlobalHydra.instance().clear()


def run_value(cfg: Any, path: str) -> str | None:
    """Key ``path`` of ``cfg`` as the reference writes it; None where ``cfg`` has no such key."""
    from omegaconf import OmegaConf

    absent = object()
    value = OmegaConf.select(cfg, path, default=absent, throw_on_missing=False)
    if value is absent:
        return None
    return render_value(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def configuration_page() -> str:
    _import_from_this_checkout()
    from llama2rlhf import config

    with builtins_only():
        run = default_run_config()
        nodes = typed_nodes()
    lines = [
        "# Configuration reference",
        "",
        "Every key of the configuration, generated from the config dataclasses in "
        "`llama2rlhf.config` (and the built-in plugins' own nodes) when the docs are built. "
        "Set any of them on the command line as a Hydra override, `llama2rlhf KEY=VALUE ...`; "
        "`llama2rlhf --cfg job` prints the composed config without running anything.",
        "",
        "*default* is the schema's default, which follows the paper for real models; "
        "*default run* is the value the default run (`llama2rlhf` with no overrides: "
        "`conf/config.yaml` and `conf/pipeline/toy.yaml`) uses where that differs. "
        "`???` marks a value that must be given (for the plugin groups, a config file or the "
        "defaults list gives it).",
        "",
    ]
    all_keys: list[Key] = []
    top: list[Key] = []
    sections = []
    for path, cls, field_text, keys in walk(config.Config):
        for k in keys:
            k.run_default = run_value(run, k.path)
        all_keys.extend(keys)
        if not path:
            top = keys
            continue
        sections.append((path, cls, field_text, keys))
    for path, cls, field_text, keys in sections:
        lines += [f"## `{path}`", ""]
        if field_text:
            lines += [_escape(field_text[0].upper() + field_text[1:]) + ".", ""]
        if path in config.PLUGIN_GROUPS:
            lines += [f"Selected with `{path}=<name>`; the keys below are every option's, "
                      "and a plugin's node may add more ([below](#plugin-options)).", ""]
        doc = class_doc(cls)
        lines += [f"`{cls.__module__}.{cls.__qualname__}`" + (f": {_escape_par(doc)}" if doc else ""), ""]
        lines += _table(keys, with_run=True) + [""]
    for k in top:
        if k.path in nodes:  # a node stored in a group of its own: its keys are listed below
            k.run_default = None
    lines += ["## Top-level keys", ""] + _table(top, with_run=True) + [""]
    lines += [
        "## Plugin options",
        "",
        "Options that a plugin's own node adds to its group, set once that plugin is "
        "selected (e.g. `reward=llama2 reward.safety_threshold=0.2`). Installed third-party "
        "plugins add theirs the same way (`llama2rlhf GROUP=NAME --cfg job` shows them).",
        "",
    ]
    own_nodes = []  # nodes of keys that are not plugin groups: listed beside the others
    for group, group_nodes in nodes.items():
        base = base_schema(group)
        for name, cls in group_nodes:
            base_fields = {f.name for f in dataclasses.fields(base)} if base else set()
            keys = [Key(f"{group}.{f.name}", type_name(f.type), render_value(default_of(f)), field_doc(cls, f.name), cls)
                    for f in dataclasses.fields(cls) if f.name not in base_fields]
            selected = run_value(run, f"{group}.name") == name if base else True
            for k in keys:
                k.run_default = run_value(run, k.path) if selected else None
            all_keys.extend(keys)
            doc = class_doc(cls)
            intro = [f"`{cls.__module__}.{cls.__qualname__}`" + (f": {_escape_par(doc)}" if doc else ""), ""]
            if base:
                lines += [f"### `{group}={name}`", ""] + intro + _table(keys, with_run=True) + [""]
            else:
                own_nodes += [f"## `{group}`" if name == group else f"## `{group}={name}`", ""]
                own_nodes += intro + _table(keys, with_run=True) + [""]
    lines += own_nodes
    _warn_undocumented(all_keys)
    return "\n".join(lines)


def _escape_par(text: str) -> str:
    """A docstring paragraph as Markdown: RST double backticks become code spans."""
    return re.sub(r"``(.+?)``", r"`\1`", text)


def plugin_configs_page() -> str:
    _import_from_this_checkout()
    from llama2rlhf import config, plugins

    with builtins_only():
        nodes = typed_nodes()
        names = {kind: sorted(plugins.registry(kind)) for kind in plugins.KINDS}
        loggers = sorted({name.removesuffix(".yaml") for name in _store_group("logger")}
                         | {p.stem for p in (ROOT / "src/llama2rlhf/config/conf/logger").glob("*.yaml")})
    lines = [
        "# Plugin config classes",
        "",
        "The config group that selects each kind of plugin, and the dataclass in "
        "`llama2rlhf.config` that a plugin's own node subclasses in `register_configs` "
        "(with `name` set to the registered name; its other fields reach the plugin as typed "
        "keyword arguments, but the keys its base class says the framework reads). Generated from `llama2rlhf.plugins.KINDS` and `llama2rlhf.config.GROUP_SCHEMAS` "
        "when the docs are built.",
        "",
        "| kind | hook | selected by | base config class | built-in names | built-in typed nodes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, spec in plugins.KINDS.items():
        hook, group = spec.hook, spec.group
        base = config.GROUP_SCHEMAS.get(group) if group else None
        where = f"`{group}=<name>`" if group else "`pipeline.stages`, `pipeline.round_stages`, `pipeline.ppo_stages`"
        base_name = f"`{base.__name__}`" if base else "none (registered as `llama2rlhf.Stage`; reads `ctx.cfg`)"
        typed = ", ".join(f"`{n}` (`{c.__name__}`)" for n, c in nodes.get(group, [])) if group else ""
        lines.append(f"| {kind} | `{hook}` | {where} | {base_name} | "
                     f"{', '.join(f'`{n}`' for n in names[kind])} | {typed or '-'} |")
    logger_typed = ", ".join(f"`{n}` (`{c.__name__}`)" for n, c in nodes.get("logger", []))
    lines.append(f"| logger (observer hooks) | `on_stage_start`, `on_stage_end`, `on_round_end`, `on_run_end`, "
                 f"`trainer_report_to`, `trainer_callbacks` | "
                 f"`logger=<name>` | `LoggerConfig` | {', '.join(f'`{n}`' for n in loggers)} | {logger_typed or '-'} |")
    lines += [
        "",
        "Each base class's keys, and the typed nodes' extra ones, are in the "
        "[configuration reference](reference/configuration.md).",
        "",
    ]
    for spec in plugins.KINDS.values():
        group = spec.group
        base = config.GROUP_SCHEMAS.get(group) if group else None
        if base is None:
            continue
        lines += [f"## `{base.__name__}` ({group})", "", _escape_par(class_doc(base)) or "", ""]
        lines += [f"- <code>{group}.{f.name}</code> (`{type_name(f.type)}`): {_escape(field_doc(base, f.name))}"
                  for f in dataclasses.fields(base)]
        lines.append("")
    lines += ["## `LoggerConfig` (logger)", "", _escape_par(class_doc(config.LoggerConfig)) or "", ""]
    lines += [f"- <code>logger.{f.name}</code> (`{type_name(f.type)}`): {_escape(field_doc(config.LoggerConfig, f.name))}"
              for f in dataclasses.fields(config.LoggerConfig)]
    return "\n".join(lines) + "\n"


# --- links to the repository ----------------------------------------------------------

LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def repository_links(markdown: str, page_path: str, docs_dir: Path) -> str:
    """Links that leave ``docs/`` for a file of the repository become code text on the site;
    a link to a path that does not exist is a warning."""

    def replace(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:|#|/", target):
            return match.group(0)
        path = target.split("#", 1)[0]
        resolved = (docs_dir / Path(page_path).parent / path).resolve()
        try:
            resolved.relative_to(docs_dir.resolve())
            return match.group(0)
        except ValueError:
            pass
        if not resolved.exists():
            log.warning("%s links to %s, which is not in the repository", page_path, target)
            return match.group(0)
        rel = resolved.relative_to(ROOT).as_posix()
        return text if text.startswith("`") else f"{text} (`{rel}`)"

    return LINK.sub(replace, markdown)


# --- mkdocs events --------------------------------------------------------------------


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, CONFIG_PAGE, content=configuration_page()))
    files.append(File.generated(config, PLUGIN_CONFIGS_PAGE, content=plugin_configs_page()))
    return files


def on_page_markdown(markdown, page, config, files):
    return repository_links(markdown, page.file.src_uri, Path(config["docs_dir"]))
