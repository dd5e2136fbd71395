"""JSON error bodies, and the one table that maps exceptions to statuses.

Every error the API answers has the body ``{"error": {"type": ..., "message":
...}}``; a client switches on the status and ``type``, never on the message.

======  ======================  ===============================================
status  type                    when
======  ======================  ===============================================
400     ``malformed_json``      the body is not JSON (or nests too deeply)
400     ``invalid_request``     JSON of the wrong shape, a bad query parameter
                                or header
401     ``unauthorized``        a token is needed and none was sent
403     ``forbidden``           the token is wrong, or a read token on a write
404     ``not_found``           no such route, or no such job
405     ``method_not_allowed``  the route exists for other methods (``Allow``)
409     ``conflict``            cancel or retry does not fit the job's state
413     ``payload_too_large``   the body is over ``[server] max_body_bytes``
422     ``refused``             valid JSON, but not a job deepmox accepts: an
                                unknown kind, a payload that does not decode
503     the error's class name  the system of record failed
                                (``D1UnavailableError``, ...); the body also
                                carries ``error_class`` (``transient``, ...)
500     ``internal``            a fault of the server itself, logged with its
                                traceback; the message says nothing more
======  ======================  ===============================================

Nothing a client sends can produce a 500: every way a request can be wrong is
caught where it is parsed and raised as an :class:`HttpError`.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import msgspec

from ..errors import ConflictError, JobError, NotFoundError, RateLimitedError, RefusedError

log = logging.getLogger("deepmox.api")

#: echoed client input (an unknown kind, a decode error) is cut to this length
MAX_MESSAGE_CHARS = 1_000

Headers = tuple[tuple[bytes, bytes], ...]

JSON_HEADERS: Headers = ((b"content-type", b"application/json"),
                         (b"cache-control", b"no-store"))


class ErrorDetail(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
    message: str
    #: only on 503: the JobError's class, which says whether to retry
    error_class: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


class HttpError(Exception):
    """A request the API refuses with a 4xx; raised where the request is parsed."""

    def __init__(self, status: int, error_type: str, message: str,
                 headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.type = error_type
        self.message = message
        self.headers = headers


class ErrorResponse(NamedTuple):
    status: int
    body: bytes
    headers: Headers


_encode = msgspec.json.Encoder().encode


def _clip(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + f"... ({len(message):,} characters)"


def error_body(error_type: str, message: str, error_class: str | None = None) -> bytes:
    return _encode(ErrorBody(ErrorDetail(error_type, _clip(message), error_class)))


def response_for(exc: Exception, *, method: str = "", path: str = "") -> ErrorResponse:
    """The response for ``exc``; logs it when it is a fault of the server.

    The order matters: NotFoundError and ConflictError are RefusedErrors."""
    if isinstance(exc, HttpError):
        return ErrorResponse(exc.status, error_body(exc.type, exc.message), exc.headers)
    if isinstance(exc, NotFoundError):
        return ErrorResponse(404, error_body("not_found", str(exc)), ())
    if isinstance(exc, ConflictError):
        return ErrorResponse(409, error_body("conflict", str(exc)), ())
    if isinstance(exc, RefusedError):
        return ErrorResponse(422, error_body("refused", str(exc)), ())
    if isinstance(exc, JobError):
        log.warning("%s %s: %s: %s", method, path, type(exc).__name__, exc.message,
                    extra={"event": "api_unavailable", "error_class": str(exc.error_class)})
        headers: Headers = ()
        if isinstance(exc, RateLimitedError):
            headers = ((b"retry-after", str(max(1, round(exc.retry_after))).encode()),)
        return ErrorResponse(
            503, error_body(type(exc).__name__, exc.message, str(exc.error_class)), headers)
    log.error("%s %s: unhandled %s", method, path, type(exc).__name__, exc_info=exc,
              extra={"event": "api_error"})
    return ErrorResponse(500, error_body("internal", "internal server error (logged)"), ())


__all__ = ["JSON_HEADERS", "ErrorBody", "ErrorDetail", "ErrorResponse", "Headers", "HttpError",
           "error_body", "response_for"]
