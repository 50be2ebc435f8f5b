from django.urls import path

from evalsets import views

app_name = "evalsets"

urlpatterns = [
    path("", views.evalset_list, name="evalset-list"),
    path("projects/<slug:slug>/freeze/", views.evalset_freeze, name="evalset-freeze"),
    path("versions/<int:version_id>/", views.version_detail, name="version-detail"),
    path("versions/<int:version_id>/export/<str:fmt>/", views.version_export, name="version-export"),
    path(
        "versions/<int:version_id>/export/<str:fmt>/manifest.json",
        views.version_export_manifest,
        name="version-export-manifest",
    ),
    path("snapshots/", views.snapshot_list, name="snapshot-list"),
    path("snapshots/<int:snapshot_id>/contamination/", views.snapshot_contamination, name="snapshot-contamination"),
    path(
        "snapshots/<int:snapshot_id>/contamination/check/",
        views.snapshot_contamination_check,
        name="snapshot-contamination-check",
    ),
    path("contamination-runs/<int:run_id>/", views.contamination_run_progress, name="contamination-run"),
]
