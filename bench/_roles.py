"""Scratch PostgreSQL databases for benchmarks, made as production makes them: created, owned and
migrated by the owner role (`manage.py ensure_db_roles` creates it), used by the app role."""

from __future__ import annotations

import os
from urllib.parse import quote, urlsplit, urlunsplit


def owner_url(app_url: str, dbname: str = "postgres") -> str:
    """The owner's login to ``dbname`` on the app URL's server (OWNER_DATABASE_URL or GOLDSET_OWNER_*)."""
    if os.environ.get("OWNER_DATABASE_URL"):
        parts = urlsplit(os.environ["OWNER_DATABASE_URL"])
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    parts = urlsplit(app_url)
    role = os.environ.get("GOLDSET_OWNER_ROLE", "goldset_owner")
    password = os.environ.get("GOLDSET_OWNER_PASSWORD", "goldset_owner")
    host = parts.hostname or ""
    netloc = f"{quote(role)}:{quote(password)}@{f'[{host}]' if ':' in host else host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, f"/{dbname}", parts.query, ""))


def owner_sql(app_url: str, *statements: str) -> None:
    """Run statements (CREATE/DROP DATABASE) as the owner, on the server's maintenance database."""
    import psycopg

    with psycopg.connect(owner_url(app_url), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def scratch_database(app_url: str, name: str, *, create: bool) -> None:
    """Drop the scratch database ``name`` (and make it again with ``create``) as the owner role, which then
    migrates it as in production; the app runs on it as the app role."""
    statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']
    if create:
        statements.append(f'CREATE DATABASE "{name}"')
    owner_sql(app_url, *statements)


def migrate_alias() -> str:
    """The alias migrations run through: the owner role on PostgreSQL, the one database on SQLite."""
    from django.conf import settings

    return "owner" if "owner" in settings.DATABASES else "default"
