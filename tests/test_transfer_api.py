"""GET /api/v1/sessions/{id}/export, GET /api/v1/export and POST /api/v1/import."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.test import Client

from sessions_app.models import ConversationSession

from .test_api_support import BASE, api_for, assert_error
from .transfer_support import export_doc, fixture, rich_session, without_ids

pytestmark = pytest.mark.django_db


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_export_one_conversation_as_json_and_markdown(user):
    session = rich_session(user)
    api = api_for(user)
    response = api.get("/sessions/trip-plan/export", query={"format": "json"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="trip-plan.json"'
    assert without_ids(json.loads(body(response))) == without_ids(export_doc(session))
    default = api.get("/sessions/trip-plan/export")
    assert json.loads(body(default))["format"] == "convo.export/1"
    md = api.get("/sessions/trip-plan/export", query={"format": "markdown"})
    assert md["Content-Type"] == "text/markdown; charset=utf-8"
    assert md["Content-Disposition"] == 'attachment; filename="trip-plan.md"'
    assert body(md).decode().startswith("# Lisbon trip\n")


def test_export_errors(user, other_user, make_session):
    make_session("theirs", owner=other_user)
    api = api_for(user)
    assert_error(api.get("/sessions/theirs/export"), 404, "not_found")
    assert_error(api.get("/sessions/nope/export"), 404, "not_found")
    make_session("mine", owner=user)
    assert_error(api.get("/sessions/mine/export", query={"format": "pdf"}), 422, "validation_error")
    assert_error(Client().get(BASE + "/sessions/mine/export"), 401, "unauthorized")
    assert_error(Client().get(BASE + "/export"), 401, "unauthorized")


def test_export_all_is_a_zip_of_the_callers_conversations(user, other_user, make_session):
    rich_session(user)
    make_session("second", owner=user)
    make_session("theirs", owner=other_user)
    response = api_for(user).get("/export")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith('attachment; filename="convo-export-alice-')
    archive = zipfile.ZipFile(io.BytesIO(body(response)))
    ids = sorted(json.loads(archive.read(n))["id"] for n in archive.namelist())
    assert ids == ["second", "trip-plan"]


def test_import_round_trip_through_the_api(user):
    rich_session(user)
    api = api_for(user)
    exported = body(api.get("/sessions/trip-plan/export"))
    response = api.post("/import", raw=exported)
    assert response.status_code == 201, response.content
    result = response.json()
    assert result["format"] == "Convo export" and result["count"] == 1
    [item] = result["items"]
    assert item["requested_id"] == "trip-plan" and item["id"] != "trip-plan"
    assert item["title"] == "Lisbon trip" and item["messages"] == 9
    again = body(api.get(f"/sessions/{item['id']}/export"))
    assert without_ids(json.loads(again)) == without_ids(json.loads(exported))


def test_import_a_zip_and_multipart(user, other_user, make_session):
    rich_session(user)
    make_session("second", owner=user)
    archive = body(api_for(user).get("/export"))
    api = api_for(other_user)
    response = api.call("POST", "/import", raw=archive, headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.content
    assert sorted(i["id"] for i in response.json()["items"]) == ["second", "trip-plan"]
    assert all(i["requested_id"] is None for i in response.json()["items"])

    upload = io.BytesIO(fixture("chatgpt_conversations.json"))
    upload.name = "conversations.json"
    multipart = api.client.post(BASE + "/import", {"file": upload}, headers=api.headers())
    assert multipart.status_code == 201, multipart.content
    assert multipart.json()["format"] == "ChatGPT export"
    assert [i["title"] for i in multipart.json()["items"]] == ["Boiling point of water", "Weeknight pasta"]


def test_import_errors_name_the_conversation_and_field_and_store_nothing(user):
    api = api_for(user)
    error = assert_error(api.post("/import", raw=fixture("openwebui_cycle.json")), 422, "import_invalid")
    assert 'conversation 2 ("Miles to km")' in error["detail"] and "chat.history.messages" in error["detail"]
    assert_error(api.post("/import", raw=fixture("chatgpt_bad_json.json")), 422, "import_invalid")
    assert_error(api.post("/import", raw=b""), 422, "import_invalid")
    assert_error(api.client.post(BASE + "/import", {"other": "x"}, headers=api.headers()), 422, "import_invalid")
    assert not ConversationSession.objects.exists()


def test_import_size_limit_is_413(user, settings):
    settings.CONVO_IMPORT_MAX_BYTES = 1000
    api = api_for(user)
    raw = fixture("openwebui_chats.json")
    assert len(raw) > 1000
    error = assert_error(api.post("/import", raw=raw), 413, "import_too_large")
    assert "largest import is 1,000 bytes" in error["detail"]
    upload = io.BytesIO(raw)
    upload.name = "chats.json"
    assert_error(api.client.post(BASE + "/import", {"file": upload}, headers=api.headers()), 413, "import_too_large")
    assert not ConversationSession.objects.exists()


def test_import_accepts_bodies_larger_than_the_api_body_limit(user, settings):
    """The import's own limit applies, not CONVO_API_MAX_BODY_BYTES (which still guards other endpoints)."""
    settings.CONVO_API_MAX_BODY_BYTES = 500
    api = api_for(user)
    response = api.post("/import", raw=fixture("openwebui_chats.json"))
    assert response.status_code == 201, response.content
    assert_error(api.post("/sessions", {"id": "x", "system_prompt": "y" * 600}), 413, "body_too_large")


def test_import_needs_csrf_from_a_browser_session(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(BASE + "/import", data=fixture("openwebui_chats.json"), content_type="application/json")
    assert_error(response, 403, "csrf_failed")
    assert not ConversationSession.objects.exists()


def test_the_operations_are_documented(user):
    schema = Client().get(BASE + "/openapi.json").json()
    assert {"/api/v1/sessions/{id}/export", "/api/v1/export", "/api/v1/import"} <= set(schema["paths"])
    responses = schema["paths"]["/api/v1/import"]["post"]["responses"]
    assert {"201", "413", "422"} <= set(responses)
    assert "404" in schema["paths"]["/api/v1/sessions/{id}/export"]["get"]["responses"]
