"""Preference strength labels and their margins (paper 3.2.1 and Table 27).

Llama 2's annotators rated each comparison on a four-point scale; the reward model's
margin loss ``-log sigmoid(r_c - r_r - m(strength))`` pushes pairs with a clearer
preference further apart.
"""

from __future__ import annotations

# Strongest first: the order the paper's Table 8 reports RM accuracy in.
STRENGTHS: tuple[str, ...] = (
    "significantly_better",
    "better",
    "slightly_better",
    "negligibly_better",
)

# Table 27, "Margin Small" and "Margin Large".
MARGINS_SMALL: dict[str, float] = {
    "significantly_better": 1.0,
    "better": 2.0 / 3.0,
    "slightly_better": 1.0 / 3.0,
    "negligibly_better": 0.0,
}
MARGINS_LARGE: dict[str, float] = {
    "significantly_better": 3.0,
    "better": 2.0,
    "slightly_better": 1.0,
    "negligibly_better": 0.0,
}

# The paper's helpfulness RM accuracy per bucket (Table 8, Meta Helpful. test set).
PAPER_HELPFULNESS_RM_ACCURACY: dict[str, float] = {
    "significantly_better": 0.807,
    "better": 0.675,
    "slightly_better": 0.609,
    "negligibly_better": 0.547,
}
# Its accuracy over all pairs of that test set (Table 8's "Avg" column, also in Table 7).
PAPER_HELPFULNESS_RM_ACCURACY_OVERALL = 0.632


def check_strength(label: str) -> str:
    """Return ``label`` if it is one of :data:`STRENGTHS`, else raise ``ValueError``."""
    if label not in STRENGTHS:
        raise ValueError(f"unknown strength label {label!r}; expected one of {', '.join(STRENGTHS)}")
    return label
