"""The names under which stages publish paths in ``ctx.state.artifacts`` (``state.json``),
for later stages, and a resumed run, to find them with ``ctx.artifact(name)``.

Each name, the path it holds, and the stage that writes it:

* ``base``: the starting checkpoint; the pipeline, before the first stage
  (``llama2rlhf.runtime.models.build_base``)
* ``tokenizer``: the starting checkpoint's tokenizer; the same
* ``sft``: the SFT model, the policy's reference in evaluation; ``sft``
* ``policy``: the newest policy; ``sft``, ``rejection_sampling``, ``ppo`` (``rloo``, ``grpo``)
* ``reward``: the newest helpfulness reward model; ``reward``, and the pipeline at the start
  when ``reward_model.name_or_path`` names one
* ``reward_safety``: the newest safety reward model; likewise
  (``reward_model.safety_name_or_path``)
* ``reward_whitening``: the combined reward's whitening statistics (``whitening.json``);
  ``reward``
* ``gatt_baseline``: the policy Ghost Attention started from, the baseline of its
  evaluation; the ``gatt`` augmenter, in its first round
* ``round_<k>/comparisons``: round k's labelled comparisons (``comparisons.jsonl``);
  ``collect``
* ``round_<k>/kept``: round k's kept samples (``kept.jsonl``); ``rejection_sampling``

Config values name artifacts too (``rs.init_from``, ``reward_model.init_from``, an
annotator option ``run:<name>``), so the strings are part of the config's interface.
"""

from __future__ import annotations

BASE = "base"
TOKENIZER = "tokenizer"
SFT = "sft"
POLICY = "policy"
REWARD = "reward"
REWARD_SAFETY = "reward_safety"
REWARD_WHITENING = "reward_whitening"
GATT_BASELINE = "gatt_baseline"

# the artifacts that are model folders (config.json and weights) when they are in the run
# directory; a resumed run checks that each is whole (llama2rlhf.runtime.run.run_dir_problems)
MODELS = (BASE, SFT, POLICY, REWARD, REWARD_SAFETY, GATT_BASELINE)

# reward model (the names combiners read their scores under) -> its artifact
REWARD_MODELS = {"helpfulness": REWARD, "safety": REWARD_SAFETY}


def comparisons(round: int) -> str:
    """Round ``round``'s comparisons (``comparisons.jsonl`` of its ``collect``)."""
    return f"round_{round}/comparisons"


def kept(round: int) -> str:
    """Round ``round``'s kept samples (``kept.jsonl`` of its ``rejection_sampling``)."""
    return f"round_{round}/kept"
