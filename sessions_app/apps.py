from django.apps import AppConfig
from django.core import checks


class SessionsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "sessions_app"
    verbose_name = "Conversation sessions"

    def ready(self) -> None:
        from django.core.signals import request_started

        from .replies.workers import recover_on_startup

        # A process's first request marks the replies of dead processes interrupted (no database
        # access at import time: ready() also runs for migrate and friends).
        request_started.connect(recover_on_startup, dispatch_uid="convo-replies-recover")
        checks.register(check_responder_settings)

        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_init, post_migrate, post_save

        from . import logins
        from .engine import sessions_deleted
        from .replies.workers import cancel_sessions

        # Open pages follow the account (logout, new password, deactivation: see logins.py).
        user_model = get_user_model()
        user_logged_out.connect(logins.logged_out, dispatch_uid="convo-logins-logout")
        post_init.connect(logins.remember, sender=user_model, dispatch_uid="convo-logins-remember")
        post_save.connect(logins.saved, sender=user_model, dispatch_uid="convo-logins-saved")
        # Planner statistics right after a migration (see engine/stats.py).
        from .engine.stats import analyze_after_migrate

        post_migrate.connect(analyze_after_migrate, sender=self, dispatch_uid="convo-analyze-after-migrate")
        # The PostgreSQL pool recovers from a server restart at the first dead connection it meets.
        from django.db.backends.signals import connection_created

        from convo_site.db_pool import sweep_on_failed_checks

        connection_created.connect(sweep_on_failed_checks, dispatch_uid="convo-pool-sweep")
        # A deleted session's running reply stops at once (its row is gone with it).
        sessions_deleted.connect(cancel_sessions, dispatch_uid="convo-replies-cancel-deleted")


def check_responder_settings(app_configs=None, **kwargs):
    """Report a bad CONVO_RESPONDER / CONVO_LLM_* configuration at start-up, not at the first reply."""
    from django.core.exceptions import ImproperlyConfigured

    from .replies.responders import get_responder

    try:
        get_responder()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="sessions_app.E001")]
    return []
