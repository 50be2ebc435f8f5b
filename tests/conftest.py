"""Shared fixtures: people in each role and a project they work on."""

import os
import shutil

import pytest
from django.conf import settings

ON_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ON_POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
CHROMIUM = "/usr/bin/chromium"


def pytest_collection_modifyitems(config, items):
    """PostgreSQL-only and browser tests must run under CI; elsewhere they skip with the reason."""
    needs_pg = [i for i in items if i.get_closest_marker("postgres")]
    needs_browser = [i for i in items if i.get_closest_marker("browser")]
    if ON_CI and needs_pg and not ON_POSTGRES:
        raise pytest.UsageError("CI must run against PostgreSQL: set DATABASE_URL (see .ci/run).")
    if ON_CI and needs_browser and not shutil.which(CHROMIUM):
        raise pytest.UsageError(f"CI needs Debian's chromium at {CHROMIUM}: apt-get install chromium.")
    for item in needs_pg:
        if not ON_POSTGRES:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://..."))
    for item in needs_browser:
        if not os.path.exists(CHROMIUM):
            item.add_marker(pytest.mark.skip(reason=f"needs Debian's chromium at {CHROMIUM}"))


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """Test connections may TRUNCATE write-once tables, so Django's flush between tests works.
    Production connections never set app.allow_truncate, so the triggers reject it there."""
    from django.db import connections

    for alias in connections:
        sd = connections[alias].settings_dict
        if sd["ENGINE"].endswith("postgresql"):
            sd.setdefault("OPTIONS", {})["options"] = "-c app.allow_truncate=on"
            connections[alias].close()


@pytest.fixture
def roles(db):
    from annotate.services.projects import roles_ensure

    return roles_ensure()


def _user(django_user_model, username: str, role: str | None):
    from annotate.services.projects import user_grant_role

    user = django_user_model.objects.create_user(username=username, password="pw-" + username)
    if role:
        user_grant_role(user=user, role=role)
    return user


@pytest.fixture
def alice(db, roles, django_user_model):
    """A reviewer on the project."""
    return _user(django_user_model, "alice", "reviewer")


@pytest.fixture
def bob(db, roles, django_user_model):
    """A second reviewer on the project."""
    return _user(django_user_model, "bob", "reviewer")


@pytest.fixture
def carol(db, roles, django_user_model):
    """A third reviewer on the project."""
    return _user(django_user_model, "carol", "reviewer")


@pytest.fixture
def mallory(db, roles, django_user_model):
    """A reviewer who is not a member of the project."""
    return _user(django_user_model, "mallory", "reviewer")


@pytest.fixture
def judge(db, roles, django_user_model):
    """An adjudicator on the project."""
    return _user(django_user_model, "judge", "adjudicator")


@pytest.fixture
def admin_user(db, roles, django_user_model):
    """A Goldset admin (group admin, not a Django superuser)."""
    return _user(django_user_model, "ada", "admin")


@pytest.fixture
def project(db, alice, bob, carol, judge, admin_user):
    from annotate.services.projects import project_add_members, project_create

    project = project_create(
        name="Support assistant",
        slug="support",
        task_kinds=["gold", "preference", "rubric"],
        created_by=admin_user,
        guidelines="Be kind, be correct.",
    )
    project_add_members(project=project, users=[alice, bob, carol, judge])
    return project


def login(client, user):
    client.force_login(user)
    return client


@pytest.fixture(autouse=True, scope="session")
def _sqlite_flush_may_delete():
    """SQLite's flush between transactional tests is a DELETE; let it through write-once tables."""
    from config import writeonce

    writeonce.SQLITE_BYPASS.add("DELETE")
    yield
    writeonce.SQLITE_BYPASS.clear()


@pytest.fixture
def write_once_enforced():
    """Within the test, SQLite's write-once triggers reject DELETE too (as in production)."""
    from config import writeonce

    saved = set(writeonce.SQLITE_BYPASS)
    writeonce.SQLITE_BYPASS.clear()
    yield
    writeonce.SQLITE_BYPASS.update(saved)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test creates several users; PBKDF2's deliberate slowness would cost seconds per test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
