"""The example plugin's reward loss and reward combiner, its configs, and its registration.

A template for a plugin's own tests: check the math against values worked out by hand,
then check the core's registry sees the plugin under its entry-point name.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llama2rlhf import RewardLoss
from llama2rlhf.config import RewardLossConfig
from llama2rlhf.data.strength import MARGINS_SMALL
from llama2rlhf_example import plugin  # noqa: E402

R_CHOSEN = [2.0, 0.0, 1.0]
R_REJECTED = [0.0, 0.5, 1.0]  # r_c - r_r = [2, -0.5, 0]


def t(values):
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize(
    ("margin", "width", "expected"),
    [
        # relu(1 - [2, -0.5, 0]) = [0, 1.5, 1]
        (None, 1.0, (0 + 1.5 + 1) / 3),
        # relu(0.5 - [2, -0.5, 0]) = [0, 1, 0.5]
        (None, 0.5, (0 + 1 + 0.5) / 3),
        # relu(1 + [1, 0, 1/3] - [2, -0.5, 0]) = [0, 1.5, 4/3]
        ([1.0, 0.0, 1.0 / 3.0], 1.0, (0 + 1.5 + 4.0 / 3.0) / 3),
        # relu(2.5 + [1, 2/3, 0] - [2, -0.5, 0]) = [1.5, 11/3, 2.5]
        ([1.0, 2.0 / 3.0, 0.0], 2.5, (1.5 + 11.0 / 3.0 + 2.5) / 3),
        # width 0, no margin: relu(-[2, -0.5, 0]) = [0, 0.5, 0]
        (None, 0.0, 0.5 / 3),
    ],
)
def test_hinge_loss_matches_hand_computed_values(margin, width, expected):
    m = None if margin is None else t(margin)
    loss = plugin.hinge_loss(t(R_CHOSEN), t(R_REJECTED), m, width=width)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_default_width_is_one():
    assert plugin.hinge_loss(t(R_CHOSEN), t(R_REJECTED), None).item() == pytest.approx(2.5 / 3, abs=1e-6)


def test_zero_loss_once_the_gap_is_wide_enough():
    loss = plugin.hinge_loss(t([5.0, 4.0]), t([0.0, 0.0]), t([1.0, 2.0]), width=1.0)
    assert loss.item() == 0.0


def test_gradient_only_from_pairs_inside_the_hinge():
    rc = t(R_CHOSEN).requires_grad_()
    plugin.hinge_loss(rc, t(R_REJECTED), None, width=1.0).backward()
    # first pair is outside the hinge (gap 2 > 1): no gradient; the others pull r_c up
    assert rc.grad.tolist() == pytest.approx([0.0, -1 / 3, -1 / 3])


def test_registered_loss_is_called_the_way_the_reward_stage_calls_it():
    """The reward stage calls ``loss(r_c, r_r, margin, **options)`` with the config's extras."""
    captured = {}

    def register(name, obj):
        captured[name] = obj

    plugin.register_reward_losses(register)
    assert list(captured) == ["example_hinge"]
    loss = captured["example_hinge"]
    assert isinstance(loss, RewardLoss)
    assert dict(loss.margins) == MARGINS_SMALL
    options = {"width": 0.5}
    assert loss(t(R_CHOSEN), t(R_REJECTED), None, **options).item() == pytest.approx(0.5, abs=1e-6)


def test_config_node_is_a_typed_reward_loss_config():
    stored = []

    class Store:
        def store(self, **kwargs):
            stored.append(kwargs)

    plugin.register_configs(Store())
    by_group = {s["group"]: s for s in stored}
    # one node per option, in the group that selects it; each subclasses the group's schema
    assert len(by_group) == len(stored) == 6
    from llama2rlhf.config import GROUP_SCHEMAS, LoggerConfig

    for group, entry in by_group.items():
        schema = GROUP_SCHEMAS.get(group, LoggerConfig)
        assert issubclass(entry["node"], schema) and entry["node"]().name == entry["name"], group
    assert by_group["reward_loss"]["name"] == "example_hinge"
    node = by_group["reward_loss"]["node"]
    assert issubclass(node, RewardLossConfig)
    assert node().name == "example_hinge" and node().width == 1.0

    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    cfg = OmegaConf.structured(node)
    cfg.width = "2.5"  # converted, like a command-line override
    assert cfg.width == 2.5
    with pytest.raises(ValidationError):
        cfg.width = "abc"


def test_registry_lists_it_under_the_plugin_and_distribution(fresh_plugins):
    item = fresh_plugins.get("reward_losses", "example_hinge")
    assert item.plugin == "example"
    assert item.distribution == "llama2rlhf-example"
    assert item.obj.fn is plugin.hinge_loss
    described = {p["name"]: p for p in fresh_plugins.describe()}
    assert described["example"]["distribution"] == "llama2rlhf-example"
    assert described["example"]["module"] == "llama2rlhf_example.plugin"
    # one thing of every kind, and every hook
    assert described["example"]["registers"] == {
        "annotators": ["example_shorter"], "augmenters": ["example_system_prompt"], "checkers": ["example_mentions"],
        "reward_combiners": ["example_cautious"], "reward_losses": ["example_hinge"],
        "samplers": ["example_distinct"], "selectors": ["example_threshold"], "stages": ["example_length_report"]}
    from llama2rlhf.plugins import hookspecs

    all_hooks = {name for name in dir(hookspecs) if name.startswith(("register_", "on_"))}
    assert set(described["example"]["hooks"]) == all_hooks


def test_hydra_composes_the_plugin_node(fresh_plugins):
    """``reward_loss=example_hinge reward_loss.width=0.5`` reaches the loss as ``width=0.5``."""
    from hydra import compose, initialize_config_module

    from llama2rlhf.config import store_configs

    store_configs()
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        cfg = compose("config", overrides=["reward_loss=example_hinge", "reward_loss.width=0.5"])
    assert cfg.reward_loss.name == "example_hinge"
    assert cfg.reward_loss.width == 0.5

    from llama2rlhf import plugins

    loss = plugins.selected("reward_losses", cfg)
    assert loss.name == "example_hinge" and loss.options == {"width": 0.5}
    assert loss.call(t(R_CHOSEN), t(R_REJECTED), None).item() == pytest.approx(0.5, abs=1e-6)


def test_cautious_combiner_takes_the_worse_score(fresh_plugins):
    combiner = fresh_plugins.get("reward_combiners", "example_cautious")
    assert combiner.plugin == "example"
    scores = {"helpfulness": t([2.0, -1.0, 0.5]), "safety": t([1.0, 3.0, 0.5])}
    out = combiner.obj(scores, torch.tensor([False, True, False]))
    assert out.tolist() == [1.0, -1.0, 0.5]
    # without a safety model the core picks `single` rather than calling it
    from omegaconf import OmegaConf

    from llama2rlhf.reward.combined import selected_combiner

    cfg = OmegaConf.create({"reward": {"name": "example_cautious", "whiten": True}})
    assert selected_combiner(cfg, ["helpfulness", "safety"])[0].name == "example_cautious"
    assert selected_combiner(cfg, ["helpfulness"])[0].name == "single"
