"""The database refuses model outputs made for evaluation in a training snapshot, whoever inserts them.

A ``BEFORE INSERT`` trigger on ``training_snapshotrecord`` rejects a record whose source item is
tagged ``model_generated`` (a comparison queue's items), and a record whose completion, chosen or
rejected text is, byte for byte, the text of a generation output (outputs exported and imported
again as if they were human data). PostgreSQL compares the sha256 the database computed when the
output was written (indexed); SQLite compares the texts. A migration installs it.
"""

from django.db import migrations

FUNCTION = "goldset_refuse_model_outputs"
TRIGGER = "judging_snapshotrecord_no_model_outputs"
MESSAGE = (
    "holds a model output generated to judge a model (a generation run or a comparison item): "
    "model outputs made for evaluation never become training data"
)


def _pg_sql(schema: str) -> list[str]:
    s = '"' + schema.replace('"', '""') + '"'
    return [
        f"""
CREATE OR REPLACE FUNCTION {s}.{FUNCTION}() RETURNS trigger LANGUAGE plpgsql
SET search_path = {s}, pg_temp AS $fn$
BEGIN
  IF EXISTS (SELECT 1 FROM {s}.annotate_item i WHERE i.id = NEW.source_item_id AND i.provenance = 'model_generated')
     OR EXISTS (
       SELECT 1 FROM {s}.judging_generationoutput o
       WHERE o.text_sha256 = ANY (
         SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(t, 'UTF8')), 'hex')
         FROM pg_catalog.unnest(ARRAY[NEW.completion, NEW.chosen, NEW.rejected]) AS t WHERE t <> ''
       )
     ) THEN
    RAISE EXCEPTION 'snapshot record % (item %) {MESSAGE}', NEW.position, NEW.source_item_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $fn$;""",
        f"DROP TRIGGER IF EXISTS {TRIGGER} ON {s}.training_snapshotrecord;",
        f"CREATE TRIGGER {TRIGGER} BEFORE INSERT ON {s}.training_snapshotrecord "
        f"FOR EACH ROW EXECUTE FUNCTION {s}.{FUNCTION}();",
        f"ALTER TABLE {s}.training_snapshotrecord ENABLE ALWAYS TRIGGER {TRIGGER};",
    ]


SQLITE_SQL = [
    f"DROP TRIGGER IF EXISTS {TRIGGER};",
    f"""
CREATE TRIGGER {TRIGGER} BEFORE INSERT ON training_snapshotrecord
WHEN EXISTS (SELECT 1 FROM annotate_item WHERE id = NEW.source_item_id AND provenance = 'model_generated')
  OR EXISTS (
    SELECT 1 FROM judging_generationoutput
    WHERE (NEW.completion <> '' AND text = NEW.completion)
       OR (NEW.chosen <> '' AND text = NEW.chosen)
       OR (NEW.rejected <> '' AND text = NEW.rejected)
  )
BEGIN
  SELECT RAISE(ABORT, 'snapshot record {MESSAGE}');
END;""",
]


def install(apps, schema_editor) -> None:
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_schema()")
            statements = _pg_sql(cursor.fetchone()[0])
    elif connection.vendor == "sqlite":
        statements = SQLITE_SQL
    else:
        return
    for sql in statements:
        schema_editor.execute(sql, params=None)


def uninstall(apps, schema_editor) -> None:
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON training_snapshotrecord;")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}();")
    elif connection.vendor == "sqlite":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER};")


def operation() -> migrations.RunPython:
    return migrations.RunPython(install, uninstall)
