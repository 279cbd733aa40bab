"""``annotator=reward_model``: AI feedback from a judge reward model (RLAIF-style).

The judges here are tiny ``LlamaForSequenceClassification`` models whose score is a known
function of the last token of the conversation: their one layer adds nothing to the
residual stream (zero output projections), every token embedding has RMS 1 (so the final
norm leaves it as it is), and the score head reads one of its coordinates. A judge's own
tokenizer (a smaller vocabulary than the policy's, and a chat template that ends with the
reply) decides which token that is, so the expected scores below come from the judge's
tokenization alone, computed without the annotator or ``score_conversations``.
"""

from __future__ import annotations

import copy
import math

import pytest

from llama2rlhf import plugins
from llama2rlhf.data.strength import STRENGTHS
from llama2rlhf.recipe.annotation import PairToLabel
from llama2rlhf.recipe.annotators import RewardModelAnnotatorConfig, strength_of_gap, strength_thresholds

# the conversation's text ends with the reply's last token (Llama 2's template ends with </s>)
TEMPLATE = "{% for m in messages %}{% if not loop.first %}\n{% endif %}{{ m['content'] }}{% endfor %}"
STEP = 0.7  # token t's embedding is 2 (cos, sin)(STEP * t, ...): RMS 1 over the 4 dimensions


def token_score(token: int, head: str) -> float:
    angle = STEP * token
    return 2 * (math.sin(angle) if head == "sin" else math.cos(angle))


def build_judge(tokenizer, head: str):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        angles = STEP * torch.arange(len(tokenizer), dtype=torch.float32)
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0], emb[:, 1] = 2 * torch.cos(angles), 2 * torch.sin(angles)
        model.score.weight.zero_()
        model.score.weight[0, 1 if head == "sin" else 0] = 1.0
    return model


@pytest.fixture(scope="module")
def judge_tokenizer(world):
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer(world, vocab_size=300, n_prompts=200)
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def judges(judge_tokenizer, tmp_path_factory):
    """{"sin": folder, "cos": folder}: two judges that share the judge tokenizer."""
    out = {}
    for head in ("sin", "cos"):
        folder = tmp_path_factory.mktemp(f"judge-{head}")
        build_judge(judge_tokenizer, head).save_pretrained(folder)
        judge_tokenizer.save_pretrained(folder)
        out[head] = str(folder)
    return out


def expected_score(tokenizer, pair: PairToLabel, reply: str, head: str) -> float:
    conv = [*pair.prompt, {"role": "assistant", "content": reply}]
    ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    return token_score(ids[-1], head)


def config(**annotator):
    from omegaconf import OmegaConf

    from llama2rlhf.config import Config

    cfg = OmegaConf.merge(OmegaConf.structured(Config),
                          {"annotator": OmegaConf.structured(RewardModelAnnotatorConfig(**annotator))})
    cfg.device = "cpu"
    return cfg


def make(cfg):
    return plugins.selected("annotators", cfg).call(cfg, None)  # no toy world: real data


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


REPLIES = [("The answer is 7", "I do not know"), ("Paris", "It is Rome"), ("Sure, here it is", "No"),
           ("Bonjour", "Hello there"), ("Add them: 12", "Subtract them: 4"), ("Yes", "Yes indeed")]
PAIRS = [PairToLabel(f"r1-{i}", user(f"Question {i}?"), a, b) for i, (a, b) in enumerate(REPLIES)]


def test_the_judge_prefers_its_higher_scored_reply_rendered_with_its_own_tokenizer(
        judges, judge_tokenizer, tokenizer, tmp_path):
    rows = make(config(name_or_path=judges["sin"])).annotate(PAIRS, tmp_path)
    assert [r["id"] for r in rows] == [p.id for p in PAIRS]
    for pair, row in zip(PAIRS, rows, strict=True):
        r_a, r_b = (expected_score(judge_tokenizer, pair, x, "sin") for x in (pair.a, pair.b))
        winner, loser = (pair.a, pair.b) if r_a >= r_b else (pair.b, pair.a)
        assert row["prompt"] == pair.prompt
        assert row["chosen"] == [{"role": "assistant", "content": winner}]
        assert row["rejected"] == [{"role": "assistant", "content": loser}]
        assert row["judge_chosen"] == pytest.approx(max(r_a, r_b), abs=1e-4)
        assert row["judge_rejected"] == pytest.approx(min(r_a, r_b), abs=1e-4)
        assert row["strength"] in STRENGTHS
    # the same conversations rendered by the policy's tokenizer end in other tokens: scored
    # with those ids the judge would have given other scores (so the check above tells them apart)
    policy = copy.deepcopy(tokenizer)
    policy.chat_template = TEMPLATE
    assert len(policy) != len(judge_tokenizer)
    assert any(expected_score(policy, p, p.a, "sin") != pytest.approx(expected_score(judge_tokenizer, p, p.a, "sin"))
               for p in PAIRS)


