from django.urls import path

from annotate.views import projects, queue

app_name = "annotate"

urlpatterns = [
    path("", projects.project_list, name="project-list"),
    path("projects/<slug:slug>/", projects.project_detail, name="project-detail"),
    path("projects/<slug:slug>/queue/", queue.queue_page, name="queue"),
    path("projects/<slug:slug>/queue/next/", queue.queue_next, name="queue-next"),
    path("projects/<slug:slug>/queue/progress/", queue.queue_progress, name="queue-progress"),
    path("projects/<slug:slug>/queue/undo/", queue.queue_undo, name="queue-undo"),
    path("projects/<slug:slug>/queue/leases/<int:lease_id>/submit/", queue.queue_submit, name="queue-submit"),
    path("projects/<slug:slug>/queue/leases/<int:lease_id>/skip/", queue.queue_skip, name="queue-skip"),
    path("projects/<slug:slug>/queue/leases/<int:lease_id>/flag/", queue.queue_flag, name="queue-flag"),
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
]
