"""Every error Caxton raises on purpose derives from :class:`CaxtonError`.

Messages say what happened, why, and what to do next. The CLI prints ``str(error)``
on one line and exits non-zero; the REST API maps ``http_status`` and ``error`` to
its ``{"error", "details"}`` body.
"""

from __future__ import annotations


class CaxtonError(Exception):
    """Base of all deliberate Caxton errors."""

    #: HTTP status the REST API answers with when this error escapes a handler.
    http_status = 400
    #: Short machine-friendly summary used as the REST ``error`` field.
    error = "Bad request"

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details if details is not None else message


class ConfigError(CaxtonError):
    """The configuration is invalid (wrong type, unknown key, unreadable file)."""

    error = "Invalid configuration"


class PluginError(CaxtonError):
    """A plugin could not be found, loaded or validated."""

    error = "Plugin error"


class DriverNotFound(PluginError):
    """The configured driver name is not installed."""


class ValidationError(CaxtonError):
    """Input (an API body, a message, a module) failed validation."""

    error = "Validation failed"


class NotFound(CaxtonError):
    http_status = 404
    error = "Not found"


class AgentNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"Agent not found: {name}")
        self.name = name


class Conflict(CaxtonError):
    http_status = 409
    error = "Conflict"


class InvalidTransition(Conflict):
    """An agent lifecycle operation that its current state does not allow."""

    error = "Invalid state transition"


class QueueFull(CaxtonError):
    http_status = 503
    error = "Queue full"


class MessageTooLarge(ValidationError):
    """A message is bigger than ``max_message_size``."""

    http_status = 413
    error = "Message too large"


class ProtocolViolation(ValidationError):
    """A message does not fit its conversation's interaction protocol."""

    error = "Out-of-protocol message"


class RequestTimeout(CaxtonError):
    """No reply arrived in time for a request made on a client's behalf."""

    http_status = 504
    error = "Timeout"


class ReadOnlyMode(CaxtonError):
    """This node is in a minority partition and refuses writes for now."""

    http_status = 503
    error = "Read-only (minority partition)"


class MinorityPartition(CaxtonError):
    """This node is in a minority partition and, with ``partition.degraded_mode`` off,
    serves no agent traffic until it heals."""

    http_status = 503
    error = "Unavailable (minority partition)"


class SandboxError(CaxtonError):
    """A module or instance failed in the sandbox (compile, ABI, trap, limit)."""

    error = "Sandbox error"


class ModuleInvalid(SandboxError, ValidationError):
    error = "Invalid WebAssembly module"


class AbiMismatch(ModuleInvalid):
    error = "Unsupported agent ABI"


class ExecutionFailed(SandboxError):
    """An agent invocation trapped or hit a limit. ``reason`` is a short category."""

    def __init__(self, message: str, *, reason: str = "trap") -> None:
        super().__init__(message)
        self.reason = reason


class TransportError(CaxtonError):
    error = "Transport error"


class AuthError(CaxtonError):
    http_status = 401
    error = "Unauthorized"


class Forbidden(CaxtonError):
    http_status = 403
    error = "Forbidden"


class ProtocolError(TransportError):
    """A peer broke the wire protocol (garbage, truncated or oversized frame)."""

    error = "Protocol error"


class PeerRejected(TransportError):
    """A peer failed authentication: no, untrusted, expired or mismatched certificate."""

    error = "Peer rejected"


class IncompatibleCluster(CaxtonError):
    """Every member this node heard of speaks a cluster wire protocol it cannot."""

    error = "Incompatible cluster"


class CertificateError(CaxtonError):
    """A certificate or key could not be created, read or verified."""

    error = "Certificate error"


class MalformedJSON(ValidationError):
    """A request body is not JSON, or is nested too deeply to be read safely."""

    error = "Malformed JSON"


class PayloadTooLarge(ValidationError):
    """A request body is bigger than ``networking.max_body_size``."""

    http_status = 413
    error = "Payload too large"


class ClientTimeout(CaxtonError):
    """A client sent its request body too slowly (``networking.request_timeout``)."""

    http_status = 408
    error = "Request timeout"


class RateLimited(CaxtonError):
    """A client went over ``security.rate_limit_per_second``; retry after ``retry_after`` s."""

    http_status = 429
    error = "Too many requests"

    def __init__(self, message: str, *, retry_after: float, details: str | None = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class ServiceUnavailable(CaxtonError):
    """A service the request needs is not running (yet); retry when the node is ready."""

    http_status = 503
    error = "Service unavailable"


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (a library's error may run to pages), or the
    name of its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
