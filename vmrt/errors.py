"""The root of vmrt's own exceptions, so callers can tell them from bugs."""


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
