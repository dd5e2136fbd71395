"""deepmox: a content-factory job daemon.

Every piece of work runs as a short-lived actor with a hard time budget; all
state lives in a SQL system of record (Cloudflare D1 or a SQLite file).
"""

from .actors import Kind, Registry, Step, StepContext
from .actors.registry import register
from .client import Client, JobSpec, open_client
from .config import Config
from .errors import (
    BudgetExceededError,
    ConfigError,
    DeepmoxError,
    ErrorClass,
    InvalidOutputError,
    JobError,
    PermanentError,
    RateLimitedError,
    RefusedError,
    TransientError,
)
from .jobs import Event, EventType, Job, JobState

__version__ = "0.1.0"

__all__ = [
    "BudgetExceededError", "Client", "Config", "ConfigError", "DeepmoxError", "ErrorClass",
    "Event", "EventType", "InvalidOutputError", "Job", "JobError", "JobSpec", "JobState",
    "Kind", "PermanentError", "RateLimitedError", "RefusedError", "Registry", "Step",
    "StepContext", "TransientError", "__version__", "open_client", "register",
]
