from django.db import migrations, models

from config.schema import AddColumnInPlace


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
