from django.urls import path

from annotate.views import imports, projects

app_name = "annotate"

urlpatterns = [
    path("", projects.project_list, name="project-list"),
    path("projects/<slug:slug>/", projects.project_detail, name="project-detail"),
    path("projects/<slug:slug>/items/", imports.item_list, name="item-list"),
    path("projects/<slug:slug>/imports/", imports.import_new, name="import-new"),
    path("projects/<slug:slug>/imports/<int:batch_id>/", imports.import_detail, name="import-detail"),
    path("projects/<slug:slug>/imports/<int:batch_id>/progress/", imports.import_progress, name="import-progress"),
    path("projects/<slug:slug>/imports/<int:batch_id>/rejected/", imports.import_rejected, name="import-rejected"),
]
