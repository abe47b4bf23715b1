"""Export → import round trip through the UI, in a real browser."""

import json
import re
import zipfile

import pytest
from playwright.sync_api import expect

from sessions_app import engine, transfer
from sessions_app.models import ConversationSession

from ..transfer_support import fixture, without_ids
from .conftest import script


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def build(owner):
    engine.session_create("lisbon", owner=owner, system_prompt="You plan trips.")
    engine.message_append("lisbon", "user", "Plan **two days** in Lisbon.", owner=owner)
    engine.message_append("lisbon", "assistant", "Day 1: Alfama. Day 2: Belém.", owner=owner)
    engine.turn_set_metadata("lisbon", 1, {"rating": "good"}, owner=owner)
    engine.state_set("lisbon", "city", "Lisbon", owner=owner)
    ConversationSession.objects.filter(sid="lisbon").update(title="Lisbon trip")


def export_of(session_id, owner):
    session = engine.session_get(session_id, owner=owner)
    return json.loads("".join(transfer.iter_json(session)))


def test_export_then_import_round_trip(page, server, alice, login, shot, tmp_path):
    login(alice)
    script(build, alice)
    page.goto(f"{server.url}/c/lisbon/")
    with page.expect_download() as download_info:
        page.locator(".export-links").get_by_role("link", name="JSON").click()
    download = download_info.value
    assert download.suggested_filename == "lisbon.json"
    exported = tmp_path / "lisbon.json"
    download.save_as(exported)
    doc = json.loads(exported.read_text())
    assert doc["format"] == "convo.export/1" and doc["title"] == "Lisbon trip"

    page.locator("#account-menu summary").click()  # the account menu holds the app's other pages
    page.get_by_role("link", name="Import / export").click()
    expect(page).to_have_url(re.compile(r"/import/$"))
    page.set_input_files("input[name=file]", str(exported))
    page.get_by_role("button", name="Import").click()
    result = page.locator("#import-result")
    expect(result).to_contain_text("Imported 1 conversation from a Convo export")
    expect(result).to_contain_text("you already had lisbon")
    shot(page, "import-result")
    result.get_by_role("link", name="Lisbon trip").click()
    expect(page).to_have_url(re.compile(r"/c/(?!lisbon/)[^/]+/$"))
    expect(page.locator("#message-list > li.role-assistant")).to_contain_text("Day 1: Alfama")
    expect(page.locator("#message-list > li.role-user strong")).to_have_text("two days")
    new_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert without_ids(script(export_of, new_id, alice)) == without_ids(doc)


def test_export_all_then_import_and_a_bad_file(page, server, alice, django_user_model, login, tmp_path):
    login(alice)
    script(build, alice)
    page.goto(f"{server.url}/import/")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export all conversations (.zip)").click()
    archive = tmp_path / "all.zip"
    download_info.value.save_as(archive)
    assert [json.loads(zipfile.ZipFile(archive).read(n))["id"] for n in zipfile.ZipFile(archive).namelist()] == [
        "lisbon"
    ]

    broken = tmp_path / "conversations.json"
    broken.write_bytes(fixture("chatgpt_cycle.json"))
    page.set_input_files("input[name=file]", str(broken))
    page.get_by_role("button", name="Import").click()
    expect(page.locator(".field-error")).to_contain_text('Nothing was imported. conversation 2 ("Weeknight pasta")')
    assert script(lambda: ConversationSession.objects.count()) == 1

    page.set_input_files("input[name=file]", str(archive))
    page.get_by_role("button", name="Import").click()
    expect(page.locator("#import-result")).to_contain_text("Imported 1 conversation from a Convo export")
    assert script(lambda: ConversationSession.objects.filter(title="Lisbon trip").count()) == 2
