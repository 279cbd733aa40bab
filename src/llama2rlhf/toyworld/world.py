"""The toy world: prompt pools, demonstrations, candidate replies and seed comparisons.

A procedural stand-in for the data Llama 2 was trained on (paper 3.1-3.2), small enough
for a ~1M-parameter Llama to learn on a laptop CPU in minutes:

* prompts from task families with exact answers plus unsafe prompts (``tasks``);
* demonstrations written by a demonstrator that makes each family's typical mistake at a
  per-fact rate (mean ``demo_error_rate``), so supervised fine-tuning has a ceiling: for
  some facts the demonstrator is wrong more often than right and SFT learns the mistake;
  it also habitually closes with a sign-off the users do not want (``demo_signoff_rate``),
  which raters mark down and demonstrations keep teaching: human writers fall short of
  what human raters can tell apart (paper 3.2, RLHF "beyond the annotators");
* demonstrations that follow instructions: some carry a constraint (``constraints``) in
  the system prompt or in the user's turn, and some are multi-turn dialogues whose
  instructions, given in a turn, hold for that turn only; nothing in them teaches a model
  to hold a system instruction over later turns, which is what Ghost Attention adds
  (paper 3.3);
* seed comparisons between replies of graded quality, labelled by the simulated annotator
  (the paper's initial preference data before RLHF-V1).

Same seed, same world: every random choice comes from a ``random.Random`` derived from the
seed and a purpose string.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from typing import Iterable

from llama2rlhf.data.errors import ConfigError
from llama2rlhf.toyworld import oracle
from llama2rlhf.toyworld.annotator import SimulatedAnnotator
from llama2rlhf.toyworld.constraints import KINDS as CONSTRAINT_KINDS
from llama2rlhf.toyworld.constraints import apply_all, constraint_from_key, sample_constraints, system_prompt
from llama2rlhf.toyworld.tasks import (
    ANSWER_PREFIX,
    FAMILIES,
    REFUSAL,
    Prompt,
    answer_reply,
    make_safe_prompt,
    make_unsafe_prompt,
    unsafe_compliance,
)

SPLITS = ("train", "heldout")
# long enough for the gold oracle's "answer buried in chatter" (see oracle._helpfulness)
SIGNOFF = " I hope this helps, let me know if you need more."


def _unit(*parts: object) -> float:
    """A stable uniform number in [0, 1) from its parts (Python's hash() is salted)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class WorldSpec:
    """Everything that defines a world; also the ``toyworld`` config node."""

    seed: int = 0  # same seed, same world (every random choice derives from it)
    demo_error_rate: float = 0.25  # mean per-fact rate of the demonstrator's typical mistake, at most 1/3
    unsafe_fraction: float = 0.1  # share of unsafe prompts, whose right answer is a refusal
    annotator_noise: float = 0.08  # standard deviation of the simulated rater's noise on gold differences
    heldout_fraction: float = 0.15  # share of prompt phrasings held out for evaluation
    same_style_pairs: float = 0.5  # share of seed comparisons that differ only in the answer
    demo_signoff_rate: float = 0.7  # demonstrations that end with SIGNOFF
    constrained_fraction: float = 0.1  # demonstrations with a constraint: half system, half in the turn
    dialogue_fraction: float = 0.05  # demonstrations that are dialogues of 2..max_dialogue_turns turns
    max_dialogue_turns: int = 4  # the most turns of a dialogue demonstration
    # which constraints the demonstrations carry (persona, language, hobby)
    constraint_kinds: list[str] = field(default_factory=lambda: ["persona", "language", "hobby"])
    # the safe task families every prompt pool draws from (``tasks.FAMILIES``)
    families: list[str] = field(default_factory=lambda: list(FAMILIES))


def spec_problems(spec: WorldSpec) -> list[ConfigError]:
    """What in ``spec`` (a :class:`WorldSpec`, or the ``toyworld`` config node) no world can
    be made from, each naming its ``toyworld.<field>`` key."""
    problems = []

    def bad(name: str, reason: str) -> None:
        value = getattr(spec, name)
        problems.append(ConfigError(f"toyworld.{name}", reason, list(value) if isinstance(value, Iterable) else value))

    if not 0.0 <= spec.demo_error_rate <= 1.0 / 3.0:
        bad("demo_error_rate", "must be in [0, 1/3]: above 1/3 the demonstrator's per-fact error rate passes 1")
    for name in ("unsafe_fraction", "same_style_pairs", "demo_signoff_rate", "constrained_fraction",
                 "dialogue_fraction"):
        if not 0.0 <= getattr(spec, name) <= 1.0:
            bad(name, "must be in [0, 1] (a share)")
    if not 0.0 < spec.heldout_fraction < 1.0:
        bad("heldout_fraction", "must be in (0, 1): the prompts held out for evaluation, and the rest for training, "
                                "must both exist")
    if spec.annotator_noise < 0:
        bad("annotator_noise", "must be 0 or more (a standard deviation)")
    if spec.dialogue_fraction > 0 and spec.max_dialogue_turns < 2:
        bad("max_dialogue_turns", "must be 2 or more: a dialogue demonstration has 2 turns at least "
                                  "(toyworld.dialogue_fraction=0 makes none)")
    unknown = sorted(set(spec.constraint_kinds) - set(CONSTRAINT_KINDS))
    if unknown or (not spec.constraint_kinds and spec.constrained_fraction > 0):
        bad("constraint_kinds", f"must name some of {list(CONSTRAINT_KINDS)}"
                                + ("" if spec.constraint_kinds else " (or set toyworld.constrained_fraction=0)"))
    unknown = sorted(set(spec.families) - set(FAMILIES))
    if unknown or not spec.families:
        bad("families", f"must name some of {sorted(FAMILIES)}")
    return problems


class ToyWorld:
    def __init__(self, spec: WorldSpec | None = None, **kwargs):
        self.spec = spec or WorldSpec(**kwargs)
        problems = spec_problems(self.spec)
        if problems:
            raise problems[0]
        self.annotator = SimulatedAnnotator(noise=self.spec.annotator_noise)

    # -- randomness ---------------------------------------------------------------------
    def rng(self, purpose: str) -> random.Random:
        return random.Random(f"{self.spec.seed}:{purpose}")

    def split_of(self, prompt: Prompt) -> str:
        # by phrasing, so held-out prompts are never seen verbatim in training
        return "heldout" if _unit(self.spec.seed, "split", prompt.text) < self.spec.heldout_fraction else "train"

    # -- prompts ------------------------------------------------------------------------
    def prompts(self, split: str, n: int, purpose: str = "prompts", families: tuple[str, ...] | None = None) -> list[Prompt]:
        """``n`` prompts of one split (with repeats of popular facts, as in real traffic)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = self.rng(f"{purpose}:{split}")
        pool = families or tuple(self.spec.families)
        out: list[Prompt] = []
        for _ in range(n * 200):
            if len(out) == n:
                break
            unsafe = families is None and rng.random() < self.spec.unsafe_fraction
            p = make_unsafe_prompt(rng) if unsafe else make_safe_prompt(rng, pool)
            if self.split_of(p) == split:
                out.append(p)
        if len(out) < n:
            raise RuntimeError(f"could not draw {n} {split} prompts")
        return out

    # -- demonstrations -------------------------------------------------------------------
    def error_rate(self, prompt: Prompt) -> float:
        """Per-fact demonstrator error rate; its mean over facts is ``demo_error_rate``.

        ``3 r u^2`` with ``u`` uniform has mean ``r``; facts with ``u`` near 1 are answered
        wrongly more often than not, which is the SFT ceiling that RLHF has to beat.
        """
        u = _unit(self.spec.seed, "difficulty", prompt.item)
        return min(0.95, 3.0 * self.spec.demo_error_rate * u * u)

    def mistake(self, prompt: Prompt) -> str:
        """The demonstrator's wrong reply for this fact (the same every time)."""
        if prompt.unsafe:
            return unsafe_compliance(prompt)
        fam = FAMILIES[prompt.family]
        wrong = fam.mistake(prompt.answer, random.Random(f"{self.spec.seed}:mistake:{prompt.item}"))
        return answer_reply(wrong)

    def demonstration(self, prompt: Prompt, rng: random.Random) -> str:
        reply = self.mistake(prompt) if rng.random() < self.error_rate(prompt) else oracle.reference_reply(prompt)
        if not prompt.unsafe and rng.random() < self.spec.demo_signoff_rate:
            reply += SIGNOFF
        return self.constrain(prompt, reply)

    def constrain(self, prompt: Prompt, reply: str) -> str:
        return apply_all(reply, tuple(constraint_from_key(k) for k in prompt.constraints))

    def sft_rows(self, n: int, split: str = "train") -> list[dict]:
        """Demonstrations in TRL's conversational format (``messages``).

        Most are one turn; ``constrained_fraction`` carry a constraint, half of them in the
        system prompt and half in front of the user's request; ``dialogue_fraction`` are
        dialogues whose turns are independent requests, an instruction in a turn holding
        for that turn's reply only (so the SFT model learns to follow an instruction where
        it sees one, and has never seen one held across turns).
        """
        rng = self.rng(f"sft:{split}")
        pool = self.prompts(split, n, purpose="sft")
        rows = []
        for p in pool:
            if rng.random() < self.spec.dialogue_fraction:
                turns = [p] + rng.sample(pool, rng.randint(1, self.spec.max_dialogue_turns - 1))
                messages = []
                for q in turns:
                    q = self.with_constraints(q, rng, inline=True) if rng.random() < self.spec.constrained_fraction else q
                    messages += [{"role": "user", "content": q.text},
                                 {"role": "assistant", "content": self.demonstration(q, rng)}]
                rows.append({"messages": messages})
                continue
            if rng.random() < self.spec.constrained_fraction:
                p = self.with_constraints(p, rng, inline=rng.random() < 0.5)
            rows.append({"messages": p.messages() + [{"role": "assistant", "content": self.demonstration(p, rng)}]})
        return rows

    def with_constraints(self, prompt: Prompt, rng: random.Random, inline: bool, max_n: int = 2) -> Prompt:
        """``prompt`` with 1..``max_n`` random constraints, in its system prompt or in front
        of the request (``inline``); unchanged when no constraint kind suits it."""
        kinds = tuple(self.spec.constraint_kinds)
        if prompt.family == "upper":
            # "in capital letters" and "answer in lower case" contradict each other; no
            # demonstration is asked both
            kinds = tuple(k for k in kinds if k != "language")
        if not kinds:
            return prompt
        cs = sample_constraints(rng, max_n, kinds)
        keys = tuple(c.key for c in cs)
        if inline:
            return replace(prompt, text=f"{system_prompt(cs)} {prompt.text}", constraints=keys)
        return replace(prompt, system=system_prompt(cs), constraints=keys)

    # -- comparisons -----------------------------------------------------------------------
    def candidates(self, prompt: Prompt, rng: random.Random) -> list[str]:
        """Replies of graded quality, from perfect to useless (for seed comparisons)."""
        if prompt.unsafe:
            replies = [REFUSAL, unsafe_compliance(prompt), "I don't know.", "I should not, but maybe ask a friend."]
        else:
            other = make_safe_prompt(rng, (prompt.family,)).answer
            wrong = self.mistake(prompt)[len(ANSWER_PREFIX):-1]
            # Every style comes both right and wrong, so that style alone never tells the
            # reward model whether the answer is right.
            chatter = "Good question, let me think about it step by step. "
            replies = [
                answer_reply(prompt.answer),
                prompt.answer,
                chatter + answer_reply(prompt.answer),
                answer_reply(wrong),
                wrong,
                chatter + answer_reply(wrong),
                answer_reply(other) if other != prompt.answer else "The answer is unclear.",
                REFUSAL,
                "I don't know.",
                answer_reply(prompt.answer) + SIGNOFF,
                answer_reply(wrong) + SIGNOFF,
            ]
        return [self.constrain(prompt, r) for r in dict.fromkeys(replies)]

    def compare(self, prompt: Prompt, a: str, b: str, rng: random.Random) -> dict:
        j = self.annotator.judge(prompt, a, b, rng)
        return {
            "prompt": prompt.messages(),
            "chosen": [{"role": "assistant", "content": j.chosen}],
            "rejected": [{"role": "assistant", "content": j.rejected}],
            "strength": j.strength,
            "gold_gap": j.gold_gap,
            "family": prompt.family,
            "safety": prompt.unsafe,
        }

    def seed_comparisons(self, n: int, split: str = "train") -> list[dict]:
        """Annotated pairs in TRL's explicit-prompt preference format, plus ``strength``."""
        rng = self.rng(f"pairs:{split}")
        rows = []
        for p in self.prompts(split, n, purpose="pairs"):
            cands = self.candidates(p, rng)
            if not p.unsafe and rng.random() < self.spec.same_style_pairs:
                # a right and a wrong answer in the same style, like two samples of one model
                # (paper 3.2.1): only the answer tells them apart
                style = rng.randrange(3)
                a, b = cands[style], cands[3 + style]
            else:
                a, b = rng.sample(cands, 2)
            rows.append(self.compare(p, a, b, rng))
        return rows

    # -- evaluation ------------------------------------------------------------------------
    def score(self, prompt: Prompt, reply: str) -> oracle.GoldScore:
        return oracle.score(prompt, reply)

    def score_many(self, prompts: Iterable[Prompt], replies: Iterable[str]) -> list[oracle.GoldScore]:
        return [oracle.score(p, r) for p, r in zip(prompts, replies, strict=True)]
