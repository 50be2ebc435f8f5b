"""Helpers for the API tests: tokens per user and scope, and calls made the way a script makes them."""

import json

import pytest

from annotate import roles
from annotate.services.tokens import api_token_create

API = "/api/v1"


class Api:
    """Calls /api/v1/ with a bearer token through Django's test client (no session, no CSRF cookie)."""

    def __init__(self, client, token: str | None):
        self.client, self.token = client, token

    def __call__(self, method: str, path: str, body=None, *, content_type="application/json", **extra):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {self.token}"} if self.token else {}
        url = path if path.startswith("/api/") else API + path
        data = json.dumps(body) if body is not None and content_type == "application/json" else body
        kwargs = {"content_type": content_type} if data is not None else {}
        return getattr(self.client, method.lower())(url, data, **kwargs, **headers, **extra)


@pytest.fixture
def api_as(client):
    """``api_as(user, scope=None)``: an Api acting as the user with a fresh token (admin scope for admins,
    write for everyone else, unless given); ``api_as(None)`` sends no credential."""

    def make(user, scope: str | None = None) -> Api:
        if user is None:
            return Api(client, None)
        scope = scope or ("admin" if roles.is_admin(user) else "write")
        _, token = api_token_create(user=user, name=f"{user.username}-{scope}", scope=scope)
        return Api(client, token)

    return make
