"""Evaluation: policy quality on held-out prompts, RM accuracy per strength bucket."""
