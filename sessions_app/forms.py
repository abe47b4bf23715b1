"""Forms of the chat UI: they parse and check input; the engine decides and stores.

Text, names and JSON go through the engine's own input checks (``engine.check_content``,
``check_name``, ``parse_json``), so a form refuses exactly what the API refuses, inline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.core.validators import MaxLengthValidator

from . import engine
from .models import ConversationSession, Role


def _engine_checked(check: Callable[..., Any], label: str, value: Any) -> Any:
    """``check(label, value)``, its refusal as this field's error."""
    try:
        return check(label, value)
    except engine.SessionError as exc:
        raise forms.ValidationError(str(exc)) from None


def _limit_widget(field: forms.Field, limit: int) -> None:
    field.widget.attrs["maxlength"] = str(limit)


class SystemPromptField(forms.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, widget=forms.Textarea(attrs={"rows": 3}), label="System prompt", **kwargs)

    def clean(self, value: Any) -> str:
        return _engine_checked(engine.check_content, "The system prompt", super().clean(value))


class NameField(forms.CharField):
    """A name or key: at most CONVO_MAX_NAME_CHARS characters (the engine's check)."""

    def __init__(self, *, what: str = "The name", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.what = what

    def clean(self, value: Any) -> str:
        return _engine_checked(engine.check_name, self.what, super().clean(value))


class LimitedForm(forms.Form):
    """A form whose text fields tell the browser their limits (read when the form is made, as the
    settings may change)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if isinstance(field, NameField):
                _limit_widget(field, settings.CONVO_MAX_NAME_CHARS)
            elif isinstance(field, SystemPromptField):
                _limit_widget(field, settings.CONVO_MAX_CONTENT_CHARS)


class _UsernameLimit:
    """Django's login forms set the username's max_length without its validator, so a longer name
    reached authenticate() and django-axes' 255-character column (a 500 on PostgreSQL)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["username"]
        field.validators.append(MaxLengthValidator(field.max_length))


class LoginForm(_UsernameLimit, AuthenticationForm):
    pass


class AdminLoginForm(_UsernameLimit, AdminAuthenticationForm):
    pass


class SignUpForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        fields = ("username",)


class ConfigFields(LimitedForm):
    """The session config fields (the spec's SessionConfig), shared by the create and edit forms."""

    max_messages = forms.IntegerField(min_value=1, max_value=engine.MAX_INT, label="Max messages")
    max_tokens = forms.IntegerField(min_value=1, max_value=engine.MAX_INT, label="Max tokens")
    timeout_seconds = forms.IntegerField(
        min_value=0,
        max_value=engine.MAX_INT,
        required=False,
        label="Timeout (seconds)",
        help_text="Inactivity before the conversation expires. Empty: never.",
    )
    persist_system_prompt = forms.BooleanField(required=False, label="Keep system prompt")

    def config(self) -> engine.SessionConfig:
        data = self.cleaned_data
        return engine.SessionConfig(
            max_messages=data["max_messages"],
            max_tokens=data["max_tokens"],
            timeout_seconds=data["timeout_seconds"],
            persist_system_prompt=data["persist_system_prompt"],
        )

    @staticmethod
    def initial_from(config: engine.SessionConfig) -> dict[str, Any]:
        return {
            "max_messages": config.max_messages,
            "max_tokens": config.max_tokens,
            "timeout_seconds": config.timeout_seconds,
            "persist_system_prompt": config.persist_system_prompt,
        }


class NewSessionForm(ConfigFields):
    session_id = forms.CharField(
        required=False,
        max_length=128,
        label="Id (optional)",
        help_text="Letters, digits, '-', '_', '.' and ':'. Empty: a random id.",
    )
    system_prompt = SystemPromptField()

    field_order = [
        "session_id",
        "system_prompt",
        "max_messages",
        "max_tokens",
        "timeout_seconds",
        "persist_system_prompt",
    ]

    def clean_session_id(self) -> str | None:
        value = self.cleaned_data["session_id"].strip()
        if not value:
            return None
        try:
            return engine.validate_session_id(value)
        except engine.SessionValidationError as exc:
            raise forms.ValidationError(str(exc)) from None


class EditSessionForm(ConfigFields):
    system_prompt = SystemPromptField()

    field_order = ["system_prompt", "max_messages", "max_tokens", "timeout_seconds", "persist_system_prompt"]

    @classmethod
    def for_session(cls, session: ConversationSession) -> EditSessionForm:
        """The form showing the session's stored prompt and config (the page, a save, a live push)."""
        initial = cls.initial_from(engine.SessionConfig.of(session))
        initial["system_prompt"] = session.system_prompt or ""
        return cls(initial=initial)


ROLE_CHOICES = [(Role.USER, "User"), (Role.ASSISTANT, "Assistant"), (Role.TOOL, "Tool"), (Role.SYSTEM, "System")]


class MessageForm(LimitedForm):
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Role.USER)
    content = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Write a message (Enter sends, Shift+Enter: new line)"}),
        error_messages={"required": "Write something first: the message is empty."},
    )
    name = NameField(required=False, label="Name (optional)")
    tool_call_id = NameField(what="The tool call id", required=False, label="Tool call id")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _limit_widget(self.fields["content"], settings.CONVO_MAX_CONTENT_CHARS)

    def clean_content(self) -> str:
        content = self.cleaned_data["content"]
        if not content.strip():
            raise forms.ValidationError("Write something first: the message is empty.")
        return _engine_checked(engine.check_content, "The message", content)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("role") == Role.TOOL and not (data.get("tool_call_id") or "").strip():
            self.add_error("tool_call_id", "A tool message needs the tool_call_id of the call it answers.")
        return data


class VariableForm(LimitedForm):
    key = NameField(what="The key", strip=True)
    value = forms.CharField(required=False, strip=False, widget=forms.TextInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _limit_widget(self.fields["value"], settings.CONVO_MAX_CONTENT_CHARS)

    def clean_value(self) -> str:
        return _engine_checked(engine.check_content, "The value", self.cleaned_data["value"])


class DataForm(LimitedForm):
    key = NameField(what="The key", strip=True)
    value = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        error_messages={"required": 'Enter a JSON value (for example 42, "text", [1, 2] or {"a": 1}).'},
    )

    def clean_value(self) -> Any:
        """The JSON value, parsed by the engine: depth and size limited, huge integers refused."""
        return _engine_checked(engine.parse_json, "The value", self.cleaned_data["value"])


class KeyForm(LimitedForm):
    key = NameField(what="The key", strip=False)


class BudgetForm(forms.Form):
    budget = forms.IntegerField(min_value=1, max_value=engine.MAX_INT, required=False, label="Budget (tokens)")


class ImportForm(forms.Form):
    file = forms.FileField(
        label="File",
        help_text="A Convo export (.json, .jsonl or the .zip of “Export all”), ChatGPT’s conversations.json, "
        "or an Open WebUI chat export (.json).",
        error_messages={"required": "Choose a file to import."},
        widget=forms.ClearableFileInput(attrs={"accept": ".json,.jsonl,.zip,application/json,application/zip"}),
    )

    @classmethod
    def refused(cls, message: str) -> ImportForm:
        """A form showing ``message`` on the file, for an upload refused before it was read."""
        form = cls(data={}, files={})
        form.full_clean()
        form.errors.clear()
        form.add_error("file", message)
        return form
