"""The REST API at ``/api/v1/``: one NinjaAPI that mounts each app's routers (``annotate/api.py``, ...).

Who may call what is decided twice, both times by rules the pages already use:

- the **scope** of the credential (``READ``, ``WRITE``, ``ADMIN`` below, one per endpoint): a personal
  API token carries a scope; a signed-in browser session (the interactive docs) has every scope, and
  its unsafe requests must carry the CSRF token;
- the **user's roles and memberships**, checked by the same selectors the pages call
  (``annotate.selectors.project_get_for_user``, ``project_get_for_admin``, ...), so an endpoint never
  sees more than that user's pages show.

Every error is an RFC 9457 problem document (``application/problem+json``): ``type``, ``title``,
``status``, ``detail``, ``instance``, and for invalid input ``errors``, each naming the field and where
it was (``body``, ``query``, ``path``). Long lists are paged by keyset (``cursor``), never by offset.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from functools import wraps
from http import HTTPStatus
from typing import Annotated, Any

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import URLPattern, URLResolver
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth
from pydantic import AfterValidator

from annotate.models import ApiToken

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
SCOPE_RANK = {ApiToken.Scope.READ: 0, ApiToken.Scope.WRITE: 1, ApiToken.Scope.ADMIN: 2}
MAX_PAGE = 500


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (the database cannot store them)")
    return value


# Text the database stores or compares: PostgreSQL text cannot hold NUL, so it is refused at the boundary.
Text = Annotated[str, AfterValidator(_no_nul)]


class ApiError(Exception):
    """An error an endpoint answers with: a status, words a person can act on, and optionally field errors."""

    def __init__(self, status: int, detail: str, *, errors: list[dict] | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers or {}


# --- credentials ---------------------------------------------------------------------------------------


class TokenAuth(HttpBearer):
    """``Authorization: Bearer gs_...``: a personal API token, whose scope must cover the endpoint's."""

    def __init__(self, scope: str):
        self.scope = scope
        super().__init__()

    def __call__(self, request: HttpRequest) -> Any:
        header = request.headers.get("Authorization", "")
        if header and not header.lower().startswith("bearer "):
            raise ApiError(401, "Send the API token as 'Authorization: Bearer <token>'.", headers=_CHALLENGE)
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        from annotate.selectors import api_token_authenticate
        from annotate.services.tokens import api_token_mark_used

        row, reason = api_token_authenticate(token=token)
        if row is None:
            # A presented token that does not work is an error in itself, not a reason to try the session.
            raise ApiError(401, reason, headers=_CHALLENGE)
        if SCOPE_RANK[row.scope] < SCOPE_RANK[self.scope]:
            raise ApiError(
                403,
                f"This token's scope is {row.scope}; this endpoint needs {self.scope}. "
                f"Make a token with scope {self.scope} on your API tokens page.",
            )
        api_token_mark_used(token=row)
        request.user = row.user
        request.api_token = row
        return row.user


class BrowserSession(SessionAuth):
    """The signed-in session (the interactive docs); CSRF is checked for unsafe methods."""

    def __call__(self, request: HttpRequest) -> Any:
        # Without a signed-in user there is nothing to protect from cross-site requests: answer 401, not 403.
        if not (request.user.is_authenticated and request.user.is_active):
            return None
        return super().__call__(request)  # the CSRF check, then authenticate

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        return request.user


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="goldset"'}
_SESSION = BrowserSession(csrf=True)
READ = [TokenAuth(ApiToken.Scope.READ), _SESSION]
WRITE = [TokenAuth(ApiToken.Scope.WRITE), _SESSION]
ADMIN = [TokenAuth(ApiToken.Scope.ADMIN), _SESSION]


def scope_of(auth: list) -> str:
    """The scope an operation's auth list asks for (the tests read it)."""
    return next(a.scope for a in auth if isinstance(a, TokenAuth))


# --- problem details -----------------------------------------------------------------------------------


def accepted(response: HttpResponse, out: dict, *, finished: bool = False, retry_after: int = 2) -> Status:
    """The answer to a request that starts background work: 201 with ``out`` when the work finished within
    the request, else 202 with where to poll (``Location``: ``out["status_url"]``) and when (``Retry-After``)."""
    if finished:
        return Status(201, out)
    response["Location"] = out["status_url"]
    response["Retry-After"] = str(retry_after)
    return Status(202, out)


