"""``sampler=example_distinct``: the built-in ``hf`` sampler, with duplicate samples redrawn.

Rejection sampling keeps the best of K samples per prompt (paper 3.2.3, Fig. 7); two equal
samples are one candidate scored twice. This sampler wraps another registered sampler
(``hf``, through ``llama2rlhf.plugins.named``, as any plugin may), and where a prompt's K samples repeat
a text, samples that prompt again up to ``redraws`` times and puts fresh texts in place
of the repeats. The contract still holds: ``n`` samples per prompt, in prompt order, each
with its own token count. With ``log_path`` set, every call appends one JSON line: how
many prompts, samples, tokens, and how many distinct texts before and after the redraws.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from llama2rlhf.config import SamplerConfig

NAME = "example_distinct"
INNER = "hf"


@dataclass
class ExampleDistinctConfig(SamplerConfig):
    """``sampler=example_distinct``; ``batch_tokens`` (inherited) goes to the wrapped ``hf`` sampler."""

    name: str = NAME
    # extra sampling passes over the prompts whose samples repeat (0: just count them)
    redraws: int = 1
    # a JSON Lines file that gets one line per sample() call; None: no file
    log_path: Optional[str] = None


def replace_duplicates(samples: Sequence[Any], pool: Sequence[Any]) -> list[Any]:
    """``samples`` with each repeat of an earlier text replaced by the next sample of ``pool``
    whose text none of them has; repeats stay where ``pool`` runs out, so the length and
    the first occurrence of every text never change."""
    taken = {s.text for s in samples}
    seen: set[str] = set()
    fresh = iter(pool)
    out = []
    for s in samples:
        if s.text in seen:
            s = next((p for p in fresh if p.text not in taken), s)
            taken.add(s.text)
        seen.add(s.text)
        out.append(s)
    return out


def distinct(samples: Sequence[Any]) -> int:
    return len({s.text for s in samples})


class DistinctSampler:
    def __init__(self, inner: Any, redraws: int = 1, log_path: Optional[str] = None):
        if redraws < 0:
            raise ValueError(f"sampler.redraws must be >= 0, got {redraws}")
        self.inner = inner
        self.redraws = redraws
        self.log_path = Path(log_path) if log_path else None

    def sample(self, prompts, n: int, temperature: float, max_new_tokens: int, desc: Optional[str] = None,
               seeds: Optional[Sequence[int]] = None):
        """The sampler contract (:class:`llama2rlhf.sampling.Sampler`); ``desc`` labels the
        progress output (and this sampler's log lines). A redraw of a prompt draws from a
        seed derived from the prompt's own, so it stays a function of that seed alone."""
        from llama2rlhf.runtime.seeding import item_seeds

        desc = desc or "sampling"
        started = time.perf_counter()
        out = self.inner.sample(prompts, n, temperature, max_new_tokens, desc=desc, seeds=seeds)
        before = sum(distinct(ss) for ss in out)
        redrawn = 0
        # greedy decoding repeats itself by definition: nothing to redraw
        for attempt in range(self.redraws if temperature > 0 and n > 1 else 0):
            repeating = [i for i, ss in enumerate(out) if distinct(ss) < len(ss)]
            if not repeating:
                break
            redrawn += len(repeating)
            more = self.inner.sample([prompts[i] for i in repeating], n, temperature, max_new_tokens,
                                     desc=f"{desc} (redraw {attempt + 1})",
                                     seeds=None if seeds is None else
                                     [item_seeds(seeds[i], [f"redraw {attempt + 1}"])[0] for i in repeating])
            for i, pool in zip(repeating, more, strict=True):
                out[i] = replace_duplicates(out[i], pool)
        self.record({
            "desc": desc, "prompts": len(prompts), "n": n, "temperature": temperature,
            "samples": sum(len(ss) for ss in out),
            "tokens": sum(s.n_tokens for ss in out for s in ss),
            "finished": sum(s.finished for ss in out for s in ss),
            "distinct_before": before, "distinct_after": sum(distinct(ss) for ss in out),
            "prompts_redrawn": redrawn, "seconds": round(time.perf_counter() - started, 3),
        })
        return out

    def record(self, line: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        from llama2rlhf.data.jsonl import append_jsonl

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.log_path, [line])


def make_distinct_sampler(model_path: str, cfg: Any, *, redraws: int = 1, log_path: Optional[str] = None,
                          **inner_options: Any) -> DistinctSampler:
    """The ``register_samplers`` factory: ``factory(model_path, cfg, **options)`` -> a sampler.

    ``options`` are the fields of the ``sampler`` node but ``name`` (typed as
    :class:`ExampleDistinctConfig` types them): ``redraws`` and ``log_path`` are this
    sampler's, the rest (``batch_tokens``) go to the wrapped ``hf`` sampler, which loads the
    policy from ``model_path``.
    """
    from llama2rlhf import plugins

    inner = plugins.named("samplers", INNER, inner_options).call(model_path, cfg)
    return DistinctSampler(inner, redraws=redraws, log_path=log_path)
