"""PNG plots of the run's results (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path


def plot_adherence(path: Path, series: dict[str, dict[str, float]]) -> Path:
    """Instruction adherence per dialogue turn, one line per model (paper Table 30)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    all_turns: set[int] = set()
    for label, by_turn in series.items():
        turns = sorted(int(t) for t in by_turn)
        all_turns.update(turns)
        ax.plot(turns, [100 * by_turn[str(t)] for t in turns], marker="o", markersize=3, label=label)
    ax.set_xticks(sorted(all_turns))  # turns are whole numbers
    ax.set_xlabel("dialogue turn")
    ax.set_ylabel("replies that follow the system instruction (%)")
    ax.set_ylim(-3, 103)
    ax.set_title("Ghost Attention: system instruction held over turns")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
