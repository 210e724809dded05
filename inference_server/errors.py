"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error answered to the client; `status` is the HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def too_large(message: str, param: str = "file") -> APIError:
    return APIError(413, message, param=param, code="file_too_large")


def overloaded(retry_after_s: int) -> APIError:
    return APIError(
        503,
        f"the server is at capacity (queue full); retry after {retry_after_s} s",
        type="server_overloaded",
        code="queue_full",
        headers={"Retry-After": str(retry_after_s)},
    )


def not_ready(message: str) -> APIError:
    return APIError(503, message, type="model_not_ready", code="model_not_ready", headers={"Retry-After": "1"})
