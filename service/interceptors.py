"""One place that turns domain errors into gRPC status codes.

Servicers raise :mod:`sessionrec.errors` exceptions; this interceptor maps
them to status codes with the error's message (which names the field). Any
other exception is a bug: it is logged with its traceback and the client gets
INTERNAL, never UNKNOWN and never a stack trace.

It also hands the caller's deadline down (:mod:`sessionrec.deadline`), so the
store waits no longer than the caller does, and does not start a call whose
caller already gave up while it waited for a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from sessionrec import deadline, errors

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
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_for(exc: errors.SessionrecError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def abort_with(context: grpc.ServicerContext, exc: errors.SessionrecError) -> NoReturn:
    """Ends the call with ``exc``'s status code and message (and, for a limit with
    a known wait, the ``retry-after-ms`` trailing metadata)."""
    retry_after = getattr(exc, "retry_after_ms", None)
    if retry_after is not None:
        context.set_trailing_metadata((("retry-after-ms", str(int(retry_after))),))
    context.abort(status_for(exc), str(exc))
    raise AssertionError("unreachable: abort raises")


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method  # type: ignore[attr-defined]
        if handler.stream_stream is not None:
            return self._streaming(method, handler)
        if handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"deadline: {method}: the caller's deadline passed before the call started",
                )
            if not context.is_active():
                context.abort(grpc.StatusCode.CANCELLED, f"{method}: the caller went away")
            try:
                with deadline.caller_deadline(remaining):
                    return behavior(request, context)
            except Exception as exc:
                _end_with(method, context, exc)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _streaming(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The same mapping for a bidirectional stream: an error ends the stream
        with its status (responses already sent stand)."""
        behavior = handler.stream_stream
        parse = handler.request_deserializer

        def parsed(raw: Iterator[bytes]) -> Iterator[Any]:
            # Requests are parsed here rather than by gRPC: a stream whose
            # request gRPC fails to parse never finishes on the server (grpcio
            # 1.85: server.stop() then waits forever).
            for k, data in enumerate(raw):
                try:
                    yield parse(data) if parse is not None else data
                except Exception:
                    raise errors.InvalidArgument(
                        f"request: message {k} of the stream does not parse"
                    ) from None

        def guarded(raw: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                # No caller deadline for the store's waits here: a stream lives
                # long, and a generator may be closed from another thread.
                yield from behavior(parsed(raw), context)
            except grpc.RpcError:
                # Reading the next request failed (bytes that do not parse, the
                # client went away): gRPC has ended the call with its status and
                # knows this error; ending the stream normally or aborting again
                # would leave the call unfinished (server.stop would hang).
                raise
            except Exception as exc:
                _end_with(method, context, exc)

        return grpc.stream_stream_rpc_method_handler(
            guarded, request_deserializer=None, response_serializer=handler.response_serializer
        )


def _end_with(method: str, context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    """Ends a call that raised ``exc``: a domain error with its status (logged
    when it is INTERNAL), anything else INTERNAL with the traceback logged."""
    if isinstance(exc, errors.SessionrecError):
        if status_for(exc) is grpc.StatusCode.INTERNAL:
            log.error("%s failed", method, exc_info=exc)
        abort_with(context, exc)
    log.error("%s failed with an unexpected error", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error (logged)")
    raise AssertionError("context.abort returned")  # it raises; for the type checker
