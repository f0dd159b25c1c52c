"""surgeflow: serve AI agent workflows to many concurrent users, and tune how they are served."""

from surgeflow.config import Settings, load_settings
from surgeflow.errors import (
    ConfigError,
    ModelError,
    NotFound,
    StepError,
    SurgeflowError,
    ValidationError,
)
from surgeflow.workflow import Branch, Context, Loop, Map, Parallel, Step, Workflow, step

__version__ = "0.1.0"

__all__ = [
    "Branch",
    "ConfigError",
    "Context",
    "Loop",
    "Map",
    "ModelError",
    "NotFound",
    "Parallel",
    "Settings",
    "Step",
    "StepError",
    "SurgeflowError",
    "ValidationError",
    "Workflow",
    "__version__",
    "load_settings",
    "step",
]
