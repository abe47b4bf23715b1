"""The one table from engine and reply refusals to what the chat UI answers (web_errors)."""

import pytest
from django import forms
from django.core.exceptions import ImproperlyConfigured
from django.http import Http404

from sessions_app import engine, replies
from sessions_app.web_errors import EXPIRED, EXPIRED_STATE, ID_TAKEN, Refusal, engine_errors


class KeyValueForm(forms.Form):
    key = forms.CharField()
    value = forms.CharField()


class KeyOnlyForm(forms.Form):
    key = forms.CharField()


def bound(form_class=KeyValueForm):
    form = form_class({"key": "k", "value": "v"})
    assert form.is_valid()
    return form


def run(exc, form=None, **kwargs):
    with engine_errors(form, **kwargs) as refusal:
        raise exc
    return refusal


def test_nothing_raised_is_no_refusal():
    with engine_errors(bound()) as refusal:
        pass
    assert not refusal and refusal.status == 200 and refusal.message == ""


@pytest.mark.parametrize("form", [None, "form"])
def test_a_missing_session_is_a_404_everywhere(form):
    with pytest.raises(Http404):
        run(engine.SessionNotFound("x"), bound() if form else None, notice=True)


def test_an_engine_error_goes_on_its_field_or_above_the_form():
    form = bound()
    refusal = run(engine.SessionValidationError("key must not be empty", field="key"), form)
    assert refusal.status == 422 and form.errors == {"key": ["key must not be empty"]}
    form = bound()
    run(engine.SessionValidationError("too big", field="max_tokens"), form)
    assert form.non_field_errors() == ["too big"]


def test_a_fallback_field_takes_errors_of_fields_the_form_lacks():
    form = bound()
    run(engine.StorageError("disk full"), form, fallback_field="value")
    assert form.errors == {"value": ["Storage error: disk full"]}
    form = bound(KeyOnlyForm)
    run(engine.StorageError("disk full"), form, fallback_field="value")
    assert form.non_field_errors() == ["Storage error: disk full"]


def test_expired_is_a_message_above_the_form():
    form = bound()
    refusal = run(engine.SessionExpired("x"), form, expired=EXPIRED_STATE, fallback_field="value")
    assert refusal.status == 422 and form.non_field_errors() == [EXPIRED_STATE]


def test_a_taken_id_goes_on_the_id_field():
    class NewForm(forms.Form):
        session_id = forms.CharField()

    form = NewForm({"session_id": "a"})
    assert form.is_valid()
    run(engine.SessionAlreadyExists("a"), form)
    assert form.errors == {"session_id": [ID_TAKEN]}


def test_notices_without_a_form():
    refusal = run(replies.ReplyInProgress("x", 1), notice=True, status=409)
    assert refusal.status == 409 and refusal.message
    assert run(replies.NothingToReply("nothing"), notice=True).status == 409
    assert run(engine.SessionExpired("x"), notice=True, status=409) == Refusal(EXPIRED, 409)
    refusal = run(ImproperlyConfigured("CONVO_LLM_MODEL is empty"), notice=True)
    assert refusal.status == 503 and refusal.message == "The assistant is not configured: CONVO_LLM_MODEL is empty"


def test_errors_without_a_form_or_notice_propagate():
    with pytest.raises(engine.StorageError):
        run(engine.StorageError("disk full"), notice=True)  # only a form shows an input or storage error
    with pytest.raises(engine.SessionExpired):
        run(engine.SessionExpired("x"))
    with pytest.raises(KeyError):
        run(KeyError("not a refusal"), bound())
