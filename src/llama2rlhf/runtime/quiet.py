"""Silence the one expected warning of turning a policy into a reward model."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def quiet_new_head():
    # Loading a causal-LM checkpoint as a sequence classifier always reports the new
    # "score" head as newly initialised; that is the point (paper 3.2.2), not a problem.
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
