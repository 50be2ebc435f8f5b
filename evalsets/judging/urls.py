from django.urls import path

from evalsets.judging import views

app_name = "judging"

urlpatterns = [
    path("runs/", views.run_list, name="run-list"),
    path("runs/<int:run_id>/", views.run_detail, name="run-detail"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<int:run_id>/retry/", views.run_retry, name="run-retry"),
    path("comparisons/", views.comparison_list, name="comparison-list"),
    path("comparisons/<int:comparison_id>/", views.comparison_detail, name="comparison-detail"),
    path("models/<int:job_id>/", views.model_card, name="model-card"),
    path("models/<int:job_id>/README.md", views.model_card_markdown, name="model-card-markdown"),
    path("models/<int:job_id>/regression/", views.regression_start, name="regression-start"),
    path("projects/<slug:slug>/checks/", views.project_checks, name="project-checks"),
]
