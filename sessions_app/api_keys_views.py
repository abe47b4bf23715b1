"""The API keys settings page: create a key (its secret is shown once), list and revoke keys."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from . import api_auth
from .models import ApiKey

NAME_MAX_LENGTH = 100


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    """GET: the user's keys. POST (field ``name``): create a key and show its secret this once."""
    context: dict = {"name_max_length": NAME_MAX_LENGTH}
    status = 200
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        if len(name) > NAME_MAX_LENGTH or "\x00" in name:
            context["error"] = f"A key's name is at most {NAME_MAX_LENGTH} characters."
            context["name"] = name[:NAME_MAX_LENGTH].replace("\x00", "")
            status = 400
        else:
            # Rendered in this response only: the secret is never stored or put in a redirect.
            context["new_key"], context["secret"] = api_auth.create_api_key(request.user, name)
            status = 201
    context["keys"] = ApiKey.objects.filter(user=request.user).order_by("-created_at")
    response = render(request, "sessions_app/api_keys.html", context, status=status)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=key_id, user=request.user)
    api_auth.revoke_api_key(key)
    return redirect("api_keys")
