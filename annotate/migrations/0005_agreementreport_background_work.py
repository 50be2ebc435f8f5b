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
    AgreementReport = apps.get_model("annotate", "AgreementReport")
    for report in AgreementReport.objects.exclude(status="failed").only("id", "stage"):
        AgreementReport.objects.filter(pk=report.pk).update(message=report.stage)
    AgreementReport.objects.filter(status="done").update(status="succeeded")


def backwards(apps, schema_editor):
    AgreementReport = apps.get_model("annotate", "AgreementReport")
    AgreementReport.objects.filter(status="succeeded").update(status="done")
    for report in AgreementReport.objects.exclude(status="failed").only("id", "message"):
        AgreementReport.objects.filter(pk=report.pk).update(stage=report.message[:200])


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
