"""Ghost Attention's config node, ``gatt`` (paper 3.3): the dialogues the ``gatt`` augmenter
samples for rejection sampling's fine-tuning data, and the multi-turn evaluation.

The gatt package stores the node itself, through ``register_configs``
(:func:`store_config`), as any plugin stores its own; ``conf/config.yaml`` selects it in
its defaults. ``augmenter=gatt`` switches the augmentation on (``augmenter=none``: off);
the evaluation reads its ``eval_*`` fields whatever the augmenter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hydra.core.config_store import ConfigStore

GROUP = "gatt"
NAME = "default"  # conf/config.yaml's defaults: `- gatt: default`


@dataclass
class GattConfig:
    """Ghost Attention (paper 3.3): ``gatt.<field>=...`` on the command line."""

    # the first RLHF round whose fine-tuning data gets GAtt dialogues; Llama 2 applied GAtt
    # after RLHF-V3, once the policy could hold a conversation
    start_round: int = 4
    # dialogues sampled per round, each giving one training example
    n_dialogues: int = 1000
    # each dialogue has a turn count drawn from [min_turns, max_turns]; its example teaches
    # the reply to its last turn, so longer dialogues teach holding the instruction longer
    min_turns: int = 2
    max_turns: int = 20  # the most user turns of a dialogue
    # where instructions come from: "toy", the toy world's verifiable constraints of
    # toy_kinds; "list", random combinations of figures, languages and hobbies (real data)
    constraints: str = "toy"
    toy_kinds: list[str] = field(default_factory=lambda: ["persona", "language", "hobby"])  # constraints=toy
    # instructions combine 1..max_constraints kinds, as the paper combined them at random
    max_constraints: int = 2
    # constraints=list: the paper's kinds of instruction, in its wording
    figures: list[str] = field(default_factory=lambda: ["Napoleon", "Marie Curie", "Shakespeare", "Cleopatra"])
    languages: list[str] = field(default_factory=lambda: ["French", "Spanish", "German", "Italian"])  # constraints=list
    hobbies: list[str] = field(default_factory=lambda: ["tennis", "chess", "gardening", "jazz"])  # constraints=list
    # share of training system prompts given in the short form ("Figure: Napoleon."), so the
    # model learns both; the paper shortened half of them
    shorten: float = 0.5
    # where the checker can tell (the toy world's constraints; free-text lists need a
    # checker plugin): sample samples_per_turn replies per turn, keep the first that follows
    # the instruction, and end the dialogue when none does, so no example teaches a reply
    # that broke it
    filter: bool = True
    samples_per_turn: int = 4  # replies drawn per turn with filter
    # with filter: draw this many replies per turn first, and the rest of samples_per_turn
    # only for the dialogues none of them followed; the kept reply follows the same rule (the
    # first that follows, of up to samples_per_turn), for fewer samples. 0: all at once
    first_draw: int = 0
    # of the last turn's samples that follow the instruction, keep the one the round's
    # reward scores best rather than the first: the last reply is what the example teaches,
    # and following the instruction does not make it right. Needs the round's reward models
    rank_last_turn: bool = True
    # sampling of the dialogues' replies
    temperature: float = 0.7
    max_new_tokens: int = 128  # longest reply per turn
    # dialogues longer than this (tokens) lose whole middle turns, never the system prompt,
    # which carries the instruction
    max_length: int = 4096
    # the round's dialogues are sampled once: the rejection sampling after PPO fine-tunes a
    # model that already learned them through the RS model, and takes them again instead of
    # sampling as many more from the PPO model. false: sample afresh
    once_per_round: bool = True
    # the multi-turn evaluation (paper Table 30): adherence to a system instruction at every
    # turn up to eval_turns (0: no evaluation), on eval_dialogues held-out dialogues,
    # answered greedily by the model GAtt started from and by the latest policy
    eval_turns: int = 20
    eval_dialogues: int = 100  # held-out dialogues of the evaluation
    # evaluation dialogues longer than this (tokens) lose middle turns, as in training
    eval_max_length: int = 4096
    # measure it in the last round only (with the baseline), or in every round from
    # start_round on: each measurement is eval_dialogues x eval_turns greedy replies
    eval_every_round: bool = False


def store_config(config_store: "ConfigStore") -> None:
    """Store the ``gatt`` node (:class:`GattConfig`) as group ``gatt``, option ``default``."""
    config_store.store(group=GROUP, name=NAME, node=GattConfig)
