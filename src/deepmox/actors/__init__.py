"""Job kinds and the actor that runs their steps."""

from .kind import Kind, Step, StepContext
from .registry import Registry

__all__ = ["Kind", "Registry", "Step", "StepContext"]
