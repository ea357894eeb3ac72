"""Errors the service answers with a 4xx and a clear ``detail`` (event-data errors from :mod:`data` map to 422)."""

from __future__ import annotations


class ServiceError(Exception):
    """A refused request; ``status_code`` is the HTTP status it gets."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MalformedPayloadError(ServiceError):
    """A body that does not parse: bad JSON, truncated records, a broken multipart form."""

    status_code = 400


class UnauthorizedError(ServiceError):
    """A missing or wrong API key."""

    status_code = 401


class PayloadTooLargeError(ServiceError):
    """A body or event count over the configured limits."""

    status_code = 413


class InvalidRequestError(ServiceError):
    """Well-formed input that the service cannot act on (inconsistent parameters)."""

    status_code = 422


class UnsupportedMediaTypeError(ServiceError):
    """A content type the endpoint does not take."""

    status_code = 415


class NotFoundError(ServiceError):
    """A path that names nothing the service has."""

    status_code = 404
