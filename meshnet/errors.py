"""One exception root, a few subclasses; the CLI and API turn them into one-line messages."""


class MeshnetError(Exception):
    """Base of every error meshnet reports to a user."""

    status = 400  # HTTP status the API answers with


class NotFound(MeshnetError):
    status = 404


class Conflict(MeshnetError):
    status = 409


class NotMember(MeshnetError):
    """This node is not (yet) part of a cluster."""

    status = 409


class TokenError(MeshnetError):
    """A join token that cannot be parsed."""


class JoinRefused(MeshnetError):
    """A join handshake that was refused; the message says why."""

    status = 403


class HostError(MeshnetError):
    """The kernel or a helper program refused an operation."""

    status = 500


class AgentUnavailable(MeshnetError):
    """The CLI cannot reach the local agent."""
