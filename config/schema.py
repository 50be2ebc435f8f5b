"""Schema operations the stock migrations get wrong for this project."""

from django.db import migrations


class AddColumnInPlace(migrations.AddField):
    """AddField, but on SQLite one ``ALTER TABLE ADD COLUMN``: Django's SQLite editor rebuilds a table to add
    a NOT NULL column, and the rebuild breaks the triggers that name the table (the lease and review-count
    triggers on annotate_item and annotate_project)."""

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
