"""The one error vocabulary of the daemon.

Services raise these; ``digitorn_site.api.exceptions.exception_handler`` (DRF views) and
``digitorn_site.api.envelope.error_response`` (plain async views, middleware) render them as the
envelope with the HTTP status and ``error_code`` they carry.
"""

from __future__ import annotations

from typing import Any


class DigitornError(Exception):
    status_code = 500
    error_code = "INTERNAL_ERROR"
    default_message = "Internal error."

    def __init__(self, message: str | None = None, *, details: Any = None, headers: dict | None = None):
        self.message = message or self.default_message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)


class ValidationError(DigitornError):
    status_code = 400
    error_code = "VALIDATION_ERROR"
    default_message = "The request is not valid."


class ManifestError(ValidationError):
    """A manifest that does not compile; ``details`` lists ``{"path", "message"}`` items."""

    error_code = "INVALID_MANIFEST"
    default_message = "The app manifest is not valid."

    def __init__(self, errors: list[dict[str, str]], message: str | None = None):
        self.errors = errors
        if message is None:
            first = errors[0] if errors else {"path": "", "message": "invalid manifest"}
            prefix = f"{first['path']}: " if first.get("path") else ""
            message = f"{prefix}{first['message']}"
            if len(errors) > 1:
                message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
        super().__init__(message, details={"errors": errors})


class UnauthorizedError(DigitornError):
    status_code = 401
    error_code = "UNAUTHORIZED"
    default_message = "Missing or invalid API key. Send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."


class ForbiddenError(DigitornError):
    status_code = 403
    error_code = "FORBIDDEN"
    default_message = "This API key may not do that."


class NotFoundError(DigitornError):
    status_code = 404
    error_code = "RESOURCE_NOT_FOUND"
    default_message = "Not found."


class MethodNotAllowedError(DigitornError):
    status_code = 405
    error_code = "METHOD_NOT_ALLOWED"
    default_message = "Method not allowed."


class ConflictError(DigitornError):
    status_code = 409
    error_code = "CONFLICT"
    default_message = "Conflict with the current state."


class PayloadTooLargeError(DigitornError):
    status_code = 413
    error_code = "PAYLOAD_TOO_LARGE"
    default_message = "Request body too large."


class UnsupportedMediaTypeError(DigitornError):
    status_code = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"
    default_message = "Unsupported media type."


class RateLimitError(DigitornError):
    status_code = 429
    error_code = "RATE_LIMIT_EXCEEDED"
    default_message = "Rate limit exceeded."


class QueueFullError(DigitornError):
    status_code = 429
    error_code = "QUEUE_FULL"
    default_message = "Too many messages are waiting in this session."


class ServiceUnavailableError(DigitornError):
    status_code = 503
    error_code = "SERVICE_UNAVAILABLE"
    default_message = "Service unavailable."


class GatewayTimeoutError(DigitornError):
    status_code = 504
    error_code = "TIMEOUT"
    default_message = "Timed out."


class MissingSecretError(ConflictError):
    """The app references ``{{secret.KEY}}`` and no value is set yet."""

    error_code = "MISSING_SECRET"
    default_message = "The app needs a secret that is not set."
