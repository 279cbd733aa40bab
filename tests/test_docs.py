"""The docs: docs/plugins.md documents every hook of hookspecs.py, with its signature and an
example; the mkdocs site builds without a warning, with every config key in its generated
reference and every hook in its plugin guide."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import logging
import re
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from llama2rlhf.config import Config
from llama2rlhf.plugins import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def hook_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, "llama2rlhf_spec")]


def sections() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^### `([a-z_]+)`\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_hook_has_a_section_with_its_signature_and_an_example():
    names = hook_names()
    assert "register_augmenters" in names and len(names) >= 11
    docs = sections()
    missing = sorted(set(names) - set(docs))
    assert not missing, f"hooks missing from {DOC}: {missing}"
    assert not set(docs) - set(names), "documented hooks that hookspecs.py does not define"
    for name in names:
        body = docs[name]
        signature = re.search(rf"^def {name}\(.*$", body, flags=re.M)
        assert signature, f"{name}: no signature line"
        documented = ast.parse(signature.group(0) + ": ...").body[0]
        assert [a.arg for a in documented.args.args] == list(inspect.signature(getattr(hookspecs, name)).parameters)
        examples = re.findall(r"```python\n(.*?)```", body, flags=re.S)
        assert len(examples) >= 1, f"{name}: no example"
        implemented = [node.name for ex in examples[1:] or examples for node in ast.walk(ast.parse(ex))
                       if isinstance(node, ast.FunctionDef)]
        assert name in implemented, f"{name}: the example does not implement the hook"


# --- the docs site (mkdocs.yml, docs/hooks.py) -------------------------------------------

ROOT = DOC.parents[1]


def load_hooks():
    spec = importlib.util.spec_from_file_location("llama2rlhf_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as ``mkdocs build --strict`` writes it: any warning (an undocumented config
    key, a broken link) fails the build."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    return out


def config_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass, nested nodes included."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        keys.append(path)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += config_keys(hints[f.name], path + ".")
    return keys


def typed_node_keys() -> list[str]:
    """The keys of the typed nodes the built-ins store in Hydra's ConfigStore: in a plugin
    group, those a node adds to the group's base schema; in another group, all."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from llama2rlhf import config, plugins

    bases = {**config.GROUP_SCHEMAS, "logger": config.LoggerConfig}
    keys = []
    plugins.reset()
    try:
        config.store_configs()
        for group, entries in ConfigStore.instance().repo.items():
            if group == "hydra" or not isinstance(entries, dict):
                continue
            base_fields = {f.name for f in dataclasses.fields(bases[group])} if group in bases else set()
            for node in entries.values():
                cls = OmegaConf.get_type(node.node)
                if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__.startswith("llama2rlhf."):
                    keys += [f"{group}.{f.name}" for f in dataclasses.fields(cls) if f.name not in base_fields]
    finally:
        plugins.reset()
    return keys


