"""docs/plugins.md documents every hook of hookspecs.py, with its signature and an example."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

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
