from django.db import migrations, models


class AddColumnInPlace(migrations.AddField):
    """AddField, but on SQLite one ALTER TABLE ADD COLUMN: rebuilding the table, as Django's SQLite editor does
    for a NOT NULL column, breaks the lease triggers that reference it."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "sqlite":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        field = model._meta.get_field(self.name)
        definition, params = schema_editor.column_sql(model, field, include_default=True)
        quote = schema_editor.quote_name
        schema_editor.execute(
            f"ALTER TABLE {quote(model._meta.db_table)} ADD COLUMN {quote(field.column)} {definition}", params
        )


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0003_merge_queue_and_rubrics"),
    ]

    operations = [
        AddColumnInPlace(
            model_name="item",
            name="rubric_response",
            field=models.PositiveSmallIntegerField(
                db_default=0,
                default=0,
                help_text="Rubric items: the index into responses of the response reviewers score, in any display order.",
            ),
        ),
    ]
