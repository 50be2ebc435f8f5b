"""Settings come from the environment: each case runs in a fresh interpreter with only the variables it names."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json
from django.conf import settings
db = settings.DATABASES
print(json.dumps({
    "engine": db["default"]["ENGINE"],
    "name": str(db["default"]["NAME"]),
    "options": {k: str(v) for k, v in db["default"].get("OPTIONS", {}).items()},
    "training_user": db["training"].get("USER"),
    "training_mirror": db["training"].get("TEST", {}).get("MIRROR"),
    "owner": {k: str(db["owner"].get(k)) for k in ("USER", "PASSWORD", "NAME", "HOST")} if "owner" in db else None,
    "owner_mirror": db.get("owner", {}).get("TEST", {}).get("MIRROR"),
    "roles": [getattr(settings, "APP_ROLE", None), settings.OWNER_ROLE, settings.TRAINER_ROLE],
    "broker": settings.CELERY_BROKER_URL,
    "transport": {k: str(v) for k, v in settings.CELERY_BROKER_TRANSPORT_OPTIONS.items()},
    "debug": settings.DEBUG,
    "secret_key": settings.SECRET_KEY,
    "media_root": str(settings.MEDIA_ROOT),
}))
"""


def probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "GOLDSET_VAR_DIR": str(tmp_path / "var"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60, check=False
    )


def settings_for(tmp_path: Path, **env: str) -> dict:
    result = probe(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_no_environment_means_sqlite_under_var_and_a_filesystem_broker(tmp_path):
    s = settings_for(tmp_path)
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["name"] == str(tmp_path / "var" / "goldset.sqlite3")
    assert s["options"]["transaction_mode"] == "IMMEDIATE"
    assert s["training_mirror"] == "default"
    assert s["broker"] == "filesystem://"
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        assert Path(s["transport"][key]).is_dir(), f"{key} must exist before a worker starts"
    assert s["media_root"] == str(tmp_path / "var" / "media")
    assert s["debug"] is False
    assert s["owner"] is None  # SQLite has no roles: nothing changes for the embedded demo


def test_the_embedded_secret_key_is_generated_once_and_kept(tmp_path):
    first = settings_for(tmp_path)["secret_key"]
    assert len(first) >= 40
    assert settings_for(tmp_path)["secret_key"] == first
    assert (tmp_path / "var" / "secret_key").read_text().strip() == first


def test_database_url_switches_to_postgresql_with_the_trainer_as_second_login(tmp_path):
    s = settings_for(
        tmp_path, DATABASE_URL="postgres://goldset:goldset@127.0.0.1:5432/goldset_x", SECRET_KEY="not-secret"
    )
    assert s["engine"] == "django.db.backends.postgresql"
    assert s["name"] == "goldset_x"
    assert s["training_user"] == "goldset_trainer"
    assert s["training_mirror"] == "default"
    assert s["secret_key"] == "not-secret"
    assert s["options"] == {"server_side_binding": "True", "prepare_threshold": "5"}


def test_postgresql_has_an_owner_login_for_migrations_named_from_the_environment(tmp_path):
    url = "postgres://goldset:app-pw@db.example:5433/goldset_x"
    s = settings_for(tmp_path, DATABASE_URL=url, SECRET_KEY="k")
    assert s["owner"] == {
        "USER": "goldset_owner",
        "PASSWORD": "goldset_owner",
        "NAME": "goldset_x",
        "HOST": "db.example",
    }
    assert s["owner_mirror"] == "default"
    assert s["roles"] == ["goldset", "goldset_owner", "goldset_trainer"]
    s = settings_for(
        tmp_path,
        DATABASE_URL=url,
        SECRET_KEY="k",
        GOLDSET_OWNER_ROLE="schema_owner",
        GOLDSET_OWNER_PASSWORD="o-pw",
        GOLDSET_TRAINER_ROLE="gpu",
    )
    assert (s["owner"]["USER"], s["owner"]["PASSWORD"]) == ("schema_owner", "o-pw")
    assert s["roles"] == ["goldset", "schema_owner", "gpu"] and s["training_user"] == "gpu"
    s = settings_for(
        tmp_path, DATABASE_URL=url, SECRET_KEY="k", OWNER_DATABASE_URL="postgres://boss:b-pw@other:5432/goldset_x"
    )
    assert (s["owner"]["USER"], s["owner"]["HOST"]) == ("boss", "other") and s["roles"][1] == "boss"


def test_prepared_statements_can_be_turned_off_for_a_pooler_and_url_options_are_kept(tmp_path):
    s = settings_for(
        tmp_path,
        DATABASE_URL="postgres://goldset:goldset@127.0.0.1:5432/goldset_x?sslmode=require",
        SECRET_KEY="not-secret",
        GOLDSET_PG_PREPARE="0",
    )
    assert s["options"] == {"sslmode": "require", "server_side_binding": "True"}


def test_outside_the_embedded_demo_a_missing_secret_key_stops_with_a_clear_message(tmp_path):
    result = probe(tmp_path, DATABASE_URL="postgres://goldset:goldset@127.0.0.1:5432/goldset_x")
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set. Outside the embedded demo define SECRET_KEY" in result.stderr


def test_redis_url_switches_the_broker_to_redis(tmp_path):
    s = settings_for(tmp_path, REDIS_URL="redis://127.0.0.1:6379/1")
    assert s["broker"] == "redis://127.0.0.1:6379/1"
    assert int(s["transport"]["visibility_timeout"]) >= 24 * 3600


@pytest.mark.parametrize(("value", "debug"), [("1", True), ("true", True), ("off", False), ("0", False)])
def test_debug_is_off_unless_asked_for(tmp_path, value, debug):
    assert settings_for(tmp_path, GOLDSET_DEBUG=value)["debug"] is debug


def test_a_debug_value_that_is_not_a_boolean_is_refused(tmp_path):
    result = probe(tmp_path, GOLDSET_DEBUG="maybe")
    assert "GOLDSET_DEBUG='maybe' is not a boolean: use 1/0, true/false, yes/no or on/off." in result.stderr
