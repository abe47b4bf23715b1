"""Markdown rendering and sanitizing of chat messages (markdown-it-py, then nh3); the partial map."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.template.loader import get_template

from sessions_app.rendering import PARTIALS, dom_id, markdown_html


def test_markdown_basics():
    html = markdown_html("**bold** _em_ `code`\n\n- a\n- b\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n~~old~~")
    for tag in ("<strong>bold</strong>", "<em>em</em>", "<code>code</code>", "<li>a</li>", "<table>", "<s>old</s>"):
        assert tag in html


def test_links_are_kept_safe():
    html = markdown_html("[site](https://example.com)")
    assert 'href="https://example.com"' in html and 'rel="noopener noreferrer nofollow"' in html


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "![x](javascript:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        "<iframe src=https://evil.example></iframe>",
        '<div style="background:url(javascript:alert(1))">x</div>',
    ],
)
def test_dangerous_input_is_inert(payload):
    elements = _elements(markdown_html(payload))
    assert not {"script", "iframe", "div", "style", "object", "embed"} & {tag for tag, _ in elements}
    for _tag, attrs in elements:
        for name, value in attrs:
            assert not name.startswith("on") and name != "style"
            if name in ("href", "src"):
                assert (value or "").split(":", 1)[0].lower() in {"http", "https", "mailto", ""} or ":" not in value


def _elements(html):
    """Every element of ``html`` as (tag, attributes), parsed the way a browser would read the tags."""
    found = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Collector().feed(html)
    return found


def test_raw_html_is_shown_as_text():
    assert "&lt;b&gt;hi&lt;/b&gt;" in markdown_html("<b>hi</b>")


def test_dom_ids_are_css_safe_and_distinct():
    a, b = dom_id("a:b.c"), dom_id("a:b.d")
    assert a != b and a.replace("-", "").isalnum()


def test_the_partial_map_lists_every_partial_of_the_templates():
    """rendering.PARTIALS is the one name → template map: each entry loads, and every partial the
    chat and sidebar templates define is in it."""
    defined = set()
    for template in ("sessions_app/chat.html", "sessions_app/sidebar.html"):
        text = (Path(settings.BASE_DIR) / "templates" / template).read_text()
        defined |= {f"{template}#{name}" for name in re.findall(r"{%\s*partialdef\s+([\w-]+)", text)}
    assert set(PARTIALS.values()) == defined
    assert all(template.endswith("#" + name) for name, template in PARTIALS.items())
    for template in PARTIALS.values():
        get_template(template)
