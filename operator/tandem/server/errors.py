"""Errors the server answers with, each carrying its HTTP status so no layer needs to know HTTP.

The data plane raises these; the REST adapter turns them into `{"error": message}`. Anything else that
escapes a handler is a bug and becomes a 500 with a generic message (and a logged traceback), never a crash.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base class: an error with a status code and a message safe to send to the client."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServerError):
    """The request is malformed or does not match the model signature (400)."""

    status = 400


class ModelNotFound(ServerError):
    """No model (or version) by that name is served here (404)."""

    status = 404


class ModelNotReady(ServerError):
    """The model exists but is still loading or shutting down (503)."""

    status = 503


class Overloaded(ServerError):
    """More infer requests are waiting than the configured bound (503 with Retry-After; gRPC UNAVAILABLE).

    Refusing at once is kinder than queueing without end: the client (or the Service's next endpoint) can
    retry elsewhere, while a request queued behind thousands of others would time out anyway.
    """

    status = 503
    retry_after_s = 1


class MemoryExhausted(Overloaded):
    """The server's memory budget cannot hold the request now (503 with Retry-After; gRPC RESOURCE_EXHAUSTED,
    the code for a resource the client may ask for again later). Refused before the request is parsed."""


class PayloadTooLarge(ServerError):
    """The request body exceeds the configured maximum, or could never fit the memory budget (413)."""

    status = 413


class InferenceFailed(ServerError):
    """The model failed on inputs that passed every check its signature allows (500, as KServe's
    InferenceError): the fault is the model's, and a canary's error rate must count it."""

    status = 500


class ModelLoadError(RuntimeError):
    """The model could not be fetched, verified, opened or warmed up; the server must not become ready."""
