"""The embedded default world: procedural tasks, a gold oracle, a simulated annotator."""

from llama2rlhf.toyworld.tasks import Prompt
from llama2rlhf.toyworld.world import ToyWorld, WorldSpec

__all__ = ["Prompt", "ToyWorld", "WorldSpec"]
