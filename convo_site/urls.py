from django.contrib import admin
from django.urls import include, path, re_path

from sessions_app import api_keys_views
from sessions_app.api import api, not_found_view

urlpatterns = [
    path("admin/", admin.site.urls),
    # The JSON API; any other path under it answers a JSON 404 rather than an HTML page.
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<rest>[\s\S]*)\Z", not_found_view),
    path("settings/api-keys/", api_keys_views.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", api_keys_views.api_key_revoke, name="api_key_revoke"),
    path("", include("sessions_app.urls")),
]
