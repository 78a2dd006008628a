"""The root of vmrt's own exceptions, so callers can tell them from bugs."""

import contextlib
import re
from collections.abc import Iterator
from typing import Any


class VmrtError(Exception):
    """An error with a message meant for the user."""


class NotFoundError(VmrtError):
    """The object does not exist. (gRPC NOT_FOUND)"""


class AlreadyExistsError(VmrtError):
    """(gRPC ALREADY_EXISTS)"""


class InvalidArgumentError(VmrtError):
    """The request is malformed; the message names the field. (gRPC INVALID_ARGUMENT)"""


class FailedPreconditionError(VmrtError):
    """The object is in the wrong state for the request. (gRPC FAILED_PRECONDITION)"""


class UnimplementedError(VmrtError):
    """(gRPC UNIMPLEMENTED)"""


class DeadlineExceededError(VmrtError):
    """(gRPC DEADLINE_EXCEEDED)"""


class UnauthenticatedError(VmrtError):
    """(gRPC UNAUTHENTICATED)"""


class UnavailableError(VmrtError):
    """A remote service could not be reached. (gRPC UNAVAILABLE)"""


class ResourceExhaustedError(VmrtError):
    """A bounded resource is full; retrying later may work. (gRPC RESOURCE_EXHAUSTED)"""


_FIELD_FIRST = re.compile(r"^[a-z_][a-z0-9_]*(\[[^\]]*\])?([.+][a-z_][a-z0-9_]*(\[[^\]]*\])?)*"
                          r"( \([^)]*\))?( and [a-z_.\[\]0-9]+ \([^)]*\))?:")


def names_a_field(message: str) -> bool:
    """Whether ``message`` starts with a field path: ``config.mounts[0].host_path: ...``."""
    return bool(_FIELD_FIRST.match(message))


@contextlib.contextmanager
def about(field: str) -> Iterator[None]:
    """Put ``field`` in front of the InvalidArgumentErrors raised inside:
    ``field.sub: ...`` when they name a field of it, ``field: ...`` when not."""
    try:
        yield
    except InvalidArgumentError as exc:
        message = str(exc)
        raise InvalidArgumentError(f"{field}.{message}" if names_a_field(message)
                                   else f"{field}: {message}") from None


class StatusError(VmrtError):
    """Another gRPC service answered with an error: ``code`` is its status,
    passed on as it is."""

    def __init__(self, code: Any, message: str) -> None:
        self.code = code
        super().__init__(message)
