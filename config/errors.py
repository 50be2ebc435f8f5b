"""The server-error answer: a request whose database connection was lost mid-way (the server restarted, a
backend was terminated, the network dropped) gets 503 with a message that says to try again, instead of a
500. The request's transaction died with its connection, so nothing of it was saved; Django closes a
connection that raised such an error, and CONN_HEALTH_CHECKS replaces a kept one the server dropped, so
the next request works.

It is the project's handler500 (config/urls.py): Django calls it while handling the exception, wherever in
the request it was raised (a view, the session or auth middleware), so ``sys.exc_info()`` names it."""

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseServerError, JsonResponse
from django.template.loader import render_to_string

log = logging.getLogger(__name__)

MESSAGE = "The connection to the database was lost while handling this request; nothing of it was saved. Try again."
RETRY_AFTER_S = "2"


def _database_gone(exc: BaseException | None) -> bool:
    # OperationalError also covers a serialization failure or a lock timeout, which are as safe to retry.
    return isinstance(exc, OperationalError | InterfaceError)


def server_error(request: HttpRequest) -> HttpResponse:
    exc = sys.exc_info()[1]
    if not _database_gone(exc):
        return HttpResponseServerError(render_to_string("500.html"))
    log.warning("Database connection lost during %s %s: %s", request.method, request.path, exc)
    if request.path.startswith("/api/"):
        response = JsonResponse(
            {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": MESSAGE},
            status=503,
            content_type="application/problem+json",
        )
    elif request.headers.get("HX-Request"):
        response = HttpResponse(MESSAGE, status=503, content_type="text/plain; charset=utf-8")
    else:
        response = HttpResponse(render_to_string("503.html", {"message": MESSAGE}), status=503)
    response["Retry-After"] = RETRY_AFTER_S
    return response
