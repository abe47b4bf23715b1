"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "convo_site.settings")

# Set up Django (apps, settings) before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from convo_site import shutdown  # noqa: E402
from convo_site.routing import websocket_urlpatterns  # noqa: E402
from sessions_app import sweeper  # noqa: E402
from sessions_app.middleware import WebsocketOriginValidator  # noqa: E402
from sessions_app.request_guard import NulScopeGuard  # noqa: E402

router = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The Origin must be the site itself (scheme, host and port) or a DJANGO_CSRF_TRUSTED_ORIGINS entry;
        # a NUL in the path or a cookie is refused before the session middleware queries with it.
        "websocket": WebsocketOriginValidator(NulScopeGuard(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)

# SIGTERM drains (see convo_site/shutdown.py): in-flight requests finish or new ones get 503, sockets
# close with 1012, running replies are handed over, and the process exits within the grace period.
application = shutdown.drain.wrap(router)
shutdown.install_for_daphne()
# Every serving process sweeps periodically: dead processes' replies are marked and resumed, expired
# Idempotency-Keys purged, without waiting for a request (CONVO_REPLY_SWEEP_SECONDS).
sweeper.start()
