"""The embedded default world: procedural tasks, a gold oracle, a simulated annotator."""

from .tasks import Prompt
from .world import ToyWorld, WorldSpec

__all__ = ["Prompt", "ToyWorld", "WorldSpec"]
