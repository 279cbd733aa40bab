"""Chat templates shipped with the package."""

from __future__ import annotations

from importlib import resources


def llama2_chat_template() -> str:
    """The Llama 2 chat template with TRL's ``{% generation %}`` markers."""
    return resources.files(__package__).joinpath("llama2_chat.jinja").read_text(encoding="utf-8")


def plain_chat_template() -> str:
    """A plain ``User: ... / Assistant: ...`` template that needs no BOS token, for reward
    models whose tokenizer ships no chat template (encoder classifiers, base decoders)."""
    return resources.files(__package__).joinpath("plain_chat.jinja").read_text(encoding="utf-8")
