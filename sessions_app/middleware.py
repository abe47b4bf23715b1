"""Safe-by-default HTTP and websocket middleware: the Content-Security-Policy's per-request parts,
private caching of authenticated and API responses, the login lock-out page, and a websocket origin
check on scheme, host and port."""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.http.request import split_domain_port, validate_host
from django.shortcuts import render
from django.utils.cache import patch_cache_control
from django.utils.deprecation import MiddlewareMixin

API_PREFIX = "/api/"
DEFAULT_PORTS = {"http": 80, "https": 443}


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware, plus the page's own websocket origin in connect-src (older browsers
    do not count ws: as 'self') and inline styles for the Django admin, whose templates use them."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        update = dict(parts.update or {})
        try:
            host = request.get_host()
        except DisallowedHost:
            host = None
        if host:
            scheme = "wss" if request.is_secure() else "ws"
            update["connect-src"] = [*update.get("connect-src", []), f"{scheme}://{host}"]
        match = getattr(request, "resolver_match", None)
        if match is not None and "admin" in match.namespaces:
            update["style-src"] = [*update.get("style-src", []), "'unsafe-inline'"]
        parts.update = update
        return parts


class PrivateCacheMiddleware(MiddlewareMixin):
    """``Cache-Control: private, no-store`` on every API response and on every response to a signed-in
    user: what they show is theirs alone, and must not stay in a shared or on-disk cache.

    Whatever else a view put in Cache-Control stays; static files never get here (ServeStatic answers
    them first)."""

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        user = getattr(request, "user", None)
        if request.path_info.startswith(API_PREFIX) or (user is not None and user.is_authenticated):
            patch_cache_control(response, private=True, no_store=True)
        return response


def login_locked_out(request: HttpRequest, *args) -> HttpResponse:
    """The page django-axes answers a locked-out login with (AXES_LOCKOUT_CALLABLE): 429 and how long."""
    return render(
        request,
        settings.AXES_LOCKOUT_TEMPLATE,
        {"failure_limit": settings.AXES_FAILURE_LIMIT, "cooloff_minutes": settings.CONVO_LOGIN_COOLOFF_MINUTES},
        status=settings.AXES_HTTP_RESPONSE_CODE,
    )


def _origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin such as ``https://example.com:8443``, else None."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _header(scope: dict, name: bytes) -> str | None:
    """The one value of a request header; None when it is missing, repeated or not Latin-1."""
    values = [value for key, value in scope.get("headers", []) if key.lower() == name]
    if len(values) != 1:
        return None
    try:
        return values[0].decode("latin-1")
    except UnicodeDecodeError:
        return None


def _own_origin(scope: dict) -> tuple[str, str, int] | None:
    """The origin the handshake was made to: its scheme (ws → http, wss → https, or what the TLS proxy
    says under SECURE_PROXY_SSL_HEADER) with its Host, when that host is in ALLOWED_HOSTS."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:  # as Django's HttpRequest.get_host()
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return None
    scheme = "https" if scope.get("scheme", "ws") in ("wss", "https") else "http"
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, secure_value = proxy_header
        header_name = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        forwarded = _header(scope, header_name)
        if forwarded is not None:
            scheme = "https" if forwarded.split(",", 1)[0].strip() == secure_value else "http"
    return _origin(f"{scheme}://{host}")


def websocket_origin_allowed(scope: dict) -> bool:
    """Whether a websocket handshake's Origin is the site itself (same scheme, host and port, the host
    in ALLOWED_HOSTS) or exactly one of CSRF_TRUSTED_ORIGINS. A missing or opaque Origin is refused."""
    origin_header = _header(scope, b"origin")
    origin = _origin(origin_header) if origin_header else None
    if origin is None:
        return False
    if origin in {_origin(trusted) for trusted in settings.CSRF_TRUSTED_ORIGINS}:
        return True
    return origin == _own_origin(scope)


class WebsocketOriginValidator:
    """ASGI middleware that rejects a websocket handshake whose Origin is not allowed (see
    websocket_origin_allowed); Channels' AllowedHostsOriginValidator compares host names only."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not websocket_origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
