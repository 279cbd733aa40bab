"""Reward models of their own: own backbone and tokenizer (decoder or encoder), the plain chat
template, and the one way over-long conversations are cut in training and in scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from llama2rlhf.reward.scoring import Cuts, fit_conversation, tokenize_conversations


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def n_tokens(tokenizer, messages) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def ids(tokenizer, messages) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


LONG = [{"role": "system", "content": "Be kind."}, user("first question about the weather today"),
        bot("first answer about the weather"), user("second question about the capital of Kovia"),
        bot("second answer: Lune"), user("and what is 3 + 4?"), bot("The answer is 7.")]


def test_fit_drops_oldest_turns_first_keeping_system_last_question_and_reply(tokenizer):
    full = n_tokens(tokenizer, LONG)
    without_first = LONG[:1] + LONG[3:]
    cuts = Cuts()
    out = fit_conversation(tokenizer, LONG, n_tokens(tokenizer, without_first), cuts)
    assert out == ids(tokenizer, without_first) and len(out) < full
    assert cuts.as_dict() == {"conversations": 1, "turns_dropped": 1, "prompts_cut": 0, "replies_cut": 0}
    cuts = Cuts()
    out = fit_conversation(tokenizer, LONG, n_tokens(tokenizer, LONG[:1] + LONG[5:]), cuts)
    assert out == ids(tokenizer, LONG[:1] + LONG[5:]) and cuts.turns_dropped == 2
    # a conversation that fits is not touched or counted
    cuts = Cuts()
    assert fit_conversation(tokenizer, LONG, full, cuts) == ids(tokenizer, LONG) and cuts.conversations == 0


def test_fit_then_cuts_the_start_of_the_last_question_and_keeps_the_reply_whole(tokenizer):
    last = LONG[:1] + LONG[5:]
    limit = n_tokens(tokenizer, last) - 3
    cuts = Cuts()
    out = fit_conversation(tokenizer, LONG, limit, cuts)
    assert len(out) <= limit
    text = tokenizer.decode(out)
    assert text.rstrip().endswith(tokenizer.decode(ids(tokenizer, [user("x"), bot("The answer is 7.")])[-6:]).rstrip())
    assert "3 + 4?" in text and "and what" not in text  # the words nearest the reply stay
    assert cuts.as_dict() == {"conversations": 1, "turns_dropped": 2, "prompts_cut": 1, "replies_cut": 0}
    # a reply longer than the limit keeps its beginning
    cuts = Cuts()
    reply = bot(" ".join(["word"] * 60))
    out = fit_conversation(tokenizer, [user("q"), reply], 20, cuts)
    assert len(out) == 20 and cuts.replies_cut == 1 and cuts.prompts_cut == 1


def test_training_ids_and_scoring_ids_are_cut_alike(tokenizer):
    from llama2rlhf.reward.pair_tokens import tokenize_pairs

    limit = n_tokens(tokenizer, LONG[:1] + LONG[3:])
    row = {"prompt": LONG[:-1], "chosen": [bot("The answer is 7.")], "rejected": [bot("Eight, or so.")]}
    cuts = Cuts()
    pair = tokenize_pairs([row], tokenizer, limit, cuts)[0]
    scored = tokenize_conversations(tokenizer, [LONG[:-1] + row["chosen"], LONG[:-1] + row["rejected"]], limit)
    assert [pair["chosen_ids"], pair["rejected_ids"]] == scored.ids
    assert all(len(x) <= limit for x in scored.ids)
    assert cuts.conversations == 2 and scored.cuts.conversations == 2
    # a second stage over the same pairs counts the cuts again (its ids come from the memo)
    again = Cuts()
    tokenize_pairs([row], tokenizer, limit, again)
    assert again.as_dict() == cuts.as_dict()


# --- a reward model with its own tokenizer ------------------------------------------------


def _tiny_bert(folder: Path, max_positions: int = 64) -> Path:
    """A tiny BERT classifier with its own word-piece tokenizer and no chat template."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ("the a is of what to and you i it not how can do me my be for are your that this with "
             "answer question human assistant user system sorry help please no yes kind").split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789:.,?!+'",
             *words, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(str(folder / "vocab.txt"))
    tok.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_positions, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _cfg(**reward_model):
    return OmegaConf.create({"reward": {"name": "single", "whiten": False}, "device": "cpu",
                             "model": {"trust_remote_code": False, "dtype": "float32"},
                             "reward_model": {"eval_batch_size": 4, "name_or_path": None,
                                              "safety_name_or_path": None, **reward_model}})