def test_every_config_key_is_in_the_generated_reference(site, monkeypatch):
    monkeypatch.setenv("LLAMA2RLHF_DISABLE_AUTOLOAD", "1")
    html = (site / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    keys = config_keys(Config) + typed_node_keys()
    assert {"model.kind", "rs.train.learning_rate", "toyworld.families", "seed", "reward.safety_threshold",
            "sampler.dialogue_cache_mb", "annotator.strength_quantiles", "logger.mode"} <= set(keys)
    missing = [k for k in keys if f"<code>{k}</code>" not in html]
    assert not missing, f"keys missing from the configuration reference: {missing}"


def test_the_reference_shows_each_keys_doc_and_the_default_runs_value(site):
    html = (site / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    row = re.search(r"<td><code>sft\.learning_rate</code></td>(.*?)</tr>", html, flags=re.S).group(1)
    assert "2e-05" in row and "default run: <code>0.002</code>" in row  # schema default, conf/pipeline/toy.yaml's
    assert "peak learning rate" in row  # TrainConfig's comment, inherited by SFTStageConfig


def test_every_hook_is_in_the_built_plugin_guide(site):
    html = (site / "plugins" / "index.html").read_text(encoding="utf-8")
    for name in hook_names():
        assert f'<h3 id="{name}">' in html, name


def test_every_plugin_kind_has_its_base_config_class_listed(site):
    from llama2rlhf import plugins
    from llama2rlhf.config import GROUP_SCHEMAS

    html = (site / "plugin-configs" / "index.html").read_text(encoding="utf-8")
    for kind, spec in plugins.KINDS.items():
        assert f"<code>{spec.hook}</code>" in html, kind
        if spec.group:
            assert f"<code>{GROUP_SCHEMAS[spec.group].__name__}</code>" in html, spec.group


# a dataclass for the doc extraction below; its comments are what is tested
@dataclass
class _Base:
    """Docs from everywhere.

    Parameters:
        from_docstring (`int`):
            Documented in the docstring
            over two lines.
    """

    # documented above,
    # over two lines
    above: int = 1
    trailing: str = "x"  # documented at the end of its line

    undocumented: int = 0
    from_docstring: int = 2
    helped: list[int] = field(default_factory=list, metadata={"help": "Documented in metadata."})


@dataclass
class _Child(_Base):
    above: int = 5
    extra: Optional[int] = None  # the child's own


def test_a_fields_doc_comes_from_its_comments_metadata_docstring_or_base():
    hooks = load_hooks()
    assert hooks.field_doc(_Base, "above") == "documented above, over two lines"
    assert hooks.field_doc(_Base, "trailing") == "documented at the end of its line"
    assert hooks.field_doc(_Base, "from_docstring") == "Documented in the docstring over two lines."
    assert hooks.field_doc(_Base, "helped") == "Documented in metadata."
    assert hooks.field_doc(_Child, "above") == "documented above, over two lines"  # a new default only
    assert hooks.field_doc(_Child, "extra") == "the child's own"
    assert hooks.field_doc(_Base, "undocumented") == ""  # a blank line parts it from the comment above


@dataclass
class _WithUndocumented(Config):
    mystery: int = 3


def test_an_undocumented_config_key_is_a_build_warning(monkeypatch, caplog):
    from llama2rlhf import config

    monkeypatch.setattr(config, "Config", _WithUndocumented)
    hooks = load_hooks()
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.llama2rlhf"):
        page = hooks.configuration_page()
    assert "<code>mystery</code>" in page
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"config key mystery has no doc: add a comment above _WithUndocumented.mystery in "
                        f"{Path(__file__).relative_to(ROOT)}"]


def test_a_node_stored_in_a_group_of_its_own_is_listed_with_its_keys():
    # the gatt package stores its node in a group of its own, as a plugin would
    page = load_hooks().configuration_page()
    section = page[page.index("## `gatt=default`"):]
    assert "<code>gatt.eval_turns</code> | `int` | `20` |" in section


def test_links_to_repository_files_become_text_and_missing_ones_warn(caplog):
    hooks = load_hooks()
    docs = ROOT / "docs"
    md = "[the example](../plugins/llama2rlhf-example) and [`Makefile`](../Makefile) and [a page](recipe.md)"
    assert hooks.repository_links(md, "index.md", docs) == (
        "the example (`plugins/llama2rlhf-example`) and `Makefile` and [a page](recipe.md)")
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.llama2rlhf"):
        hooks.repository_links("[gone](../src/llama2rlhf/nowhere.py)", "index.md", docs)
    assert "index.md links to ../src/llama2rlhf/nowhere.py, which is not in the repository" in caplog.text


def test_readme_is_short_and_the_repository_points_nowhere_outside_itself():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 250
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    outside = ["../" + "shared", "/" + "work/"]
    found = [f"{name}: {needle}" for name in tracked.stdout.splitlines() if (ROOT / name).is_file()
             for needle in outside if needle in (ROOT / name).read_text(encoding="utf-8", errors="ignore")]
    assert not found, found
