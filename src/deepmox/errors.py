"""deepmox's error hierarchy: one root, families by what the caller can do.

Driver exceptions (sqlite3, httpx2, ...) are translated once, at the binding
that saw them, into one of the classified :class:`JobError` families below.
The supervisor switches on :attr:`JobError.error_class`, never on driver types
or message text.

==================  ============================================================
family              what the supervisor does
==================  ============================================================
TransientError      retry with exponential backoff and full jitter (an attempt)
RateLimitedError    wait at least ``retry_after``; record a shared throttle; no
                    attempt used, bounded by a maximum total deferral
PermanentError      fail at once, never retry
BudgetExceededError redo from the checkpoint; a step that never fits is permanent
InvalidOutputError  the AI provider answered nonsense; the next one is tried
==================  ============================================================

Errors that are not about a job -- a bad configuration, a refused submission,
a lost lease -- have their own classes, and the CLI turns each into one
readable line on stderr with a documented exit code.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    """The classes stored on a job and its events (``error_class``)."""

    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"
    ZOMBIE = "zombie"
    BUDGET_EXCEEDED = "budget_exceeded"
    INVALID_OUTPUT = "invalid_output"


class DeepmoxError(Exception):
    """The root of every error deepmox raises on purpose."""


class ConfigError(DeepmoxError):
    """The configuration file or environment is unusable.

    The message names the offending key as a path (``$.d1.backend``).
    """


class RefusedError(DeepmoxError):
    """A request was refused before it changed anything: a malformed job spec,
    an unknown kind, a payload that is too large, a bad command-line value.

    The CLI exits 2 on it; the HTTP API answers 4xx.
    """


class NotFoundError(RefusedError):
    """The job (or other object) named does not exist."""


class ConflictError(RefusedError):
    """The request does not fit the object's current state (retrying a job that
    is still running, cancelling a finished one)."""


class LeaseLostError(DeepmoxError):
    """A fenced write matched no row: another actor owns the job now, or it was
    cancelled. The actor stops at once and its result is dropped."""


class JobError(DeepmoxError):
    """An error with a class that tells the supervisor what to do next."""

    error_class: ErrorClass = ErrorClass.PERMANENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientError(JobError):
    """A passing fault: a 5xx, a reset connection, a lost network."""

    error_class = ErrorClass.TRANSIENT


class RateLimitedError(JobError):
    """The dependency ``upstream`` is throttling; wait ``retry_after`` seconds."""

    error_class = ErrorClass.RATE_LIMITED

    def __init__(self, message: str, *, upstream: str, retry_after: float) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.retry_after = max(0.0, retry_after)


class PermanentError(JobError):
    """This can never succeed: bad input, an auth or validation 4xx, corrupt media."""

    error_class = ErrorClass.PERMANENT


class BudgetExceededError(JobError):
    """A step ran past the actor's budget and was cancelled."""

    error_class = ErrorClass.BUDGET_EXCEEDED


class InvalidOutputError(JobError):
    """An AI provider's output failed validation after a repair attempt."""

    error_class = ErrorClass.INVALID_OUTPUT


# -- the D1 binding's families --------------------------------------------------


class D1Error(JobError):
    """Something went wrong talking to the system of record."""


class D1UnavailableError(D1Error, TransientError):
    """The database could not be reached or reset itself; try again shortly."""


class D1RateLimitedError(D1Error, RateLimitedError):
    """D1 (or its REST API) is throttling this account."""


class D1QueryError(D1Error, PermanentError):
    """The statement itself was refused: a SQL error, a bad request, bad credentials."""


# -- the media binding's families -----------------------------------------------


class MediaError(JobError):
    """ffmpeg or ffprobe could not do what was asked."""


class MediaUnavailableError(MediaError, TransientError):
    """The machine could not run ffmpeg just now: out of memory (or killed at the
    memory limit), no space left on the scratch disk; try again shortly."""


class MediaInputError(MediaError, PermanentError):
    """The input is not media deepmox can use: undecodable, truncated, empty, an
    unsupported container or codec, no video stream, or a playlist that points
    elsewhere. The message says why in plain words."""


class MediaBudgetError(MediaError, BudgetExceededError):
    """ffmpeg ran out of the time it was given: its CPU-time limit (RLIMIT_CPU)
    or the binding's own wall-clock limit, not the actor's cancel scope."""


# -- the R2 binding's families --------------------------------------------------


class R2Error(JobError):
    """Something went wrong talking to the object store."""


class R2UnavailableError(R2Error, TransientError):
    """The store could not be reached, reset the connection or answered 5xx;
    try again shortly."""


class R2RateLimitedError(R2Error, RateLimitedError):
    """R2 is throttling (429, 503 SlowDown, or too many writes to one key)."""


class R2PermanentError(R2Error, PermanentError):
    """The request itself was refused: bad credentials, a missing bucket, a bad
    request, or a local source file that cannot be read."""


class R2KeyError(R2PermanentError):
    """The key is not one the binding accepts (see
    :func:`deepmox.bindings.r2.keys.validate_key`), or the filesystem backend
    cannot hold it beside an existing key (``a`` and ``a/b``)."""


class R2NotFoundError(R2PermanentError):
    """:meth:`get` or :meth:`get_bytes` of a key that holds no object."""


# -- the AI binding's families --------------------------------------------------


class AIError(JobError):
    """Something went wrong asking an inference provider."""


class AIUnavailableError(AIError, TransientError):
    """The provider failed in passing: a 5xx, a reset connection, a timeout, a CLI
    that crashed or printed something that is not its result. The job is retried
    with backoff, and the provider's upstream is held for everyone for a growing
    time, so that a failing API is probed, not stormed."""

    def __init__(self, message: str, *, upstream: str) -> None:
        super().__init__(message)
        self.upstream = upstream


class AIRateLimitedError(AIError, RateLimitedError):
    """The provider is throttling: a 429 with ``retry-after``, or (``overloaded``)
    a 529 or a 429 without a wait, for which the gate chooses a growing one."""

    def __init__(self, message: str, *, upstream: str, retry_after: float,
                 overloaded: bool = False) -> None:
        super().__init__(message, upstream=upstream, retry_after=retry_after)
        self.overloaded = overloaded


class AIPermanentError(AIError, PermanentError):
    """The provider refused the request for good: bad credentials, no credit, a
    spend cap, a request it cannot take, an unknown model."""


class AIInvalidOutputError(AIError, InvalidOutputError):
    """A provider's answer failed validation, even after one repair request; the
    next provider is tried. ``errors`` are the validation errors, readable."""

    def __init__(self, message: str, *, provider: str, errors: list[str]) -> None:
        super().__init__(message)
        self.provider = provider
        self.errors = errors
