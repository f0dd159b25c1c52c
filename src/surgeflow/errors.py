"""The surgeflow exception tree.

    SurgeflowError
    ├── ConfigError              bad or missing configuration
    ├── ValidationError          a request or input that does not fit its schema
    ├── NotFound                 a run, workflow, model or key that does not exist
    ├── Conflict                 the operation does not fit the object's current state
    ├── AuthError                missing or unknown credentials
    ├── ModelError               a model call failed
    │   ├── UpstreamError        the endpoint answered with an error status
    │   │   └── RateLimited      the endpoint answered 429 (carries retry_after_s)
    │   ├── UpstreamTimeout      the endpoint did not answer in time
    │   ├── UpstreamUnavailable  the endpoint could not be reached
    │   └── Overloaded           no endpoint can take the call now (carries retry_after_s)
    ├── StepError                a workflow step failed after its retries
    ├── StoreError               the run store failed
    └── QueueError               the queue failed

Third-party errors are translated where they cross into surgeflow (`raise X from exc`), so callers
catch these classes only.
"""

from __future__ import annotations


class SurgeflowError(Exception):
    """Base class of every error surgeflow raises."""


class ConfigError(SurgeflowError):
    """The configuration is invalid or incomplete."""


class ValidationError(SurgeflowError):
    """A request or workflow input does not fit its schema."""


class NotFound(SurgeflowError):
    """The named object does not exist."""


class Conflict(SurgeflowError):
    """The operation does not fit the object's current state."""


class AuthError(SurgeflowError):
    """Credentials are missing or unknown."""


class ModelError(SurgeflowError):
    """A model call failed."""


class UpstreamError(ModelError):
    """A model endpoint answered with an error status."""

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(UpstreamError):
    """A model endpoint answered 429 Too Many Requests."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, status=429)
        self.retry_after_s = retry_after_s


class UpstreamTimeout(ModelError):
    """A model endpoint did not answer within its timeout."""


class UpstreamUnavailable(ModelError):
    """A model endpoint could not be reached."""


class Overloaded(ModelError):
    """No endpoint can take the call now: all are at their limits, cooling down or ejected."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StepError(SurgeflowError):
    """A workflow step failed after all its attempts."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step {step!r} failed: {message}")
        self.step = step


class StoreError(SurgeflowError):
    """The run store failed."""


class QueueError(SurgeflowError):
    """The queue failed."""
