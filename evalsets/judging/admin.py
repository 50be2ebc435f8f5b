"""Read-only admin views: runs, outputs and comparisons change only through the judging pages' services."""

from django.contrib import admin

from config.admin import ReadOnlyAdmin
from evalsets.judging.models import Comparison, ComparisonItem, GenerationOutput, GenerationRun, RegressionCheck


@admin.register(GenerationRun)
class GenerationRunAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "label",
        "source",
        "status",
        "base_model",
        "job",
        "output_count",
        "prompt_count",
        "created_at",
    ]
    list_filter = ["status", "source"]


@admin.register(GenerationOutput)
class GenerationOutputAdmin(ReadOnlyAdmin):
    list_display = ["run", "position", "record_id", "check_key", "new_tokens", "finish_reason"]


@admin.register(Comparison)
class ComparisonAdmin(ReadOnlyAdmin):
    list_display = ["name", "run_a", "run_b", "project", "created_at"]


@admin.register(ComparisonItem)
class ComparisonItemAdmin(ReadOnlyAdmin):
    list_display = ["comparison", "item", "record_id", "a_index"]


@admin.register(RegressionCheck)
class RegressionCheckAdmin(ReadOnlyAdmin):
    list_display = ["project", "category", "kind", "expected", "tolerance"]