def test_the_judge_scores_the_ids_of_its_own_tokenizer(judges, judge_tokenizer, tmp_path, monkeypatch):
    from llama2rlhf.reward import scoring as reward_scoring

    seen = []
    real = reward_scoring.score_conversations

    def spy(model, tok, conversations, *args, **kwargs):
        seen.append((len(tok), tok.chat_template, model.config.vocab_size))
        return real(model, tok, conversations, *args, **kwargs)

    monkeypatch.setattr(reward_scoring, "score_conversations", spy)
    make(config(name_or_path=judges["sin"])).annotate(PAIRS, tmp_path)
    assert seen == [(len(judge_tokenizer), TEMPLATE, len(judge_tokenizer))]


def test_ties_keep_the_order_and_are_negligibly_better(judges, tmp_path):
    same = PairToLabel("tie", user("Hi?"), "Hello there", "Well, hello there")  # the same last token
    rows = make(config(name_or_path=judges["sin"])).annotate(PAIRS[:3] + [same], tmp_path)
    assert rows[-1]["judge_chosen"] == rows[-1]["judge_rejected"]
    assert rows[-1]["chosen"][0]["content"] == "Hello there" and rows[-1]["strength"] == "negligibly_better"


# --- strength from the gap, by quantiles of the round's gaps -----------------------------


def scripted(cfg, scores: dict[str, float]):
    """The annotator with its judge's scores looked up by reply text."""
    annotator = make(cfg)
    annotator.score = lambda judge, conversations: [scores[c[-1]["content"]] for c in conversations]
    return annotator


# eight pairs with gaps 1..8, the winner alternating between a and b, in shuffled order
GAPS = [5, 2, 8, 1, 7, 3, 6, 4]
GAP_PAIRS = [PairToLabel(f"g{g}", user(f"q{g}"), f"a{g}", f"b{g}") for g in GAPS]
GAP_SCORES = {**{f"a{g}": (g if g % 2 else 0.0) - 10 for g in GAPS},
              **{f"b{g}": (0.0 if g % 2 else g) - 10 for g in GAPS}}


def labels(rows) -> dict[int, str]:
    return {int(r["id"][1:]): r["strength"] for r in rows}


def test_strength_buckets_follow_the_quantiles_of_the_gaps(judges, tmp_path):
    rows = scripted(config(name_or_path=judges["sin"]), GAP_SCORES).annotate(GAP_PAIRS, tmp_path)
    # thresholds at the 25/50/75 % quantiles of 1..8 (linear): 2.75, 4.5, 6.25
    assert labels(rows) == {8: "significantly_better", 7: "significantly_better", 6: "better", 5: "better",
                            4: "slightly_better", 3: "slightly_better", 2: "negligibly_better",
                            1: "negligibly_better"}
    for r in rows:
        g = int(r["id"][1:])
        assert r["chosen"][0]["content"] == (f"a{g}" if g % 2 else f"b{g}")
        assert r["judge_chosen"] - r["judge_rejected"] == g


def test_custom_quantiles_change_the_labels(judges, tmp_path):
    cfg = config(name_or_path=judges["sin"], strength_quantiles=[0.5, 0.75, 0.875])
    rows = scripted(cfg, GAP_SCORES).annotate(GAP_PAIRS, tmp_path)
    # thresholds 4.5, 6.25, 7.125
    assert labels(rows) == {8: "significantly_better", 7: "better", 6: "slightly_better", 5: "slightly_better",
                            4: "negligibly_better", 3: "negligibly_better", 2: "negligibly_better",
                            1: "negligibly_better"}


