from django.contrib import admin

from annotate.models import (
    Adjudication,
    AgreementReport,
    Annotation,
    Flag,
    ImportBatch,
    Item,
    Lease,
    Project,
    RubricVersion,
)
from config.admin import ReadOnlyAdmin


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    """Projects, their settings and their members (who may see and review them)."""

    list_display = ["name", "slug", "overlap_k", "eval_share", "consensus_rule", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["members"]
    readonly_fields = ["created_by", "created_at"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        obj.full_clean()
        super().save_model(request, obj, form, change)


@admin.register(Item)
class ItemAdmin(ReadOnlyAdmin):
    list_display = ["id", "project", "kind", "split", "provenance", "is_check", "review_count"]
    list_filter = ["project", "kind", "split", "provenance", "is_check"]
    search_fields = ["prompt", "content_hash"]


@admin.register(Annotation)
class AnnotationAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "reviewer", "kind", "revision", "updated_at"]
    list_filter = ["kind"]


@admin.register(Lease)
class LeaseAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "reviewer", "status", "expires_at"]
    list_filter = ["status"]


@admin.register(ImportBatch)
class ImportBatchAdmin(ReadOnlyAdmin):
    list_display = ["id", "filename", "project", "status", "rows_imported", "rows_rejected", "created_at"]
    list_filter = ["status"]


@admin.register(Adjudication)
class AdjudicationAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "adjudicator", "created_at"]


@admin.register(Flag)
class FlagAdmin(admin.ModelAdmin):
    list_display = ["id", "item", "reviewer", "resolved", "created_at"]
    list_filter = ["resolved"]
    readonly_fields = ["item", "reviewer", "reason", "created_at"]


@admin.register(RubricVersion)
class RubricVersionAdmin(admin.ModelAdmin):
    """Proposed versions are read-only here too (the database refuses the change anyway)."""

    list_display = ["__str__", "status", "created_at", "activated_at"]
    list_filter = ["status"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.status != RubricVersion.Status.DRAFT:
            return ["rubric", "number", "criteria", "notes", "status", "created_by", "proposed_at", "activated_at"]
        return ["status", "proposed_at", "activated_at"]

    def has_delete_permission(self, request, obj=None):
        return obj is None or obj.status == RubricVersion.Status.DRAFT


@admin.register(AgreementReport)
class AgreementReportAdmin(admin.ModelAdmin):
    list_display = ["project", "rubric_version", "status", "progress", "created_at"]
    list_filter = ["status"]
    readonly_fields = [
        "project",
        "rubric_version",
        "fingerprint",
        "status",
        "progress",
        "message",
        "started_at",
        "finished_at",
        "result",
    ]
