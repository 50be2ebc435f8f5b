"""The write-once mechanism itself, on a training snapshot (any write-once table behaves the same)."""

import pytest
from django.db import DatabaseError, connection, transaction

from training.models import TrainingSnapshot

pytestmark = pytest.mark.django_db


def refused(op: str, table: str = "training_trainingsnapshot") -> str:
    # PostgreSQL: the app role lacks the privilege; SQLite: the trigger refuses.
    return f"{table} is write-once: {op} rejected|permission denied for table {table}"


@pytest.fixture
def snapshot():
    return TrainingSnapshot.objects.create(name="s1", sha256="a" * 64)


def test_it_refuses_update_of_a_frozen_row_through_the_orm(snapshot, write_once_enforced):
    with pytest.raises(DatabaseError, match=refused("UPDATE")):
        with transaction.atomic():
            TrainingSnapshot.objects.filter(pk=snapshot.pk).update(name="changed")
    snapshot.refresh_from_db()
    assert snapshot.name == "s1"


def test_it_refuses_delete_through_raw_sql(snapshot, write_once_enforced):
    with pytest.raises(DatabaseError, match=refused("DELETE")):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM training_trainingsnapshot")
    assert TrainingSnapshot.objects.count() == 1


@pytest.mark.postgres
def test_it_refuses_truncate_on_postgres_whatever_the_app_role_sets(snapshot):
    with pytest.raises(DatabaseError, match=refused("TRUNCATE")):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("SET LOCAL app.allow_truncate = on")
            cursor.execute("TRUNCATE training_trainingsnapshot CASCADE")
    assert TrainingSnapshot.objects.count() == 1


def test_inserts_still_work(snapshot):
    TrainingSnapshot.objects.create(name="s2", sha256="b" * 64)
    assert TrainingSnapshot.objects.count() == 2


def test_every_table_a_migration_makes_write_once_still_has_its_triggers():
    """A later migration that rebuilds such a table (SQLite rebuilds to add a NOT NULL column) must not lose them."""
    from config.writeonce import declared_write_once_tables, guarded_tables

    declared = declared_write_once_tables()
    assert {"training_snapshotrecord", "evalsets_evalrecord", "training_auditacknowledgement"} <= declared
    assert guarded_tables(connection) == declared