def problem(request: HttpRequest | None, status: int, detail: str, *, errors=None, headers=None) -> HttpResponse:
    """An RFC 9457 problem document."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.path
    if errors:
        body["errors"] = errors
    response = JsonResponse(body, status=status, content_type=PROBLEM, json_dumps_params={"ensure_ascii": False})
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _field_errors(exc: ValidationError) -> list[dict]:
    out = []
    for error in exc.errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = loc[0] if loc else "body"
        # The schema's own name ("payload") and pydantic's union tags say nothing to a caller.
        field = ".".join(p for p in loc[1:] if p not in {"payload", "body"}) or where
        out.append({"in": where, "field": field, "message": error.get("msg", "is invalid")})
    return out


def django_errors(exc: DjangoValidationError, where: str = "body") -> tuple[str, list[dict]]:
    """A Django ValidationError as a sentence and field errors."""
    if hasattr(exc, "error_dict"):
        errors = [
            {"in": where, "field": field if field != "__all__" else "", "message": message}
            for field, messages in exc.message_dict.items()
            for message in messages
        ]
        return " ".join(e["message"] for e in errors), errors
    return " ".join(exc.messages), []


api = NinjaAPI(
    title="Goldset API",
    version="1",
    description=(
        "Push candidate data with its provenance, review it from scripts, and pull annotations, consensus "
        "and agreement figures back. Authenticate with a personal API token (`Authorization: Bearer gs_...`, "
        "made on your API tokens page) or, on this page, your signed-in session. Errors are RFC 9457 "
        "problem documents; long lists are paged with `cursor`."
    ),
    urls_namespace="api",
    auth=READ,
)


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    return problem(request, exc.status, exc.detail, errors=exc.errors, headers=exc.headers)


@api.exception_handler(ValidationError)
def _validation(request, exc: ValidationError):
    from config.uploads import refused

    if refused(request):  # the upload was stopped at the size limit, so its field is missing: say why
        return problem(request, 413, refused(request))
    errors = _field_errors(exc)
    detail = "; ".join(f"{e['in']} {e['field']}: {e['message']}" for e in errors) or "The request is invalid."
    return problem(request, 422, detail, errors=errors)


@api.exception_handler(DjangoValidationError)
def _django_validation(request, exc: DjangoValidationError):
    detail, errors = django_errors(exc)
    return problem(request, 422, detail, errors=errors)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    return problem(
        request,
        401,
        "Sign in, or send a personal API token as 'Authorization: Bearer <token>' (make one on your API tokens page).",
        headers=_CHALLENGE,
    )


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    detail = str(exc)
    if exc.status_code == 403 and "CSRF" in detail:
        detail = "CSRF check failed: a signed-in session must send the X-CSRFToken header on unsafe requests."
    return problem(request, exc.status_code, detail)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return problem(request, 404, str(exc) or "Not found.")


@api.exception_handler(PermissionDenied)
def _forbidden(request, exc):
    return problem(request, 403, str(exc) or "You may not do this.")


@api.exception_handler(MultiPartParserError)
def _bad_multipart(request, exc):
    return problem(request, 400, f"The multipart body could not be read ({exc}): send a well-formed form upload.")


@api.exception_handler(BadRequest)
def _bad_request(request, exc):
    return problem(request, 400, str(exc) or "The request could not be read.")


@api.exception_handler(SuspiciousOperation)
def _suspicious(request, exc):
    return problem(request, 400, "The request was refused as malformed.")


@api.exception_handler(Exception)
def _server_error(request, exc):
    logger.exception("API request %s %s failed", request.method, request.path)
    return problem(request, 500, "The server failed to handle this request; it was logged. Try again later.")


# --- keyset pagination ---------------------------------------------------------------------------------


def cursor_encode(after: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def cursor_decode(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = data["after"]
        if not isinstance(after, int) or isinstance(after, bool):
            raise ValueError
        return after
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            422,
            "The cursor is not one this API handed out: pass next_cursor from the previous page, or none.",
            errors=[{"in": "query", "field": "cursor", "message": "is not a cursor from this API"}],
        ) from None


def keyset_page(queryset: QuerySet, *, cursor: str | None, limit: int) -> tuple[list, str | None]:
    """One page of ``queryset`` in id order after ``cursor``, and the cursor of the next page (None at the end).

    Keyset, not offset: every page costs one indexed range scan, however deep, and rows added meanwhile
    never shift a page."""
    after = cursor_decode(cursor)
    if after is not None:
        queryset = queryset.filter(pk__gt=after)
    rows = list(queryset.order_by("pk")[: limit + 1])
    if len(rows) > limit:
        return rows[:limit], cursor_encode(rows[limit - 1].pk)
    return rows, None


# --- URLs ----------------------------------------------------------------------------------------------


def _api_view(view: Callable) -> Callable:
    """An API view: no login redirect (a token is not a session; auth answers 401), and a 405 as a problem."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        if response.status_code == 405 and response.get("Content-Type", "").startswith("text/html"):
            allowed = response.get("Allow", "")
            return problem(
                request, 405, f"{request.method} is not allowed here; use {allowed}.", headers={"Allow": allowed}
            )
        return response

    return login_not_required(wrapper)


def _mark(patterns: list) -> list:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            _mark(pattern.url_patterns)
        elif isinstance(pattern, URLPattern) and pattern.name not in {"openapi-json", "openapi-view"}:
            # The docs and the schema stay behind the login page, for signed-in users only.
            pattern.callback = _api_view(pattern.callback)
    return patterns


@login_not_required
@csrf_exempt
def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Anything under /api/v1/ that no endpoint serves: a problem document, not the HTML 404 page."""
    return problem(request, 404, f"No API endpoint at {request.path}: see /api/v1/docs for the endpoints.")
