"""Frozen versions and records cannot be changed by anyone: the database rejects it.

On PostgreSQL the app role (which these tests run as) holds no UPDATE, DELETE or TRUNCATE privilege on
write-once tables, so the refusal comes before the trigger; tests/test_write_once_roles.py shows the
triggers refusing a role that holds them. On SQLite the triggers refuse.
"""

import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from evalsets.models import EvalRecord, EvalSetVersion

pytestmark = pytest.mark.django_db

TABLES = ["evalsets_evalsetversion", "evalsets_evalrecord"]


@pytest.fixture
def version(make_item, freeze):
    make_item("gold")
    make_item("preference")
    return freeze().version


def refused(table: str, op: str) -> str:
    return f"{table} is write-once: {op} rejected|permission denied for table {table}"


def raw(sql: str) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)


@pytest.mark.parametrize("table", TABLES)
def test_raw_sql_update_is_rejected_by_the_database(version, table, write_once_enforced):
    column = "changelog = 'edited'" if table.endswith("version") else "prompt = 'edited'"
    with pytest.raises(DatabaseError, match=refused(table, "UPDATE")):
        raw(f"UPDATE {table} SET {column}")
    assert not EvalRecord.objects.filter(prompt="edited").exists()
    assert not EvalSetVersion.objects.filter(changelog="edited").exists()


@pytest.mark.parametrize("table", TABLES)
def test_raw_sql_delete_is_rejected_by_the_database(version, table, write_once_enforced):
    with pytest.raises(DatabaseError, match=refused(table, "DELETE")):
        raw(f"DELETE FROM {table}")
    assert EvalRecord.objects.count() == 2
    assert EvalSetVersion.objects.count() == 1


def test_orm_update_and_save_of_a_record_are_rejected(version, write_once_enforced):
    record = EvalRecord.objects.filter(version=version).first()
    with pytest.raises(DatabaseError, match=refused("evalsets_evalrecord", "UPDATE")):
        with transaction.atomic():
            EvalRecord.objects.filter(pk=record.pk).update(reference="edited")
    record.reference = "edited"
    with pytest.raises(DatabaseError, match=refused("evalsets_evalrecord", "UPDATE")):
        with transaction.atomic():
            record.save()
    record.refresh_from_db()
    assert record.reference != "edited"


@pytest.mark.postgres
@pytest.mark.parametrize("table", TABLES)
def test_truncate_is_rejected_on_postgres_even_when_the_app_role_asks_for_the_escape(version, table):
    with pytest.raises(DatabaseError, match=refused(table, "TRUNCATE")):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("SET LOCAL app.allow_truncate = on")
            cursor.execute(f"TRUNCATE {table} CASCADE")
    assert EvalRecord.objects.count() == 2


def test_the_django_admin_shows_versions_read_only_and_cannot_delete_them(client, version, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="pw-root")
    client.force_login(root)
    change_url = reverse("admin:evalsets_evalsetversion_change", args=[version.pk])
    page = client.get(change_url)
    assert page.status_code == 200
    assert b'name="changelog"' not in page.content  # read-only: no form field to edit
    assert client.post(change_url, {"changelog": "edited"}).status_code == 403
    delete_url = reverse("admin:evalsets_evalsetversion_delete", args=[version.pk])
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    assert client.get(reverse("admin:evalsets_evalrecord_add")).status_code == 403
    version.refresh_from_db()
    assert version.changelog != "edited"
