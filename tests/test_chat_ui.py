"""The chat page's server side (issue 12): Pygments highlighting through markdown-it's highlight hook,
live Markdown of a streaming reply, tool call chips, message copy (raw text), the reply inspector and
what a reply stores for it, the composer's role, the home page's deleted-conversation notice, the
friendly error pages and the generated code colours."""

import re

import pytest
from django.test import Client
from django.test.utils import override_settings

from sessions_app import engine, rendering
from sessions_app.management.commands import build_pygments_css
from sessions_app.templatetags.convo_ui import tool_arguments_pretty, tool_arguments_short

from .fake_openai import text_chunks, usage_chunk
from .replies_support import reply_to

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def client(user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(user)
    return c


# ---------------------------------------------------------------------------------------------
# Markdown: code blocks and live rendering.


def test_fenced_code_is_highlighted_by_pygments_with_classes_only():
    html = rendering.markdown_html("```python\ndef f(x):\n    return x  # c\n```")
    assert '<span class="code-lang">python</span>' in html
    assert '<span class="k">def</span>' in html and '<span class="c1"># c</span>' in html
    assert "style=" not in html  # the CSP allows no inline style: colours come from pygments.css


def test_code_in_an_unknown_or_no_language_is_escaped_text_with_a_label():
    html = rendering.markdown_html("```nosuchlang\n<b>x</b>\n```\n\n    indented <i>")
    assert '<span class="code-lang">nosuchlang</span>' in html
    assert '<span class="code-lang">text</span>' in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>" not in html and "<i>" not in html


def test_markdown_cannot_smuggle_classes_or_attributes():
    html = rendering.markdown_html('```python" onclick="alert(1) class="x\nprint(1)\n```\n\n<span class="k">raw</span>')
    assert "onclick" not in html.replace("&quot;", "") or 'onclick="' not in html
    assert 'class="x"' not in html
    assert '<span class="k">raw</span>' not in html  # raw HTML stays text
    # Only the renderer's classes survive the sanitizer.
    classes = set(re.findall(r'class="([^"]+)"', html))
    assert classes <= {"code-block", "code-head", "code-lang", *rendering.PYGMENTS_CLASSES}


def test_live_markdown_renders_a_partial_reply_without_caching_it():
    rendering._markdown_cache.clear()
    text = "## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint('hi')"  # the fence is still open
    html = rendering.markdown_live_html(text)
    assert "<h2>Results</h2>" in html and "<td>1</td>" in html
    assert '<span class="nb">print</span>' in html
    assert rendering._markdown_cache.get(text) is None  # each prefix is seen once: not cached
    oob = rendering.render_reply_oob("s", "delta", text, reply_id=1, turn=1)
    assert "<h2>Results</h2>" in oob and "```" not in oob


def test_live_markdown_respects_the_render_budget():
    with rendering.render_budget(0):
        html = rendering.markdown_live_html("## not rendered")
    assert html == '<pre class="plain">## not rendered</pre>'


def test_tool_arguments_on_a_chip():
    assert tool_arguments_short('{"expression": "12*7"}') == "12*7"
    assert tool_arguments_short('{"key": "city", "value": "Lyon"}') == '{"key":"city","value":"Lyon"}'
    assert tool_arguments_short("not json") == "not json"
    assert len(tool_arguments_short('{"a": "' + "x" * 100 + '"}')) == 40
    assert tool_arguments_pretty('{"b": 1, "a": [1]}') == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'


# ---------------------------------------------------------------------------------------------
# The chat page's views.


def test_a_tool_message_is_a_chip_and_messages_have_actions(client, user, make_session):
    make_session("talk", owner=user)
    engine.message_append("talk", "user", "what is 12*7?")
    engine.message_append(
        "talk", "tool", "84", name="calculator", tool_call_id="call_1", metadata={"arguments": '{"expression": "12*7"}'}
    )
    engine.message_append("talk", "assistant", "84", metadata={"reply": "1", "finish_reason": "stop"})
    html = client.get("/c/talk/").content.decode()
    chip = re.search(r'<details class="tool-chip">\s*<summary>(.*?)</summary>', html, re.S).group(1)
    assert re.sub(r"<[^>]+>|\s+", " ", chip).split() == ["calculator", "·", "12*7", "→", "84"]
    assert html.count('data-action="copy"') == 2  # the user's and the assistant's messages
    assert html.count('data-action="inspect"') == 1  # answers written by a reply
    assert 'role="log"' in html and '<ol id="message-list" class="message-list">' in html  # a real list


def test_raw_message_text_for_copy(client, user, other_user, make_session):
    make_session("talk", owner=user)
    engine.message_append("talk", "user", "**bold** <b>and</b> `code`")
    response = client.get("/c/talk/m/1/raw/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == "**bold** <b>and</b> `code`"
    assert client.get("/c/talk/m/2/raw/").status_code == 404
    stranger = Client(HTTP_HOST="localhost")
    stranger.force_login(other_user)
    assert stranger.get("/c/talk/m/1/raw/").status_code == 404


def test_after_posting_as_another_role_the_composer_is_back_to_user(client, user, make_session):
    make_session("talk", owner=user)
    html = client.post(
        "/c/talk/send/", {"role": "assistant", "content": "by hand", "name": "bot"}, **HX
    ).content.decode()
    assert '<option value="user" selected>' in html
    assert 'value="bot"' not in html


def test_home_says_which_conversation_was_deleted(client):
    html = client.get("/?gone=<b>trip</b>").content.decode()
    assert "“&lt;b&gt;trip&lt;/b&gt;” was deleted" in html
    assert "was deleted" not in client.get("/").content.decode()


@override_settings(DEBUG=False)
@pytest.mark.parametrize("status", [404])
def test_friendly_error_page_in_the_app_frame(client, status):
    response = client.get("/c/no-such-conversation/")
    assert response.status_code == status
    html = response.content.decode()
    assert 'class="topbar"' in html and "Page not found" in html and 'rel="icon"' in html


# ---------------------------------------------------------------------------------------------
# The reply inspector.


@pytest.mark.django_db(transaction=True)
def test_a_reply_keeps_what_it_sent_and_the_inspector_shows_it(client, user, make_session, fake_llm):
    make_session("talk", owner=user, system_prompt="Be brief.", max_tokens=300)
    engine.message_append("talk", "user", "first")
    engine.message_append("talk", "assistant", "an earlier answer")
    fake_llm.stream(*text_chunks("The ", "answer."), usage_chunk(42, 3))
    reply = reply_to("talk", "second")
    assert reply.status == "done"
    assert reply.sent_seqs == [1, 2, 3, 4]  # the prompt, both earlier messages and the question
    assert reply.usage["budget"] == 300
    assert reply.usage["estimated_prompt_tokens"] > 0
    assert reply.usage["provider"] == {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45}
    assert reply.usage["tool_rounds"] == 0 and reply.first_token_at is not None
    # A later change (a new message, a smaller window) does not change what this answer saw.
    engine.message_append("talk", "user", "later")
    engine.session_update(
        "talk", owner=user, config=engine.SessionConfig.of(engine.session_get("talk")), system_prompt="Changed."
    )
    html = client.get(f"/c/talk/m/{reply.message_seq}/inspect/", **HX).content.decode()
    assert re.findall(r'<li data-seq="(\d+)">', html) == ["1", "2", "3", "4"]
    assert "Be brief." in html and "Changed." not in html and "later" not in html
    assert "300 tokens" in html and "42 prompt · 3 completion · 45 total" in html
    assert re.search(r"after \d+ ms", html)
    # Without htmx: a page of its own; an answer typed by hand has no request; others' are 404.
    assert "What the model saw" in client.get(f"/c/talk/m/{reply.message_seq}/inspect/").content.decode()
    assert "posted by hand" in client.get("/c/talk/m/3/inspect/", **HX).content.decode()
    assert client.get("/c/talk/m/1/inspect/", **HX).status_code == 404  # not an answer


# ---------------------------------------------------------------------------------------------
# Code colours.


def test_the_checked_in_pygments_css_is_the_generated_one_and_readable():
    css = build_pygments_css.build()
    assert build_pygments_css.OUTPUT.read_text(encoding="utf-8") == css
    for background, block in (
        (build_pygments_css.LIGHT_BACKGROUND, css.split("/* Dark")[0]),
        (build_pygments_css.DARK_BACKGROUND, css.split("/* Dark")[1]),
    ):
        colours = re.findall(r"color: (#[0-9a-f]{6})", block)
        assert colours
        assert min(build_pygments_css.contrast(c, background) for c in colours) >= 4.5
