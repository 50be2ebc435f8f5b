"""Stored annotation-export lines and the triggers that record what outdates them
(``annotate/export_cache.py``; PostgreSQL only: elsewhere the export builds every line)."""

from django.conf import settings
from django.db import migrations, models


def _forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from annotate.export_cache import trigger_sql

    for sql in trigger_sql():
        schema_editor.execute(sql, params=None)


def _backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from annotate.export_cache import drop_sql

    for sql in drop_sql():
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0012_merge_api_and_judging"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ExportLine",
            fields=[
                ("item_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("line", models.TextField()),
                ("built_at", models.DateTimeField()),
            ],
        ),
        migrations.CreateModel(
            name="ExportLineChange",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("item_id", models.BigIntegerField(db_index=True)),
            ],
        ),
        migrations.RunPython(_forwards, _backwards),
    ]
