"""Personal API tokens: made and shown once, stored only as a digest, expiring, revocable, scoped."""

from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from annotate.models import ApiToken
from annotate.services.tokens import TOUCH_EVERY, api_token_create, api_token_revoke, token_digest

pytestmark = pytest.mark.django_db


def bearer(token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_the_page_shows_a_new_token_once_and_the_database_never_holds_it(client, alice):
    client.force_login(alice)
    response = client.post(reverse("annotate:token-list"), {"name": "pipeline", "scope": "write"})
    assert response.status_code == 200
    html = response.content.decode()
    row = ApiToken.objects.get(user=alice)
    token = html.split('id="token-value">')[1].split("<")[0]
    assert token.startswith(f"gs_{row.prefix}_") and len(token) > 50
    assert row.digest == token_digest(token)
    # Every text column of every table: the token itself is nowhere.
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT * FROM {quoted}")
            for values in cursor.fetchall():
                assert not any(isinstance(v, str) and token in v for v in values), table
    again = client.get(reverse("annotate:token-list")).content.decode()
    assert token not in again and f"gs_{row.prefix}_" in again  # listed by its prefix only
    assert client.get("/api/v1/me", **bearer(token)).json()["username"] == "alice"


def test_a_reviewer_cannot_make_an_admin_token(client, alice):
    with pytest.raises(Exception, match="Only admins"):
        api_token_create(user=alice, name="x", scope="admin")
    client.force_login(alice)
    response = client.post(reverse("annotate:token-list"), {"name": "x", "scope": "admin"})
    assert response.status_code == 400 and not ApiToken.objects.exists()


def test_a_revoked_token_stops_working_at_once(client, alice):
    row, token = api_token_create(user=alice, name="x", scope="read")
    assert client.get("/api/v1/me", **bearer(token)).status_code == 200
    client.force_login(alice)
    client.post(reverse("annotate:token-revoke", args=[row.pk]))
    client.logout()
    response = client.get("/api/v1/me", **bearer(token))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_nobody_can_revoke_someone_elses_token(client, alice, bob):
    row, token = api_token_create(user=alice, name="x", scope="read")
    client.force_login(bob)
    assert client.post(reverse("annotate:token-revoke", args=[row.pk])).status_code == 404
    with pytest.raises(ApiToken.DoesNotExist):
        api_token_revoke(user=bob, token_id=row.pk)
    assert client.get("/api/v1/me", **bearer(token)).status_code == 200


def test_an_expired_token_is_refused(client, alice):
    row, token = api_token_create(user=alice, name="x", scope="read", expires_at=timezone.now() + timedelta(seconds=30))
    assert client.get("/api/v1/me", **bearer(token)).status_code == 200
    ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/me", **bearer(token))
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_a_token_with_a_changed_secret_or_a_deactivated_user_is_refused(client, alice):
    row, token = api_token_create(user=alice, name="x", scope="read")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert client.get("/api/v1/me", **bearer(forged)).status_code == 401
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {token}").status_code == 401
    alice.is_active = False
    alice.save()
    assert client.get("/api/v1/me", **bearer(token)).status_code == 401


def test_a_read_token_reads_but_cannot_write(client, alice, project):
    _, token = api_token_create(user=alice, name="x", scope="read")
    assert client.get("/api/v1/projects/support", **bearer(token)).status_code == 200
    response = client.post("/api/v1/projects/support/queue/next", **bearer(token))
    assert response.status_code == 403 and "needs write" in response.json()["detail"]


def test_last_used_is_recorded_at_most_once_a_minute(client, alice):
    row, token = api_token_create(user=alice, name="x", scope="read")
    assert row.last_used_at is None
    client.get("/api/v1/me", **bearer(token))
    first = ApiToken.objects.get(pk=row.pk).last_used_at
    assert first is not None
    client.get("/api/v1/me", **bearer(token))
    assert ApiToken.objects.get(pk=row.pk).last_used_at == first
    ApiToken.objects.filter(pk=row.pk).update(last_used_at=first - TOUCH_EVERY)
    client.get("/api/v1/me", **bearer(token))
    assert ApiToken.objects.get(pk=row.pk).last_used_at > first


def test_the_tokens_page_lists_only_your_own_tokens(client, alice, bob):
    api_token_create(user=alice, name="alice-script", scope="read")
    api_token_create(user=bob, name="bob-script", scope="read")
    client.force_login(alice)
    html = client.get(reverse("annotate:token-list")).content.decode()
    assert "alice-script" in html and "bob-script" not in html


def test_the_docs_are_for_signed_in_users_and_work_offline(client, alice):
    response = client.get("/api/v1/docs")
    assert response.status_code == 302 and "/login/" in response.url
    client.force_login(alice)
    html = client.get("/api/v1/docs").content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower()
    assert client.get("/api/v1/openapi.json").json()["openapi"].startswith("3.")


def test_a_session_needs_the_csrf_token_for_unsafe_requests(alice, project):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.get("/api/v1/projects/support").status_code == 200
    refused = browser.post("/api/v1/projects/support/queue/next")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    browser.get(reverse("annotate:project-list"))  # sets the CSRF cookie
    csrf = browser.cookies["csrftoken"].value
    assert browser.post("/api/v1/projects/support/queue/next", HTTP_X_CSRFTOKEN=csrf).status_code == 200
