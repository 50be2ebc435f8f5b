from django.db import migrations, models

from config.schema import AddColumnInPlace


class Migration(migrations.Migration):
    dependencies = [("annotate", "0007_api_token")]

    operations = [
        AddColumnInPlace(
            model_name="project",
            name="audit_gates",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Per audit finding type, {action: off|warn|block, min_share}: what a finding does to a "
                "snapshot (defaults in annotate/audit.py: DEFAULT_GATES).",
            ),
        ),
        AddColumnInPlace(
            model_name="item",
            name="unusable_reason",
            field=models.TextField(
                blank=True,
                db_default="",
                default="",
                help_text="Set by an admin curating training data: why the item must not be trained on (never "
                "snapshotted).",
            ),
        ),
    ]
