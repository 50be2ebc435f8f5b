"""Read-only admin views: snapshots are write-once and jobs change only through the training pages' services."""

from django.contrib import admin

from config.admin import ReadOnlyAdmin
from training.models import JobProgress, SnapshotCheck, TrainingJob, TrainingSnapshot


@admin.register(TrainingSnapshot)
class TrainingSnapshotAdmin(ReadOnlyAdmin):
    list_display = ["name", "sha256", "sft_count", "dpo_count", "created_at"]


@admin.register(SnapshotCheck)
class SnapshotCheckAdmin(ReadOnlyAdmin):
    list_display = ["snapshot", "passed", "threshold", "checked_at"]


class JobProgressInline(admin.TabularInline):
    model = JobProgress
    extra = 0
    can_delete = False
    fields = ["phase", "step", "total_steps", "loss", "learning_rate", "grad_norm", "tokens_per_second"]
    readonly_fields = fields


@admin.register(TrainingJob)
class TrainingJobAdmin(ReadOnlyAdmin):
    list_display = ["id", "method", "status", "base_model", "snapshot", "step", "total_steps", "created_at"]
    list_filter = ["status", "method"]
    inlines = [JobProgressInline]