def test_thresholds_are_numpy_linear_quantiles_and_exceeding_them_strictly_counts():
    np = pytest.importorskip("numpy")
    gaps = [0.3, 2.0, 0.0, 1.1, 5.5, 0.7, 2.0]
    q = [0.2, 0.6, 0.9]
    assert strength_thresholds(gaps, q) == pytest.approx(list(np.quantile(gaps, q)))
    assert strength_of_gap(0.0, [0.0, 0.0, 0.0]) == "negligibly_better"  # one pair, or all gaps equal
    assert strength_of_gap(1.0, [0.5, 1.0, 2.0]) == "slightly_better"  # equal to a threshold: the weaker label
    assert strength_of_gap(1.5, [0.5, 1.0, 2.0]) == "better"
    assert strength_of_gap(3.0, [0.5, 1.0, 2.0]) == "significantly_better"


@pytest.mark.parametrize("bad", [[0.5, 0.25, 0.75], [0.25, 0.5], [0.0, 0.5, 0.75], [0.25, 0.5, 1.0],
                                 [0.25, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]])
def test_bad_quantiles_name_the_key(judges, bad):
    with pytest.raises(ValueError, match=r"annotator\.strength_quantiles=.*: must be 3 increasing values in \(0, 1\)"):
        make(config(name_or_path=judges["sin"], strength_quantiles=bad))


def test_a_missing_judge_names_the_key():
    with pytest.raises(ValueError, match=r"annotator\.name_or_path"):
        make(config())


def test_a_language_model_is_refused_as_judge(tokenizer, tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="LlamaForCausalLM.*not a reward model"):
        make(config(name_or_path=str(tmp_path)))


def test_the_safety_judge_labels_the_safety_prompts_only(judges, judge_tokenizer, tmp_path):
    safety = {3, 4}
    pairs = [PairToLabel(p.id, p.prompt, p.a, p.b, {"safety": True} if i in safety else {})
             for i, p in enumerate(PAIRS)]
    rows = make(config(name_or_path=judges["sin"], safety_name_or_path=judges["cos"])).annotate(pairs, tmp_path)
    for i, (pair, row) in enumerate(zip(pairs, rows, strict=True)):
        head = "cos" if i in safety else "sin"
        expected = sorted(expected_score(judge_tokenizer, pair, x, head) for x in (pair.a, pair.b))
        assert [row["judge_rejected"], row["judge_chosen"]] == pytest.approx(expected, abs=1e-4)
    # the two heads disagree on these replies, so the check above tells the judges apart
    for i in safety:
        assert expected_score(judge_tokenizer, pairs[i], pairs[i].a, "cos") != pytest.approx(
            expected_score(judge_tokenizer, pairs[i], pairs[i].a, "sin"), abs=1e-3)


def test_the_thresholds_are_per_judge(judges, tmp_path):
    # the safety judge's gaps are 100 times the helpfulness judge's: the same ranks, the same labels
    safety_pairs = [PairToLabel(f"s{g}", user(f"s{g}"), f"sa{g}", f"sb{g}", {"safety": True}) for g in GAPS]
    scores = {**GAP_SCORES, **{f"s{k}": 100 * v for k, v in GAP_SCORES.items()}}
    cfg = config(name_or_path=judges["sin"], safety_name_or_path=judges["cos"])
    annotator = make(cfg)
    used = []

    def score(judge, conversations):
        used.append(judge)
        return [scores[c[-1]["content"]] for c in conversations]

    annotator.score = score
    rows = annotator.annotate(GAP_PAIRS + safety_pairs, tmp_path)
    assert used == [judges["sin"], judges["cos"]]
    assert [r["strength"] for r in rows[:8]] == [r["strength"] for r in rows[8:]]


# --- the config node ---------------------------------------------------------------------


def test_the_node_composes_without_a_yaml_file(fresh):
    from hydra import compose, initialize_config_module

    from llama2rlhf.config import store_configs

    store_configs()
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        cfg = compose("config", overrides=["annotator=reward_model", "annotator.name_or_path=X"])
        custom = compose("config", overrides=["annotator=reward_model", "annotator.name_or_path=X",
                                              "annotator.safety_name_or_path=S", "annotator.batch_size=4",
                                              "annotator.strength_quantiles=[0.1,0.5,0.9]"])
        with pytest.raises(Exception, match="batch_size"):
            compose("config", overrides=["annotator=reward_model", "annotator.batch_size=many"])
    assert dict(cfg.annotator) == {"name": "reward_model", "name_or_path": "X", "safety_name_or_path": None,
                                   "strength_quantiles": [0.25, 0.5, 0.75], "batch_size": 32}
    assert custom.annotator.safety_name_or_path == "S" and custom.annotator.batch_size == 4
    assert list(custom.annotator.strength_quantiles) == [0.1, 0.5, 0.9]
    # the default annotator stays the toy rater, with no judge keys
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        assert dict(compose("config").annotator) == {"name": "toy"}


