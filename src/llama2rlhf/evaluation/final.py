"""The run's end-of-run numbers under names that do not depend on the number of rounds.

A sweep optimises one metric name across runs of any length, so ``summary["final"]`` (and
the loggers' ``final/*`` keys) holds the newest measurement of each headline number:

``rm_accuracy``      overall held-out accuracy of the newest helpfulness reward model
``gold_reward``      gold-oracle reward of the newest evaluated policy (toy world)
``task_accuracy``    its task accuracy (toy world)
``win_rate_vs_sft``  its win rate against the SFT model, judged by the gold oracle
``round``            the round of the newest evaluated policy (0: the SFT model)

The policy numbers all come from one model: the newest round that evaluated its policy,
else the SFT stage's evaluation. ``rm_accuracy`` comes from the newest round that trained a
reward model, else round 0's. A number no stage measured (no gold oracle on real data) is
left out.
"""

from __future__ import annotations

from typing import Any

POLICY_KEYS = ("gold_reward", "task_accuracy", "win_rate_vs_sft")


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    rounds = list(reversed(summary.get("rounds", [])))
    out: dict[str, float] = {}
    for entry in [*rounds, summary]:
        acc = entry.get("rm_accuracy", {}).get("overall")
        if acc is not None:
            out["rm_accuracy"] = acc
            break
    # the policy numbers: the newest evaluated model, then SFT (round 0, no win rate)
    for entry in [*rounds, {"round": 0, **summary.get("sft", {})}]:
        if "gold_reward" in entry or "task_accuracy" in entry:
            out.update({k: entry[k] for k in POLICY_KEYS if k in entry})
            out["round"] = entry["round"]
            break
    return out
