from django.contrib import admin

from annotate.models import AgreementReport, RubricVersion


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
    readonly_fields = ["project", "rubric_version", "fingerprint", "status", "progress", "stage", "result", "message"]