def test_rows_with_the_judge_scores_train_a_reward_model(judges, world, tokenizer, tiny_llama, tmp_path):
    """The extra keys (judge_chosen, judge_rejected) are harmless to the reward stage."""
    import torch
    from omegaconf import OmegaConf

    from llama2rlhf.config import Config
    from llama2rlhf.recipe.reward_model import train_reward

    rows = make(config(name_or_path=judges["sin"])).annotate(PAIRS, tmp_path)
    cfg = OmegaConf.structured(Config)
    cfg.device = "cpu"
    cfg.reward_loss.name = "margin_small"
    cfg.reward_model.update(per_device_train_batch_size=16, num_train_epochs=1, warmup_steps=0, bf16="false",
                            logging_steps=1)
    init = tmp_path / "init"
    tiny_llama.save_pretrained(init)
    tokenizer.save_pretrained(init)
    torch.manual_seed(0)
    out = train_reward(cfg, str(init), str(init), world.seed_comparisons(10) + rows, tmp_path / "rm", "toy")
    assert out["n_pairs"] == 16 and out["train_steps"] == 1 and math.isfinite(out["train_loss"])


# --- through the collect stage -----------------------------------------------------------


def real_data_run(tmp_path, **annotator):
    from llama2rlhf.data.jsonl import write_jsonl
    from llama2rlhf.runtime.run import RunContext

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": p.prompt, "safety": i in (3, 4)} for i, p in enumerate(PAIRS)])
    cfg = config(**annotator)
    cfg.data.source, cfg.data.prompt_path = "files", str(prompts)
    cfg.data.eval_fraction = 0.0  # every prompt may be drawn for the round
    cfg.collect.n_prompts = len(PAIRS)
    ctx = RunContext.open(cfg, tmp_path / "run")
    ctx.round = 1
    return ctx


def test_the_collect_stage_labels_real_data_with_the_judges(judges, judge_tokenizer, tmp_path):
    from dataclasses import asdict

    from llama2rlhf.data.jsonl import read_jsonl, write_jsonl
    from llama2rlhf.data.round_prompts import round_prompts
    from llama2rlhf.recipe.collect import collect_stage

    ctx = real_data_run(tmp_path, name_or_path=judges["sin"], safety_name_or_path=judges["cos"])
    # the round's pairs as the stage samples them, written beforehand: the stage labels them
    # without a policy to sample from (as a resumed round does)
    prompts = round_prompts(ctx, "collect:1", len(PAIRS))
    pairs = [PairToLabel(f"r1-{i}", p.messages, x.a, x.b, p.meta) for i, (p, x) in enumerate(zip(prompts, PAIRS,
                                                                                                    strict=True))]
    write_jsonl(ctx.stage_dir("collect") / "pairs.jsonl", [asdict(p) for p in pairs])
    metrics = collect_stage(ctx)
    rows = [row for _, row in read_jsonl(ctx.state.artifacts["round_1/comparisons"])]
    assert metrics["n_pairs"] == len(rows) == len(PAIRS) and sum(metrics["strengths"].values()) == len(PAIRS)
    safety = [p.meta["safety"] for p in prompts]  # the round draws the file's prompts in its own order
    assert sorted(safety) == sorted(i in (3, 4) for i in range(len(PAIRS)))
    assert [r["safety"] for r in rows] == safety
    for pair, row, flag in zip(pairs, rows, safety, strict=True):
        head = "cos" if flag else "sin"
        expected = sorted(expected_score(judge_tokenizer, pair, x, head) for x in (pair.a, pair.b))
        assert [row["judge_rejected"], row["judge_chosen"]] == pytest.approx(expected, abs=1e-4)


def test_a_bad_annotator_setting_stops_the_collect_stage_before_it_samples(judges, tmp_path):
    from llama2rlhf.recipe.collect import collect_stage

    ctx = real_data_run(tmp_path, name_or_path=judges["sin"], strength_quantiles=[0.75, 0.5, 0.25])
    with pytest.raises(ValueError, match=r"annotator\.strength_quantiles"):
        collect_stage(ctx)  # no policy to sample from: sampling first would fail on that instead
    assert not (ctx.stage_dir("collect") / "pairs.jsonl").exists()
