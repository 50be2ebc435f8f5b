"""A database trigger that keeps rubric versions immutable once proposed.

Status may move on (proposed → calibrating → active → retired), but the criteria, notes, rubric
and number of a version that is no longer a draft cannot change, and it cannot go back to draft,
whoever issues the UPDATE (the admin, a shell, raw SQL). A change is a new version.
"""

from django.db import migrations

TABLE = "annotate_rubricversion"
MESSAGE = "rubric versions are immutable once proposed: create a new version instead"

PG_SQL = [
    f"""
CREATE OR REPLACE FUNCTION annotate_rubricversion_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status <> 'draft' AND (
       NEW.criteria IS DISTINCT FROM OLD.criteria OR NEW.notes IS DISTINCT FROM OLD.notes
       OR NEW.rubric_id IS DISTINCT FROM OLD.rubric_id OR NEW.number IS DISTINCT FROM OLD.number
       OR NEW.status = 'draft') THEN
    RAISE EXCEPTION '{MESSAGE} (version id %)', OLD.id USING ERRCODE = 'raise_exception';
  END IF;
  RETURN NEW;
END $$;
""",
    f'DROP TRIGGER IF EXISTS "{TABLE}_frozen" ON "{TABLE}";',
    f'CREATE TRIGGER "{TABLE}_frozen" BEFORE UPDATE ON "{TABLE}" '
    "FOR EACH ROW EXECUTE FUNCTION annotate_rubricversion_frozen();",
]

SQLITE_SQL = [
    f'DROP TRIGGER IF EXISTS "{TABLE}_frozen";',
    f'CREATE TRIGGER "{TABLE}_frozen" BEFORE UPDATE ON "{TABLE}" '
    "WHEN OLD.status <> 'draft' AND (NEW.criteria IS NOT OLD.criteria OR NEW.notes IS NOT OLD.notes "
    "OR NEW.rubric_id IS NOT OLD.rubric_id OR NEW.number IS NOT OLD.number OR NEW.status = 'draft') "
    f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END;",
]


def _forwards(apps, schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    statements = {"postgresql": PG_SQL, "sqlite": SQLITE_SQL}.get(vendor)
    if statements is None:
        raise NotImplementedError(f"The rubric freeze trigger is not written for {vendor}.")
    for sql in statements:
        schema_editor.execute(sql, params=None)


def _backwards(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f'DROP TRIGGER IF EXISTS "{TABLE}_frozen" ON "{TABLE}";', params=None)
    else:
        schema_editor.execute(f'DROP TRIGGER IF EXISTS "{TABLE}_frozen";', params=None)


def freeze_rubric_versions() -> migrations.RunPython:
    """The migration operation installing the trigger."""
    return migrations.RunPython(_forwards, _backwards)
