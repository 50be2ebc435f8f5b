"""Schema-driven fuzzing: schemathesis generates requests for every operation of the OpenAPI document
(valid and invalid bodies, queries and paths) and sends them, as an admin, to a live server. None may be
answered with a server error. Bounded so it stays within a minute or two."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from annotate.services.tokens import api_token_create
from config.apiurls import api
from tests import factories


@schemathesis.serializer("application/x-ndjson", "text/csv")
def _raw_rows(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()


schema = schemathesis.openapi.from_dict(api.get_openapi_schema())

EXAMPLES = 12


@pytest.fixture
def admin_token(transactional_db, project, admin_user, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    for kind in ("gold", "preference", "gold"):
        factories.make_item(project, kind)
    _, token = api_token_create(user=admin_user, name="fuzz", scope="admin")
    return token


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_request_makes_the_server_fail(case, live_server, admin_token):
    # A fixed project: random slugs would almost always be 404s that test nothing past the lookup.
    if case.path_parameters and "slug" in case.path_parameters:
        case.path_parameters["slug"] = "support"
    response = case.call(base_url=live_server.url, headers={"Authorization": f"Bearer {admin_token}"})
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:500])
    if response.status_code >= 400:
        content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])
        assert str(content_type[0] if isinstance(content_type, list) else content_type).startswith(
            "application/problem+json"
        ), response.text[:300]
