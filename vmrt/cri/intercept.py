"""Wrapping a gRPC method handler's behaviour, for the server's interceptors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def rewrap(handler: Any, unary: Wrap, stream: Wrap) -> Any:
    """``handler`` with its unary-unary behaviour wrapped by ``unary`` and its
    unary-stream one by ``stream`` (the CRI has no other kinds)."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    return handler
