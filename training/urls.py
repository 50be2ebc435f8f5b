from django.urls import path

from training import views

app_name = "training"

urlpatterns = [
    path("", views.job_list, name="job-list"),
    path("snapshots/", views.snapshot_list, name="snapshot-list"),
    path("snapshots/<int:snapshot_id>/", views.snapshot_detail, name="snapshot-detail"),
    path("snapshots/<int:snapshot_id>/rewrite-tasks/", views.snapshot_rewrite_tasks, name="snapshot-rewrite-tasks"),
    path("snapshots/<int:snapshot_id>/audit/", views.audit_rerun, name="snapshot-audit"),
    path("snapshots/<int:snapshot_id>/diff/<int:other_id>/", views.snapshot_diff, name="snapshot-diff"),
    path("audits/<int:audit_id>/", views.audit_detail, name="audit-detail"),
    path("audits/<int:audit_id>/acknowledge/", views.audit_acknowledge, name="audit-acknowledge"),
    path("audits/<int:audit_id>/items/", views.audit_finding_action, name="audit-finding-action"),
    path("jobs/new/", views.job_new, name="job-new"),
    path("preflights/<int:preflight_id>/", views.preflight_detail, name="preflight-detail"),
    path("preflights/<int:preflight_id>/queue/", views.preflight_queue, name="preflight-queue"),
    path("jobs/<int:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job-retry"),
    path("jobs/<int:job_id>/resume/", views.job_resume, name="job-resume"),
    path("jobs/<int:job_id>/adapter.zip", views.job_download, name="job-download"),
]
