"""Template filters of the chat UI."""

import json

from django import template

from sessions_app.rendering import markdown_html

register = template.Library()


@register.filter
def markdown(text: str):
    """Render Markdown to sanitized HTML (markdown-it-py, then nh3)."""
    return markdown_html(text or "")


@register.filter
def pretty_json(value) -> str:
    """Indented JSON text (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
