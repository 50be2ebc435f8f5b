from django.urls import path

from annotate.views import projects

app_name = "annotate"

urlpatterns = [
    path("", projects.project_list, name="project-list"),
    path("projects/<slug:slug>/", projects.project_detail, name="project-detail"),
]