def test_encoder_reward_model_scores_with_its_own_tokenizer_and_the_plain_template(tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from llama2rlhf.reward.combined import CombinedReward

    bert = _tiny_bert(tmp_path / "bert")
    reward = CombinedReward(_cfg(), {"helpfulness": str(bert)})
    own = reward.tokenizers["helpfulness"]
    conv = [user("what is 3 + 4?"), bot("the answer is 7.")]
    # the plain template: no BOS needed, the encoder's CLS first and SEP last
    assert own.apply_chat_template(conv, tokenize=False) == "[CLS]User: what is 3 + 4?\n\nAssistant: the answer is 7.[SEP]"
    # the policy's tokenizer gives other ids for the same text: scoring must not use them
    assert ids(tokenizer, conv) != ids(own, conv)
    model = AutoModelForSequenceClassification.from_pretrained(bert).eval()
    with torch.no_grad():
        expected = float(model(**own.apply_chat_template(conv, tokenize=True, return_dict=True,
                                                          return_tensors="pt")).logits[0, 0])
    assert reward.model_scores([conv])["helpfulness"].tolist() == pytest.approx([expected], abs=1e-5)
    # past its 64 positions the conversation is cut, not fed whole, and the cut is counted
    long = [user(" ".join(["what is the answer"] * 30)), bot("the answer is 7.")]
    assert len(ids(own, long)) > 64
    reward.model_scores([long, conv])
    assert reward.cuts.as_dict() == {"conversations": 1, "turns_dropped": 0, "prompts_cut": 1, "replies_cut": 0}


def test_llama2_combiner_without_a_safety_model_warns_and_the_run_records_it(tmp_path, caplog):
    from llama2rlhf.reward.combined import CombinedReward

    bert = _tiny_bert(tmp_path / "bert")
    cfg = _cfg()
    cfg.reward.name = "llama2"
    with caplog.at_level("WARNING"):
        reward = CombinedReward(cfg, {"helpfulness": str(bert)})
    assert reward.combiner_name == "single" and "using reward=single" in reward.fallback
    assert any(r.levelname == "WARNING" and "using reward=single" in r.getMessage() for r in caplog.records)


# --- through the command line -------------------------------------------------------------

_TURNS = "".join("\n\nHuman: what is the answer to the question of the day?\n\nAssistant: you can help me with my "
                 "question, please." for _ in range(4))
HH = [
    # a long real-style conversation, past the encoder's 64 positions and the decoder's 96
    {"chosen": _TURNS + "\n\nHuman: and how can i help you?\n\nAssistant: the answer is yes.",
     "rejected": _TURNS + "\n\nHuman: and how can i help you?\n\nAssistant: no."},
    {"chosen": "\n\nHuman: can you help me?\n\nAssistant: yes, please ask.",
     "rejected": "\n\nHuman: can you help me?\n\nAssistant: no, sorry."},
]


def _policy(folder: Path) -> Path:
    from llama2rlhf.toyworld import ToyWorld
    from llama2rlhf.toyworld.model import build_tiny_llama
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer(ToyWorld(), vocab_size=400, n_prompts=400)
    build_tiny_llama(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _decoder_rm(folder: Path) -> Path:
    """A tiny Llama classifier whose tokenizer differs from the policy's (another vocabulary)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from llama2rlhf.toyworld import ToyWorld
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer(ToyWorld(seed=7), vocab_size=300, n_prompts=200)
    tok.chat_template = None
    tok.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, max_position_embeddings=96,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_reward_stage_trains_its_own_model_on_raw_hh_rlhf(tmp_path, kind):
    """The README's command: a policy folder, `pipeline.stages=[reward]`, and a reward model of
    its own whose tokenizer is not the policy's, on hh-rlhf transcripts longer than it reads."""
    from test_pipeline import run_cli

    policy = _policy(tmp_path / "policy")
    rm = _tiny_bert(tmp_path / "bert") if kind == "encoder" else _decoder_rm(tmp_path / "rm")
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(HH[i % 2]) + "\n" for i in range(20)))
    proc = run_cli(tmp_path, "model=hf", f"model.name_or_path={policy}", "pipeline.stages=[reward]",
                   "pipeline.rounds=0", f"reward_model.name_or_path={rm}", "data=jsonl", f"data.sft_path={data}",
                   f"data.preference_path={data}", "reward_model.per_device_train_batch_size=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reward"]["n_pairs"] == 18  # none dropped for length
    # the long pair's two conversations are cut in training and in held-out scoring alike
    limit = 64 if kind == "encoder" else 96
    # the 9 long pairs of the 18 trained on, and the held-out one, each reply's conversation
    assert summary["reward"]["truncated"]["conversations"] == 18
    assert summary["reward"]["truncated"]["turns_dropped"] >= 18
    assert summary["reward"]["truncated"]["replies_cut"] == 0  # the replies compared stay whole
    assert summary["reward"]["held_out_truncated"]["conversations"] == 2
    assert summary["rm_accuracy"]["counts"]["overall"] == 2
    assert "using reward=single" in summary["reward"]["reward_fallback"]
    # the trained model is saved with its own tokenizer, which later stages score with
    saved = run / "reward" / "model"
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification" if kind == "encoder" else
                                       "LlamaForSequenceClassification"]
    assert config["max_position_embeddings"] == limit
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(saved).get_vocab() == AutoTokenizer.from_pretrained(rm).get_vocab()
    assert AutoTokenizer.from_pretrained(saved).get_vocab() != AutoTokenizer.from_pretrained(policy).get_vocab()


