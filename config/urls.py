from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from annotate.views.projects import health
from config.api import api_not_found
from config.apiurls import api_urls

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", health, name="health"),
    path("admin/", admin.site.urls),
    path("api/v1/", api_urls()),
    re_path(r"^api/", api_not_found),
    path("evalsets/", include("evalsets.urls")),
    path("training/", include("training.urls")),
    path("judging/", include("evalsets.judging.urls")),
    path("", include("annotate.urls")),
]

# A lost database connection answers 503 "try again"; any other error the styled 500 page.
handler500 = "config.errors.server_error"
