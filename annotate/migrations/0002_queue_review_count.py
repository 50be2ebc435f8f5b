"""Item.review_count: the number of active or submitted leases on an item, kept by triggers.

The triggers are the hard cap on overlap k: whatever code or person writes a lease (the queue, the
admin, a shell), a row that would give an item more than ``project.overlap_k`` active+submitted
leases is rejected by the database. On PostgreSQL the counter is bumped with ``review_count + 1``
inside the trigger, so concurrent writers serialize on the item row and each sees the other's
committed increment (a COUNT(*) subquery would read a stale snapshot under READ COMMITTED).
"""

from django.db import migrations, models

PG_FORWARDS = [
    """
CREATE OR REPLACE FUNCTION annotate_lease_review_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  new_live int := 0;
  old_live int := 0;
  n int;
  k int;
BEGIN
  IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status IN ('active', 'submitted') THEN new_live := 1; END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status IN ('active', 'submitted') THEN old_live := 1; END IF;
  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND NEW.item_id <> OLD.item_id) THEN
    IF old_live = 1 THEN
      UPDATE annotate_item SET review_count = review_count - 1 WHERE id = OLD.item_id;
    END IF;
    old_live := 0;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  END IF;
  IF new_live <> old_live THEN
    UPDATE annotate_item SET review_count = review_count + (new_live - old_live)
      WHERE id = NEW.item_id RETURNING review_count INTO n;
    IF new_live > old_live THEN
      SELECT p.overlap_k INTO k FROM annotate_item i JOIN annotate_project p ON p.id = i.project_id
        WHERE i.id = NEW.item_id;
      IF n > k THEN
        RAISE EXCEPTION 'item % already has its % reviews (overlap k): no further lease may be active or submitted',
          NEW.item_id, k USING ERRCODE = 'check_violation';
      END IF;
    END IF;
  END IF;
  RETURN NEW;
END $$;
""",
    # Only the lease trigger (nested, depth 2) may change the counter: an Item.save() holding a
    # stale review_count must not overwrite it.
    """
CREATE OR REPLACE FUNCTION annotate_item_keep_review_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.review_count <> OLD.review_count AND pg_trigger_depth() < 2 THEN
    NEW.review_count := OLD.review_count;
  END IF;
  RETURN NEW;
END $$;
""",
    "DROP TRIGGER IF EXISTS annotate_item_keep_review_count ON annotate_item;",
    "CREATE TRIGGER annotate_item_keep_review_count BEFORE UPDATE ON annotate_item "
    "FOR EACH ROW EXECUTE FUNCTION annotate_item_keep_review_count();",
    "DROP TRIGGER IF EXISTS annotate_lease_review_count ON annotate_lease;",
    "CREATE TRIGGER annotate_lease_review_count AFTER INSERT OR UPDATE OR DELETE ON annotate_lease "
    "FOR EACH ROW EXECUTE FUNCTION annotate_lease_review_count();",
]
PG_BACKWARDS = [
    "DROP TRIGGER IF EXISTS annotate_item_keep_review_count ON annotate_item;",
    "DROP FUNCTION IF EXISTS annotate_item_keep_review_count();",
    "DROP TRIGGER IF EXISTS annotate_lease_review_count ON annotate_lease;",
    "DROP FUNCTION IF EXISTS annotate_lease_review_count();",
]

_SQLITE_CAP = (
    "SELECT RAISE(ABORT, 'the item already has its overlap k reviews: no further lease may be active or submitted') "
    "WHERE (SELECT i.review_count > p.overlap_k FROM annotate_item i JOIN annotate_project p "
    "ON p.id = i.project_id WHERE i.id = NEW.item_id);"
)
SQLITE_FORWARDS = [
    "CREATE TRIGGER annotate_lease_count_insert AFTER INSERT ON annotate_lease "
    "WHEN NEW.status IN ('active', 'submitted') BEGIN "
    "UPDATE annotate_item SET review_count = review_count + 1 WHERE id = NEW.item_id; " + _SQLITE_CAP + " END;",
    "CREATE TRIGGER annotate_lease_count_delete AFTER DELETE ON annotate_lease "
    "WHEN OLD.status IN ('active', 'submitted') BEGIN "
    "UPDATE annotate_item SET review_count = review_count - 1 WHERE id = OLD.item_id; END;",
    "CREATE TRIGGER annotate_lease_count_update AFTER UPDATE OF status, item_id ON annotate_lease "
    "WHEN (OLD.status IN ('active', 'submitted')) <> (NEW.status IN ('active', 'submitted')) "
    "OR OLD.item_id <> NEW.item_id BEGIN "
    "UPDATE annotate_item SET review_count = review_count - 1 "
    "WHERE id = OLD.item_id AND OLD.status IN ('active', 'submitted'); "
    "UPDATE annotate_item SET review_count = review_count + 1 "
    "WHERE id = NEW.item_id AND NEW.status IN ('active', 'submitted'); " + _SQLITE_CAP + " END;",
]
SQLITE_FORWARDS.append(
    # SQLite cannot rewrite NEW in a BEFORE trigger: an Item.save() with a stale counter is
    # corrected right after by a recount (writes are serialized, so the count is exact).
    "CREATE TRIGGER annotate_item_keep_review_count AFTER UPDATE OF review_count ON annotate_item "
    "WHEN NEW.review_count <> (SELECT COUNT(*) FROM annotate_lease l WHERE l.item_id = NEW.id "
    "AND l.status IN ('active', 'submitted')) BEGIN "
    "UPDATE annotate_item SET review_count = (SELECT COUNT(*) FROM annotate_lease l WHERE l.item_id = NEW.id "
    "AND l.status IN ('active', 'submitted')) WHERE id = NEW.id; END;"
)
SQLITE_BACKWARDS = [f"DROP TRIGGER IF EXISTS annotate_lease_count_{op};" for op in ("insert", "delete", "update")] + [
    "DROP TRIGGER IF EXISTS annotate_item_keep_review_count;"
]

RECOUNT = (
    "UPDATE annotate_item SET review_count = (SELECT COUNT(*) FROM annotate_lease l "
    "WHERE l.item_id = annotate_item.id AND l.status IN ('active', 'submitted'))"
)


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    statements = {"postgresql": PG_FORWARDS, "sqlite": SQLITE_FORWARDS}.get(vendor)
    if statements is None:
        raise NotImplementedError(f"The overlap-k triggers are not written for {vendor}.")
    for sql in [RECOUNT, *statements]:
        schema_editor.execute(sql, params=None)


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for sql in {"postgresql": PG_BACKWARDS, "sqlite": SQLITE_BACKWARDS}.get(vendor, []):
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="item",
            name="review_count",
            field=models.PositiveSmallIntegerField(
                default=0,
                editable=False,
                help_text="Leases on this item that are active or submitted; kept by database triggers, capped at overlap k.",
            ),
        ),
        migrations.AddIndex(
            model_name="item",
            index=models.Index(
                condition=models.Q(("is_calibration", False)),
                fields=["project", "-review_count", "id"],
                name="item_queue_order",
            ),
        ),
        migrations.AddConstraint(
            model_name="item",
            constraint=models.CheckConstraint(
                condition=models.Q(("review_count__gte", 0)), name="item_review_count_non_negative"
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
