from django.contrib import admin
from django.urls import include, path, re_path

from sessions_app.api import api, not_found_view

urlpatterns = [
    path("admin/", admin.site.urls),
    # The JSON API; any other path under it answers a JSON 404 rather than an HTML page.
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<rest>[\s\S]*)\Z", not_found_view),
    path("", include("sessions_app.urls")),
]
