"""Helpers shared by the API tests (no tests here): a JSON client that speaks for one API key."""

from __future__ import annotations

import json as jsonlib
from typing import Any

from django.test import Client

from sessions_app import keys

BASE = "/api/v1"


class Api:
    """Calls /api/v1 as one user, with ``Authorization: Bearer <key>``."""

    def __init__(self, secret: str | None, client: Client | None = None) -> None:
        self.secret = secret
        self.client = client or Client()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        headers.update(extra or {})
        return headers

    def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        raw: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, Any] | None = None,
    ):
        url = BASE + path
        if query:
            from urllib.parse import urlencode

            url += "?" + urlencode(query)
        data = raw if raw is not None else (jsonlib.dumps(json) if json is not None else None)
        kwargs: dict[str, Any] = {"headers": self.headers(headers)}
        if data is not None:
            kwargs.update(data=data, content_type="application/json")
        return getattr(self.client, method.lower())(url, **kwargs)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, json=None, **kw):
        return self.call("POST", path, json, **kw)

    def put(self, path, json=None, **kw):
        return self.call("PUT", path, json, **kw)

    def delete(self, path, **kw):
        return self.call("DELETE", path, **kw)


def api_for(user) -> Api:
    _, secret = keys.create_api_key(user, "test")
    return Api(secret)


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is the API's error shape with this status (and code)."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["error"] == code, body
    return body
