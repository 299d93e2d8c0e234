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


class ReadOnlyMode(CaxtonError):
    """This node is in a minority partition and refuses writes for now."""

    http_status = 503
    error = "Read-only (minority partition)"


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
