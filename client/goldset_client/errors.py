"""Errors: every failed request raises an ``ApiError`` carrying the server's RFC 9457 problem document."""

from __future__ import annotations

from typing import Any

import httpx


class GoldsetError(Exception):
    """Anything this client raises on purpose."""


class ApiError(GoldsetError):
    """The server answered with an error. ``errors``: the invalid fields, each {in, field, message}."""

    def __init__(self, status: int, detail: str, *, title: str = "", errors: list[dict] | None = None, problem=None):
        self.status, self.detail, self.title = status, detail, title
        self.errors: list[dict[str, Any]] = errors or []
        self.problem: dict[str, Any] = problem or {}
        fields = "; ".join(f"{e.get('in', '')} {e.get('field', '')}: {e.get('message', '')}" for e in self.errors)
        super().__init__(f"{status} {title}: {detail}" + (f" ({fields})" if fields and fields not in detail else ""))


class Unauthorized(ApiError):
    """401: no token, or one that is unknown, revoked or expired."""


class Forbidden(ApiError):
    """403: the token's scope or the user's role does not allow this."""


class NotFound(ApiError):
    """404: no such thing, or one you may not see."""


class Conflict(ApiError):
    """409: the request does not fit the current state (an item already submitted, ...)."""


class InvalidRequest(ApiError):
    """422: invalid input; ``errors`` names each field."""


_BY_STATUS = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 422: InvalidRequest}


def error_for(response: httpx.Response) -> ApiError:
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"detail": response.text[:500]}
    cls = _BY_STATUS.get(response.status_code, ApiError)
    return cls(
        response.status_code,
        str(problem.get("detail") or response.reason_phrase),
        title=str(problem.get("title") or response.reason_phrase),
        errors=problem.get("errors") if isinstance(problem.get("errors"), list) else None,
        problem=problem,
    )


class ImportFailed(GoldsetError):
    """An import that imported nothing (or, with ``mode="skip_bad"``, left rows out and was asked to raise).

    The message lists every bad line; ``errors`` holds them as {line, field, message}; ``result`` is the
    import's final state."""

    def __init__(self, result: dict[str, Any], errors: list[dict[str, Any]]):
        self.result, self.errors = result, errors
        lines = [f"  line {e.get('line')}: {e.get('message')}" for e in errors]
        head = result.get("message") or f"The import {result.get('id')} failed."
        super().__init__("\n".join([head, *lines]))


class WorkFailed(GoldsetError):
    """Background work that ended without success: a preflight that found errors, a failed or cancelled
    training job, an audit or contamination check that could not run. ``result`` is its final state."""

    def __init__(self, what: str, result: dict[str, Any], problems: list[str] | None = None):
        self.result = result
        self.problems = problems or []
        lines = [f"  {p}" for p in self.problems]
        message = result.get("error") or result.get("message") or ""
        super().__init__("\n".join([f"{what} {result.get('status')}: {message}".rstrip(": "), *lines]))
