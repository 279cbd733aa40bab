"""``checker=example_mentions``: the rule, the keys it reads, and its selection by name."""

from __future__ import annotations

import random

from llama2rlhf.gatt.dialogue import Instruction, ListConstraints
from llama2rlhf_example.checkers import mentions

NAPOLEON_CHESS = Instruction("Always act as Napoleon from now on. You enjoy chess; let it show in every answer.",
                             "Figure: Napoleon. Hobby: chess.", ("persona:Napoleon", "hobby:chess"))


def test_rejects_a_reply_that_misses_a_part_and_cannot_tell_for_languages():
    assert mentions(NAPOLEON_CHESS, "As NAPOLEON, between two games of Chess: 4.") is True
    assert mentions(NAPOLEON_CHESS, "As Napoleon: 4.") is False
    assert mentions(NAPOLEON_CHESS, "4, and chess.") is False
    french = Instruction("Always answer in French.", "Language: French.", ("language:French",))
    assert mentions(french, "Quatre.") is None


def test_list_instructions_carry_the_keys_it_reads():
    source = ListConstraints(["Napoleon"], ["French"], ["chess"], max_constraints=3)
    drawn = [source.sample(random.Random(i)) for i in range(20)]
    assert {k for ins in drawn for k in ins.keys} == {"persona:Napoleon", "language:French", "hobby:chess"}
    for ins in drawn:
        wanted = [k.split(":", 1)[1] for k in ins.keys if not k.startswith("language:")]
        assert mentions(ins, " ".join(["ok", *wanted])) is (True if wanted else None)


def test_checker_name_selects_it_and_the_source_checker_cannot_check_list_instructions(fresh_plugins):
    from omegaconf import OmegaConf

    from llama2rlhf.config import Config
    from llama2rlhf.gatt.augmenter import load_checker
    from llama2rlhf.gatt.config import GattConfig

    cfg = OmegaConf.structured(Config)
    cfg.checker.name = "example_mentions"
    check = load_checker(cfg)
    assert check(NAPOLEON_CHESS, "Napoleon plays chess.") is True and check(NAPOLEON_CHESS, "No.") is False
    cfg.checker.name = "source"
    cfg.gatt = GattConfig(constraints="list")
    assert load_checker(cfg)(NAPOLEON_CHESS, "No.") is None  # the list source cannot check
