"""The project's URLs plus a ``session-continue`` route, as the branches work adds it: the chat page
offers Continue only where that URL exists (tests/test_library.py)."""

from django.http import HttpResponse
from django.urls import path

from convo_site.urls import urlpatterns as project_urlpatterns


def _continue(request, session_id):
    return HttpResponse(status=204)


urlpatterns = [path("c/<str:session_id>/continue/", _continue, name="session-continue"), *project_urlpatterns]
