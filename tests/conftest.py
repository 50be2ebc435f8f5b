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


# The app role's login, kept while "default" logs in as the owner to create the test database.
_APP_LOGIN: dict[str, str] = {}


def _login(alias: str, user: str, password: str) -> None:
    from django.db import connections

    connections[alias].settings_dict.update(USER=user, PASSWORD=password)
    connections[alias].close()


def _require_owner_role() -> None:
    """The roles .ci/run sets up (`manage.py ensure_db_roles --admin-url … --owner-createdb`) must exist."""
    import psycopg

    sd = settings.DATABASES["default"]
    owner = settings.OWNER_ROLE
    with psycopg.connect(
        host=sd["HOST"] or None, port=sd["PORT"] or None, user=sd["USER"], password=sd["PASSWORD"], dbname="postgres"
    ) as conn:
        rows = dict(conn.execute("SELECT rolname, rolcreatedb FROM pg_roles").fetchall())
    missing = [r for r in (owner, settings.TRAINER_ROLE) if r not in rows]
    if missing or not rows.get(owner):
        pytest.exit(
            f"The test database is created and migrated by the owner role {owner!r}, as in production, and the "
            f"trainer role {settings.TRAINER_ROLE!r} logs in to it: {', '.join(missing) or owner} "
            f"{'are missing' if missing else 'cannot create databases'}. Run `python manage.py ensure_db_roles "
            "--admin-url postgres://postgres@HOST:5432/postgres --owner-createdb` once (.ci/run does).",
            returncode=4,
        )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """On PostgreSQL, "default" logs in as the owner role until the test database is created and migrated
    (migrations run as the owner, as in production); django_db_setup below then switches it to the app
    role, which every test runs as. Only the owner's own connection asks for the TRUNCATE escape (the
    write-once triggers let only a table's owner use it), and the flush between tests goes through it."""
    if not ON_POSTGRES:
        return
    from django.db import connections

    _require_owner_role()
    default, owner = connections["default"].settings_dict, connections["owner"].settings_dict
    _APP_LOGIN.update(user=default["USER"], password=default["PASSWORD"])
    owner.setdefault("OPTIONS", {})["options"] = "-c app.allow_truncate=on"
    connections["owner"].close()
    _login("default", owner["USER"], owner["PASSWORD"])


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The test database exists and is migrated: from here on "default" is the app role."""
    if not ON_POSTGRES:
        yield
        return
    from django.db import connections

    owner = connections["owner"].settings_dict
    _login("default", _APP_LOGIN["user"], _APP_LOGIN["password"])
    yield
    _login("default", owner["USER"], owner["PASSWORD"])  # the owner drops the test database


@pytest.fixture(autouse=True, scope="session")
def _flush_as_the_owner():
    """Django empties the database between transactional tests with TRUNCATE, which the app role may not
    run: the same statements go through the owner's connection instead."""
    if not ON_POSTGRES:
        yield
        return
    import psycopg
    from django.db import connections
    from django.db.backends.postgresql.operations import DatabaseOperations

    def execute_sql_flush(self, sql_list):
        # A login of its own: Django forbids a test's flush the aliases the test did not ask for.
        with psycopg.connect(**connections["owner"].get_connection_params()) as owner, owner.transaction():
            for sql in sql_list:
                owner.execute(sql)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "execute_sql_flush", execute_sql_flush)
        yield


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


def superuser_url() -> str:
    """A superuser login to the test database (CI and the dev machines trust local connections)."""
    if os.environ.get("GOLDSET_TEST_PG_ADMIN_URL"):
        return os.environ["GOLDSET_TEST_PG_ADMIN_URL"]
    from django.db import connections

    sd = connections["default"].settings_dict
    return f"postgres://postgres@{sd['HOST'] or '127.0.0.1'}:{sd['PORT'] or 5432}/{sd['NAME']}"


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
    """Creating five users per test with PBKDF2 costs a second; tests do not measure hashing."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
