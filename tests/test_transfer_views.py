"""The import page (/import/): upload, the new conversations listed, form errors, the size limit;
and the export links of the app's pages."""

from __future__ import annotations

import io
import json

import pytest
from django.test import Client

from sessions_app import engine, transfer
from sessions_app.models import ConversationSession

from .transfer_support import export_doc, fixture, rich_session, without_ids

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(user):
    client = Client()
    client.force_login(user)
    return client


def upload(raw: bytes, name: str = "export.json") -> io.BytesIO:
    file = io.BytesIO(raw)
    file.name = name
    return file


def test_the_page_is_linked_and_offers_export_all(client, user):
    home = client.get("/")
    assert 'href="/import/"' in home.content.decode()
    page = client.get("/import/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/api/v1/export"' in html and 'enctype="multipart/form-data"' in html
    assert Client().get("/import/").status_code == 302  # login required


def test_the_chat_page_links_its_exports(client, user):
    rich_session(user)
    html = client.get("/c/trip-plan/").content.decode()
    assert 'href="/api/v1/sessions/trip-plan/export?format=json"' in html
    assert 'href="/api/v1/sessions/trip-plan/export?format=markdown"' in html
    # The links work with the browser's session.
    response = client.get("/api/v1/sessions/trip-plan/export?format=json")
    assert response.status_code == 200
    assert json.loads(b"".join(response.streaming_content))["title"] == "Lisbon trip"


def test_upload_round_trip(client, user):
    original = rich_session(user)
    exported = "".join(transfer.iter_json(original)).encode()
    response = client.post("/import/", {"file": upload(exported)})
    assert response.status_code == 201
    html = response.content.decode()
    assert "Imported 1 conversation</strong> from a Convo export" in html
    copy = ConversationSession.objects.filter(owner=user).exclude(pk=original.pk).get()
    assert f'href="/c/{copy.sid}/"' in html and "you already had <code>trip-plan</code>" in html
    assert without_ids(export_doc(copy)) == without_ids(export_doc(original))


def test_upload_chatgpt_and_openwebui(client, user):
    response = client.post("/import/", {"file": upload(fixture("chatgpt_conversations.json"), "conversations.json")})
    assert response.status_code == 201
    assert "Imported 2 conversations</strong> from a ChatGPT export" in response.content.decode()
    response = client.post("/import/", {"file": upload(fixture("openwebui_chats.json"))})
    assert response.status_code == 201 and "Seasonal haiku" in response.content.decode()
    assert ConversationSession.objects.filter(owner=user).count() == 4


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chatgpt_missing_current_node.json", "conversation 2 (&quot;Weeknight pasta&quot;), field current_node"),
        ("openwebui_wrong_type.json", "field chat.history.messages[&#x27;n2&#x27;].content"),
        ("chatgpt_bad_json.json", "is not valid JSON"),
    ],
)
def test_bad_files_are_a_form_error_and_import_nothing(client, name, expected):
    response = client.post("/import/", {"file": upload(fixture(name))})
    assert response.status_code == 422
    html = response.content.decode()
    assert 'class="field-error" role="alert">Nothing was imported.' in html
    assert expected in html
    assert not ConversationSession.objects.exists()


def test_no_file_is_a_form_error(client):
    response = client.post("/import/", {})
    assert response.status_code == 422
    assert "Choose a file to import." in response.content.decode()


def test_too_large_is_413_with_a_form_error(client, settings):
    settings.CONVO_IMPORT_MAX_BYTES = 1000
    response = client.post("/import/", {"file": upload(fixture("openwebui_chats.json"))})
    assert response.status_code == 413
    assert "the largest import is 1,000 bytes" in response.content.decode()
    big = upload(b"x" * 200_000)
    response = client.post("/import/", {"file": big})  # refused from its declared length, unread
    assert response.status_code == 413
    assert not ConversationSession.objects.exists()


def test_csrf_is_required(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/import/", {"file": upload(fixture("openwebui_chats.json"))})
    assert response.status_code == 403
    assert not engine.session_list()
