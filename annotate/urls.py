from django.urls import path

from annotate.views import adjudication, adminlog, checks, imports, projects, queue, reports, rubrics, tokens

app_name = "annotate"

urlpatterns = [
    path("", projects.project_list, name="project-list"),
    # The review queue first: every reviewer request resolves through these, checked in order.
    path("projects/<slug:slug>/queue/", queue.queue_page, name="queue"),
    path("projects/<slug:slug>/queue/next/", queue.queue_next, name="queue-next"),
    path("projects/<slug:slug>/queue/progress/", queue.queue_progress, name="queue-progress"),
    path("projects/<slug:slug>/queue/undo/", queue.queue_undo, name="queue-undo"),
    path("projects/<slug:slug>/queue/leases/<int:lease_id>/submit/", queue.queue_submit, name="queue-submit"),
    path("projects/<slug:slug>/queue/leases/<int:lease_id>/skip/", queue.queue_skip, name="queue-skip"),
    path("projects/<slug:slug>/queue/leases/<int:lease_id>/flag/", queue.queue_flag, name="queue-flag"),
    path("projects/new/", projects.project_new, name="project-new"),
    path("projects/<slug:slug>/", projects.project_detail, name="project-detail"),
    path("projects/<slug:slug>/settings/", projects.project_settings, name="project-settings"),
    path("projects/<slug:slug>/members/", projects.project_members, name="project-members"),
    path(
        # path: a username made outside the forms (a shell, a directory sync) may hold a slash.
        "projects/<slug:slug>/members/<path:username>/remove/",
        projects.project_member_remove,
        name="project-member-remove",
    ),
    path(
        "projects/<slug:slug>/export/annotations.<str:fmt>",
        projects.annotation_export,
        name="annotation-export",
    ),
    path("settings/tokens/", tokens.token_list, name="token-list"),
    path("admin-log/", adminlog.admin_log, name="admin-log"),
    path("settings/tokens/<int:token_id>/revoke/", tokens.token_revoke, name="token-revoke"),
    # Rubrics, sign-off, calibration and known-answer checks
    path("projects/<slug:slug>/rubrics/", rubrics.rubric_list, name="rubric-list"),
    path("projects/<slug:slug>/rubrics/new/", rubrics.rubric_new, name="rubric-new"),
    path("projects/<slug:slug>/rubrics/<int:rubric_id>/versions/new/", rubrics.version_new, name="rubric-version-new"),
    path("projects/<slug:slug>/rubrics/versions/<int:version_id>/", rubrics.version_detail, name="rubric-version"),
    path(
        "projects/<slug:slug>/rubrics/versions/<int:version_id>/propose/",
        rubrics.version_propose,
        name="rubric-version-propose",
    ),
    path(
        "projects/<slug:slug>/rubrics/versions/<int:version_id>/signoff/",
        rubrics.version_signoff,
        name="rubric-version-signoff",
    ),
    path(
        "projects/<slug:slug>/rubrics/versions/<int:version_id>/activate/",
        rubrics.version_activate,
        name="rubric-version-activate",
    ),
    path(
        "projects/<slug:slug>/rubrics/versions/<int:version_id>/send-back/",
        rubrics.version_send_back,
        name="rubric-version-send-back",
    ),
    path("projects/<slug:slug>/calibration/<int:version_id>/", rubrics.calibration, name="calibration"),
    path(
        "projects/<slug:slug>/calibration/<int:version_id>/items/",
        rubrics.calibration_item_add,
        name="calibration-item-add",
    ),
    path(
        "projects/<slug:slug>/calibration/<int:version_id>/items/<int:item_id>/",
        rubrics.calibration_score,
        name="calibration-score",
    ),
    path("projects/<slug:slug>/checks/", checks.checks, name="checks"),
    # Agreement report
    path("projects/<slug:slug>/report/", reports.report, name="report"),
    path("projects/<slug:slug>/report/compute/", reports.report_compute, name="report-compute"),
    path("projects/<slug:slug>/report/refresh/", reports.report_refresh, name="report-refresh"),
    path("projects/<slug:slug>/report.csv", reports.report_csv, name="report-csv"),
    path("projects/<slug:slug>/report.json", reports.report_json, name="report-json"),
    # Adjudication
    path("projects/<slug:slug>/adjudication/", adjudication.queue, name="adjudication-queue"),
    path("projects/<slug:slug>/adjudication/<int:item_id>/", adjudication.decide, name="adjudication-item"),
    path(
        "projects/<slug:slug>/queue/items/<int:item_id>/history/",
        queue.annotation_history,
        name="annotation-history",
    ),
    path("projects/<slug:slug>/queue/health/", queue.queue_health, name="queue-health"),
    path(
        "projects/<slug:slug>/queue/health/leases/<int:lease_id>/expire/",
        queue.queue_lease_expire,
        name="queue-lease-expire",
    ),
    path(
        "projects/<slug:slug>/queue/health/leases/<int:lease_id>/reassign/",
        queue.queue_lease_reassign,
        name="queue-lease-reassign",
    ),
    path("projects/<slug:slug>/flags/", queue.flag_list, name="flag-list"),
    path("projects/<slug:slug>/flags/<int:flag_id>/resolve/", queue.flag_resolve, name="flag-resolve"),
    path("projects/<slug:slug>/items/", imports.item_list, name="item-list"),
    path("projects/<slug:slug>/imports/", imports.import_new, name="import-new"),
    path("projects/<slug:slug>/imports/<int:batch_id>/", imports.import_detail, name="import-detail"),
    path("projects/<slug:slug>/imports/<int:batch_id>/progress/", imports.import_progress, name="import-progress"),
    path("projects/<slug:slug>/imports/<int:batch_id>/retry/", imports.import_retry, name="import-retry"),
    path("projects/<slug:slug>/imports/<int:batch_id>/rejected/", imports.import_rejected, name="import-rejected"),
    path(
        "projects/<slug:slug>/imports/<int:batch_id>/rejected/errors.csv",
        imports.import_rejected_errors,
        name="import-rejected-errors",
    ),
]
