"""Agreement reports take the shape every background job has (config.background.BackgroundWork)."""

from django.db import migrations, models

STATUS_CHOICES = [
    ("queued", "Queued"),
    ("running", "Running"),
    ("succeeded", "Succeeded"),
    ("failed", "Failed"),
    ("cancelled", "Cancelled"),
]


def forwards(apps, schema_editor):
    # Through the migration's own connection (the owner role on PostgreSQL), not the app role's.
    reports = apps.get_model("annotate", "AgreementReport").objects.using(schema_editor.connection.alias)
    for report in reports.exclude(status="failed").only("id", "stage"):
        reports.filter(pk=report.pk).update(message=report.stage)
    reports.filter(status="done").update(status="succeeded")


def backwards(apps, schema_editor):
    reports = apps.get_model("annotate", "AgreementReport").objects.using(schema_editor.connection.alias)
    reports.filter(status="succeeded").update(status="done")
    for report in reports.exclude(status="failed").only("id", "message"):
        reports.filter(pk=report.pk).update(stage=report.message[:200])


class Migration(migrations.Migration):
    dependencies = [("annotate", "0004_item_rubric_response")]

    operations = [
        migrations.AlterField(
            model_name="agreementreport",
            name="status",
            field=models.CharField(choices=STATUS_CHOICES, default="queued", max_length=16),
        ),
        migrations.AlterField(
            model_name="agreementreport",
            name="message",
            field=models.TextField(blank=True, help_text="What the work is doing, or why it failed."),
        ),
        migrations.RunPython(forwards, backwards),
        migrations.RemoveField(model_name="agreementreport", name="stage"),
        migrations.AddField(
            model_name="agreementreport", name="started_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="agreementreport", name="finished_at", field=models.DateTimeField(blank=True, null=True)
        ),
    ]
