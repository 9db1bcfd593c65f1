"""The Open Inference Protocol V2 REST routes, as a handler for `httpserver.HttpServer`.

Thin on purpose: route, decode the body with `codec`, call the data plane, encode. Errors the data plane
raises carry their status; anything else is logged and answered 500 without taking the server down.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tandem.server import codec, serverinfo
from tandem.server.dataplane import DataPlane
from tandem.server.errors import InvalidInput, Overloaded, ServerError
from tandem.server.httpserver import Request, Response, error_response
from tandem.server.metrics import CONTENT_TYPE, ServerMetrics

log = logging.getLogger("tandem.server.rest")

HEADER_LENGTH = "inference-header-content-length"

# The V2 spec reads health from the status code alone (Triton's client does); KServe's server also answers
# {"live": true} / {"ready": true}, and KServe's client parses that body, so both are served.
_LIVE = Response(200, codec.dumps({"live": True}))
_READY = Response(200, codec.dumps({"ready": True}))


class RestApp:
    """Maps V2 paths to the data plane; call it with a `Request`."""

    def __init__(self, dataplane: DataPlane, metrics: ServerMetrics, *, serve_metrics: bool = True) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.serve_metrics = serve_metrics
        self.live = True
        self.draining = False
        """Set on SIGTERM: readiness fails so Kubernetes stops routing here; in-flight work completes."""

    def __call__(self, request: Request) -> Response | Any:
        parts = request.path.strip("/").split("/")
        try:
            if parts[0] == "v2":
                return self._v2(request, parts[1:])
            if parts == ["metrics"] and self.serve_metrics:
                return self._get(request) or self.metrics_response()
            raise _NotFound(request.path)
        except ServerError as exc:
            return error_response(exc.status, exc.message)

    def metrics_response(self) -> Response:
        return Response(200, self.metrics.exposition(), CONTENT_TYPE)

    def _v2(self, request: Request, parts: list[str]) -> Response | Any:
        if not parts or parts == [""]:
            return self._get(request) or Response(
                200,
                codec.dumps(
                    {"name": serverinfo.NAME, "version": serverinfo.VERSION, "extensions": serverinfo.EXTENSIONS}
                ),
            )
        if parts[0] == "health" and len(parts) == 2:
            if parts[1] == "live":
                return self._get(request) or (_LIVE if self.live else error_response(503, "not live"))
            if parts[1] == "ready":
                if self._get(request) is not None:
                    return self._get(request)
                if self.dataplane.ready() and not self.draining:
                    return _READY
                return error_response(503, "model not ready")
        if parts[0] == "models":
            return self._models(request, parts[1:])
        raise _NotFound(request.path)

    def _models(self, request: Request, parts: list[str]) -> Response | Any:
        if not parts or parts == [""]:
            return self._get(request) or Response(
                200, codec.dumps({"models": [model.name for model in self.dataplane.models]})
            )
        name, rest = parts[0], parts[1:]
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if not rest:
            return self._get(request) or Response(200, codec.dumps(self.dataplane.metadata(name, version)))
        if rest == ["ready"]:
            if self._get(request) is not None:
                return self._get(request)
            model = self.dataplane.model(name, version)
            body = codec.dumps({"name": model.name, "ready": model.ready})
            return Response(200 if model.ready else 503, body)
        if rest == ["infer"]:
            if request.method != "POST":
                return error_response(405, f"{request.method} not allowed on {request.path}; use POST")
            return self._infer(request, name, version)
        raise _NotFound(request.path)

    @staticmethod
    def _get(request: Request) -> Response | None:
        """None for GET/HEAD; a 405 response otherwise."""
        if request.method in ("GET", "HEAD"):
            return None
        return error_response(405, f"{request.method} not allowed on {request.path}; use GET")

    async def _infer(self, request: Request, name: str, version: str | None) -> Response:
        model_label = name if name in {m.name for m in self.dataplane.models} else "_unknown"
        self.metrics.started(model_label)
        status = 500
        try:
            response = await self._infer_inner(request, name, version)
            status = response.status
            return response
        finally:
            self.metrics.finished(model_label, status, time.perf_counter() - request.received)

    async def _infer_inner(self, request: Request, name: str, version: str | None) -> Response:
        try:
            header_length = _header_length(request.headers.get(HEADER_LENGTH))
            decoded = codec.decode_request(request.body, header_length, name, version)
            if decoded.id is None and "x-request-id" in request.headers:
                decoded.id = request.headers["x-request-id"]
            result = await self.dataplane.infer(decoded)
            body, json_length = codec.encode_response(result)
        except Overloaded as exc:
            response = error_response(exc.status, exc.message)
            response.headers.append(("retry-after", str(exc.retry_after_s)))
            return response
        except ServerError as exc:
            return error_response(exc.status, exc.message)
        except Exception:
            log.exception("inference failed", extra={"model": name})
            return error_response(500, "internal server error")
        if json_length is None:
            return Response(200, body)
        return Response(200, body, "application/octet-stream", [("inference-header-content-length", str(json_length))])


class _NotFound(ServerError):
    status = 404

    def __init__(self, path: str) -> None:
        super().__init__(f"no route for {path}")


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length {value!r} is not an integer") from None
