"""Responses are compressed for clients that accept gzip: HTML pages and the JSON API."""

import gzip
import json

import pytest

from sessions_app import engine

from .test_api_support import api_for

pytestmark = pytest.mark.django_db


def test_chat_page_is_gzipped(client, user):
    engine.session_create("long", owner=user)
    for i in range(40):
        engine.message_append(engine.find_session("long", owner=user).key, "user", f"message number {i} " * 20)
    client.force_login(user)
    plain = client.get("/c/long/")
    packed = client.get("/c/long/", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert plain.status_code == packed.status_code == 200
    assert "Content-Encoding" not in plain and packed["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in packed["Vary"]
    body = gzip.decompress(packed.content).decode()
    assert "message number 39" in body
    assert len(packed.content) < len(plain.content) / 3


def test_api_json_is_gzipped(user):
    api = api_for(user)
    api.put("/sessions/s")
    for i in range(30):
        api.post("/sessions/s/messages", {"role": "user", "content": f"the same words again {i} " * 10})
    response = api.get("/sessions/s/messages", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response["Content-Encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(response.content))["items"]) == 30
