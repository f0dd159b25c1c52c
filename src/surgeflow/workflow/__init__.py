"""Agent workflows as graphs of async steps."""

from surgeflow.workflow.context import Context
from surgeflow.workflow.nodes import Branch, Loop, Map, Parallel, Step, step
from surgeflow.workflow.runner import StepEvent
from surgeflow.workflow.workflow import Workflow

__all__ = ["Branch", "Context", "Loop", "Map", "Parallel", "Step", "StepEvent", "Workflow", "step"]
