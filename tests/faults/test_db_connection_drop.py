"""PostgreSQL connections dropped (backends terminated) mid-request and between requests, against a real
threaded server: the request answers 503 "try again", nothing of it is saved, and the next request works."""

import urllib.error
import urllib.request

import pytest
from django.db import connection, transaction
from django.http import HttpResponse
from django.urls import include, path

from annotate.models import AdminAction, Project
from annotate.services.projects import project_member_set

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _write_then_lose_the_connection(request):
    """Writes (a member and its log row) in a transaction, then loses its connection before committing."""
    from django.contrib.auth import get_user_model

    with transaction.atomic():
        project_member_set(
            project=Project.objects.get(slug="support"),
            user=get_user_model().objects.get(username="mallory"),
            by=request.user,
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return HttpResponse("unreachable")


urlpatterns = [path("lose-connection/", _write_then_lose_the_connection), path("", include("config.urls"))]
handler500 = "config.errors.server_error"


def _get(url: str, session: str, **headers) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, headers={"Cookie": f"sessionid={session}", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def _terminate_other_backends() -> int:
    """Drop every other connection of the app role to the test database (the live server's among them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND usename = current_user AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.fixture
def session(client, admin_user, project, mallory, settings):
    settings.ROOT_URLCONF = __name__
    settings.DEBUG = False
    client.force_login(admin_user)
    return client.cookies["sessionid"].value


def test_a_connection_lost_mid_request_answers_503_saves_nothing_and_the_next_request_works(
    live_server, session, project, mallory
):
    status, headers, body = _get(live_server.url + "/lose-connection/", session)
    assert status == 503, body[:500]
    assert headers["Retry-After"] == "2"
    assert "nothing of it was saved. Try again." in body and 'data-status="503"' in body
    assert "Traceback" not in body and "terminating connection" not in body
    # Nothing half-written: neither the membership nor its log row.
    assert not project.members.filter(pk=mallory.pk).exists()
    assert not AdminAction.objects.filter(action="member_add", target__endswith=f":{mallory.pk}").exists()
    # The next request gets a fresh connection.
    status, _, body = _get(live_server.url + f"/projects/{project.slug}/", session)
    assert status == 200 and project.name in body


def test_an_htmx_request_gets_the_message_as_text(live_server, session):
    status, headers, body = _get(live_server.url + "/lose-connection/", session, **{"HX-Request": "true"})
    assert status == 503 and headers["Content-Type"].startswith("text/plain")
    assert body.endswith("Try again.")


@pytest.fixture
def gunicorn(tmp_path):
    """The app under gunicorn (one worker, one thread: every request on the connection it keeps)."""
    import os
    import subprocess
    import sys

    from django.db import connections

    from tests.faults.workers import ROOT, free_port, kill, wait_for

    port = free_port()
    env = {**os.environ, "GOLDSET_DB_NAME": connections["default"].settings_dict["NAME"], "CONN_MAX_AGE": "600"}
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1", "--threads", "1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(url + "/healthz", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, what="gunicorn", log_path=tmp_path / "gunicorn.log", every=0.2)
        yield url
    finally:
        kill(proc)


def test_connections_dropped_between_requests_are_replaced_without_an_error(gunicorn, session, project):
    assert _get(gunicorn + "/", session)[0] == 200  # the worker now keeps a connection
    for _ in range(3):
        assert _terminate_other_backends() >= 1
        status, _, body = _get(gunicorn + f"/projects/{project.slug}/", session)
        assert status == 200, body[:300]
