"""Errors the agent raises; the service boundary maps ``code`` to a gRPC status."""


class AgentError(Exception):
    code = "INTERNAL"


class NotFound(AgentError):
    code = "NOT_FOUND"


class AlreadyExists(AgentError):
    code = "ALREADY_EXISTS"


class InvalidArgument(AgentError):
    code = "INVALID_ARGUMENT"


class FailedPrecondition(AgentError):
    code = "FAILED_PRECONDITION"


class CommandFailed(AgentError):
    """A helper command (crun, mount) exited non-zero."""

    code = "INTERNAL"


class Unavailable(AgentError):
    """Something the caller asked to reach inside the guest does not answer."""

    code = "UNAVAILABLE"
