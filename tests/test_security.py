"""Login throttling, the error pages, the Content-Security-Policy header, and `check --deploy` under the
production settings."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import include, path

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def _login(client, username, password, ip="10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_a_username_is_locked_out_after_repeated_wrong_passwords_from_one_address(client, alice, bob, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        response = _login(client, "alice", "wrong")
        assert response.status_code == 200 and b"match" in response.content
    assert _login(client, "alice", "wrong").status_code == 429  # the third failure locks
    # Now even the right password is refused, with a page that says why and what to do.
    response = _login(client, "alice", "pw-alice")
    assert response.status_code == 429
    text = response.content.decode()
    assert "Too many failed logins" in text and "axes_reset_username" in text
    assert "_auth_user_id" not in client.session
    # Another address, or another user from this one, is not locked out by it.
    assert _login(Client(), "alice", "pw-alice", ip="10.0.0.2").status_code == 302
    assert _login(Client(), "bob", "pw-bob").status_code == 302


def test_the_lockout_ends_when_an_admin_resets_it(client, alice, settings):
    from django.core.management import call_command

    settings.AXES_FAILURE_LIMIT = 2
    for _ in range(2):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", "pw-alice").status_code == 429
    call_command("axes_reset_username", "alice", stdout=open(os.devnull, "w"))  # noqa: SIM115
    assert _login(client, "alice", "pw-alice").status_code == 302


def test_a_successful_login_resets_the_count(client, alice, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", "pw-alice").status_code == 302
    client.logout()
    for _ in range(2):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", "pw-alice").status_code == 302


# --- error pages ------------------------------------------------------------------------------------------


def _boom(request):
    raise RuntimeError("a bug")


def _denied(request):
    raise PermissionDenied("Only admins can do this.")


urlpatterns = [
    path("boom/", _boom),
    path("denied/", _denied),
    path("", include("config.urls")),
]


@pytest.fixture
def errors_urls(settings):
    settings.ROOT_URLCONF = __name__
    settings.DEBUG = False


def test_404_403_and_500_are_the_apps_own_pages_and_leak_nothing(client, alice, errors_urls):
    client.force_login(alice)
    client.raise_request_exception = False
    pages = {
        404: client.get("/no/such/page/"),
        403: client.get("/denied/"),
        500: client.get("/boom/"),
    }
    for status, response in pages.items():
        text = response.content.decode()
        assert response.status_code == status
        assert f'data-status="{status}"' in text and 'class="topbar"' in text and "goldset.css" in text
        assert "Traceback" not in text and "RuntimeError" not in text and "a bug" not in text
        assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "Only admins can do this." in pages[403].content.decode()
    assert "Not found" in pages[404].content.decode()


def test_a_csrf_failure_says_what_happened(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post("/settings/tokens/", {"name": "x"})
    assert response.status_code == 403
    text = response.content.decode()
    assert "CSRF check failed" in text and 'class="topbar"' in text


def test_every_page_carries_a_strict_content_security_policy(client, alice):
    client.force_login(alice)
    policy = client.get("/")["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'" and directives["base-uri"] == "'none'"
    assert "unsafe" not in policy
    assert client.get("/login/")["Content-Security-Policy"] == policy


# --- deployment -------------------------------------------------------------------------------------------


def _production_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOLDSET_", "DJANGO_")) or k == "GOLDSET_VAR_DIR"}
    env.update(
        DATABASE_URL=os.environ.get("DATABASE_URL") or "postgres://goldset:goldset@127.0.0.1:5432/goldset",
        REDIS_URL="redis://127.0.0.1:6379/0",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="goldset.example.com",
        CSRF_TRUSTED_ORIGINS="https://goldset.example.com",
        GOLDSET_HTTPS="1",
    )
    env.update(extra)
    return env


def _check_deploy(env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_under_the_production_settings():
    result = _check_deploy(_production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_without_https_settings():
    """The test above would pass on a check that never looks: without GOLDSET_HTTPS the same check fails."""
    env = _production_env()
    del env["GOLDSET_HTTPS"]
    result = _check_deploy(env)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "security.W004" in out and "SESSION_COOKIE_SECURE" in out  # HSTS, secure cookies


def test_the_compose_web_service_runs_with_the_production_settings():
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "GOLDSET_HTTPS" in compose