def test_ppo_scores_rollouts_as_text_when_the_reward_model_has_its_own_tokenizer(tmp_path, tokenizer):
    """TRL's PPO hands the reward model the policy's token ids: a reward model with another
    tokenizer gets each rollout's reply decoded and scored with its prompt, as text."""
    from trl.experimental.utils import get_reward

    from llama2rlhf.reward.combined import CombinedReward
    from llama2rlhf.reward.trl_rewards import combined_reward_model, reads_policy_tokens
    from test_reward_combiners import CONVS, SAFETY, _query_responses

    reward = CombinedReward(_cfg(), {"helpfulness": str(_tiny_bert(tmp_path / "bert"))})
    assert not reads_policy_tokens(reward, tokenizer)
    query_responses, context_length, queries = _query_responses(tokenizer)
    adapter = combined_reward_model(reward, queries, SAFETY, [c[:-1] for c in CONVS], tokenizer)
    _, scores, _ = get_reward(adapter, query_responses, tokenizer.pad_token_id, context_length)
    assert scores.tolist() == pytest.approx(reward.score_conversations(CONVS, SAFETY), abs=1e-5)
    assert len(set(scores.tolist())) > 1


def test_models_with_the_same_tokenizer_share_one_tokenization(tmp_path, monkeypatch):
    """The helpfulness and safety models of a run live in two folders with equal tokenizers:
    conversations are tokenized once for both (scoring's hot path)."""
    from llama2rlhf.reward import combined as combined_reward
    from llama2rlhf.reward.combined import CombinedReward
    from test_reward_combiners import CONVS

    paths = {name: str(_decoder_rm(tmp_path / name)) for name in ("helpfulness", "safety")}
    reward = CombinedReward(_cfg(), paths)
    assert reward.tokenizers["helpfulness"] is reward.tokenizers["safety"]
    calls = []
    real = combined_reward.tokenize_conversations
    monkeypatch.setattr(combined_reward, "tokenize_conversations", lambda *a, **k: calls.append(1) or real(*a, **k))
    scores = reward.model_scores(CONVS)
    assert len(calls) == 1 and set(scores) == {"helpfulness", "safety"}
