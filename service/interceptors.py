"""One place that turns domain errors into gRPC status codes.

Servicers raise :mod:`sessionrec.errors` exceptions; this interceptor maps
them to status codes with the error's message (which names the field). Any
other exception is a bug: it is logged with its traceback and the client gets
INTERNAL, never UNKNOWN and never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from sessionrec import errors

log = logging.getLogger("sessionrec.service")

STATUS_BY_ERROR: dict[type[errors.SessionrecError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ArtifactError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_for(exc: errors.SessionrecError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method  # type: ignore[attr-defined]
        behavior = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except errors.SessionrecError as exc:
                code = status_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.error("%s failed", method, exc_info=True)
                context.abort(code, str(exc))
            except Exception:
                log.exception("%s failed with an unexpected error", method)
                context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error (logged)")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
