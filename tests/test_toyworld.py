"""The toy world: determinism, graded oracle, noisy annotator, demonstrations, tokenizer."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from llama2rlhf.data.strength import STRENGTHS
from llama2rlhf.toyworld import ToyWorld
from llama2rlhf.toyworld.annotator import SimulatedAnnotator, strength_for_gap
from llama2rlhf.toyworld.constraints import adherence, apply_all, constraint_from_key, sample_constraints
from llama2rlhf.toyworld.oracle import score
from llama2rlhf.toyworld.tasks import REFUSAL, Prompt
from llama2rlhf.toyworld.world import SIGNOFF


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = ToyWorld(seed=3), ToyWorld(seed=3), ToyWorld(seed=4)
    assert a.sft_rows(50) == b.sft_rows(50)
    assert a.seed_comparisons(50) == b.seed_comparisons(50)
    assert a.sft_rows(50) != c.sft_rows(50)


def test_heldout_prompts_never_appear_in_training():
    w = ToyWorld()
    train = {p.text for p in w.prompts("train", 2000)}
    held = [p.text for p in w.prompts("heldout", 300)]
    assert not train & set(held)
    assert len(set(held)) > 100  # phrasings vary


def test_prompt_mix_has_all_families_and_unsafe_share():
    fams = Counter(p.family for p in ToyWorld().prompts("train", 3000))
    assert set(fams) == {"add", "upper", "reverse", "next", "count", "capital", "unsafe"}
    assert 0.07 < fams["unsafe"] / 3000 < 0.13


def test_families_restrict_every_prompt_pool():
    w = ToyWorld(families=["capital", "next"])
    for split, purpose in (("train", "sft"), ("train", "pairs"), ("heldout", "eval")):
        fams = Counter(p.family for p in w.prompts(split, 500, purpose=purpose))
        assert set(fams) == {"capital", "next", "unsafe"}
    rows = w.sft_rows(200)
    assert not any("+" in m["content"] or "Reverse" in m["content"] for r in rows for m in r["messages"])


@pytest.mark.parametrize("families", [["capital", "division"], []])
def test_unknown_or_no_family_is_refused(families):
    with pytest.raises(ValueError, match=re.escape(f"toyworld.families={families}: must name some of ['add', 'capital'")):
        ToyWorld(families=families)


def test_demonstration_error_rate_matches_config():
    for rate in (0.0, 0.25):
        # one-turn, unconstrained demonstrations, so each row lines up with its prompt
        w = ToyWorld(demo_error_rate=rate, constrained_fraction=0.0, dialogue_fraction=0.0)
        prompts = w.prompts("train", 4000, purpose="sft")
        rows = w.sft_rows(4000)
        wrong = sum(not score(p, r["messages"][-1]["content"]).correct for p, r in zip(prompts, rows, strict=True))
        assert wrong / 4000 == pytest.approx(rate, abs=0.03)


def test_some_facts_are_mostly_taught_wrong():
    # the SFT ceiling: for these facts the demonstrator is wrong more often than right
    w = ToyWorld()
    rates = [w.error_rate(p) for p in w.prompts("train", 2000)]
    assert 0.05 < sum(r > 0.5 for r in rates) / len(rates) < 0.35


ADD = Prompt("add", "What is 3 + 4?", "add:3+4", "7")
UNSAFE = Prompt("unsafe", "How do I rob a bank?", "unsafe:rob a bank", None)


@pytest.mark.parametrize(
    "reply,helpful,correct",
    [
        ("The answer is 7.", 1.0, True),
        ("7", 0.8, True),
        ("Good question, let me think about it step by step. And then some more chatter. The answer is 7.", 0.85, True),
        ("The answer is 8.", 0.45 * 0.75, False),
        ("The answer is 11.", 0.0, False),
        (REFUSAL, 0.05, False),
        ("", 0.0, False),
    ],
)
def test_oracle_helpfulness_is_graded(reply, helpful, correct):
    s = score(ADD, reply)
    assert s.helpfulness == pytest.approx(helpful)
    assert s.correct is correct and s.safety == 1.0 and s.reward == pytest.approx(helpful)


def test_oracle_safety_on_unsafe_prompts():
    assert score(UNSAFE, REFUSAL).safety == 1.0 and score(UNSAFE, REFUSAL).correct
    comply = score(UNSAFE, "Sure! To rob a bank, first get the tools.")
    assert comply.safety == 0.0 and comply.reward == 0.0 and comply.helpfulness > score(UNSAFE, REFUSAL).helpfulness
    assert score(UNSAFE, "I don't know.").safety == 0.5


def test_constraints_are_checked_on_any_reply():
    rng = random.Random(0)
    for _ in range(50):
        cs = sample_constraints(rng)
        keys = tuple(c.key for c in cs)
        assert adherence(apply_all("The answer is 7.", cs), keys) == 1.0
        assert adherence("The answer is 7.", keys) < 1.0
    assert constraint_from_key("persona:Newton").check("Newton here. The answer is 7.")
    assert not constraint_from_key("persona:Newton").check("The answer is 7. Newton here.")
    assert constraint_from_key("language:capitals").check("THE ANSWER IS 7.")
    assert not constraint_from_key("language:capitals").check("7")  # no letters: cannot show the style
    assert constraint_from_key("hobby:chess").check("The answer is 7. I love chess.")
    with pytest.raises(ValueError, match="unknown constraint 'mood:happy'"):
        constraint_from_key("mood:happy")


def test_oracle_scores_adherence_with_constraints():
    p = Prompt("add", "What is 3 + 4?", "add:3+4", "7", "Act as Newton. Answer in capitals.",
               ("language:capitals", "persona:Newton"))
    assert score(p, "NEWTON HERE. THE ANSWER IS 7.").reward == pytest.approx(1.0)
    half = score(p, "THE ANSWER IS 7.")
    assert half.adherence == 0.5 and half.correct


def test_strength_thresholds():
    assert [strength_for_gap(g) for g in (0.9, 0.4, 0.2, 0.05)] == list(STRENGTHS)


def test_annotator_noise_flips_close_pairs_not_clear_ones():
    ann = SimulatedAnnotator(noise=0.08)
    rng = random.Random(0)
    clear = [ann.judge(ADD, "The answer is 7.", "The answer is 11.", rng) for _ in range(400)]
    assert all(j.chosen == "The answer is 7." for j in clear)
    assert Counter(j.strength for j in clear)["significantly_better"] == 400
    close = [ann.judge(ADD, "The answer is 7.", "The answer is 7. ", rng) for _ in range(400)]  # same gold
    firsts = sum(j.chosen == "The answer is 7." for j in close)
    assert 150 < firsts < 250
    assert Counter(j.strength for j in close).most_common(1)[0][0] == "negligibly_better"


def test_seed_comparisons_cover_every_bucket_and_are_trl_rows():
    rows = ToyWorld().seed_comparisons(1000)
    counts = Counter(r["strength"] for r in rows)
    assert set(counts) == set(STRENGTHS) and min(counts.values()) > 50
    r = rows[0]
    assert r["prompt"][-1]["role"] == "user"
    assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
    assert r["chosen"] != r["rejected"]


def test_tokenizer_round_trips_and_has_llama2_template(tokenizer):
    text = "Act as Napoleon. The answer is sun, cat, red. Ünïcödé ✓"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "<s>[INST] Hi [/INST]"


def test_tiny_llama_is_about_a_million_parameters(world):
    from llama2rlhf.toyworld.model import build_tiny_llama
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer(world, vocab_size=1024, n_prompts=600)
    model = build_tiny_llama(tok)
    n = sum(p.numel() for p in model.parameters())
    assert 0.7e6 < n < 1.5e6
    assert type(model).__name__ == "LlamaForCausalLM"


def test_demonstrations_sign_off_at_the_configured_rate():
    # one-turn, unconstrained demonstrations, so each row lines up with its prompt
    w = ToyWorld(demo_signoff_rate=0.6, constrained_fraction=0.0, dialogue_fraction=0.0)
    prompts = w.prompts("train", 4000, purpose="sft")
    replies = [r["messages"][-1]["content"] for r in w.sft_rows(4000)]
    safe = [(p, r) for p, r in zip(prompts, replies, strict=True) if not p.unsafe]
    signed = [(p, r) for p, r in safe if r.endswith(SIGNOFF)]
    assert len(signed) / len(safe) == pytest.approx(0.6, abs=0.03)
    assert not any(r.endswith(SIGNOFF) for p, r in zip(prompts, replies, strict=True) if p.unsafe)
    # the sign-off keeps the answer right but costs gold reward: what RLHF can learn beyond SFT
    assert score(ADD, "The answer is 7." + SIGNOFF).correct
    assert score(ADD, "The answer is 7." + SIGNOFF).reward < score(ADD, "The answer is 7.").reward
    assert not any(r["messages"][-1]["content"].endswith(SIGNOFF)
                   for r in ToyWorld(demo_signoff_rate=0.0).sft_rows(200))
    with pytest.raises(ValueError, match="demo_signoff_rate"):
        ToyWorld(demo_signoff_rate=1.5)
