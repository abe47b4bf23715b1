"""Django settings for Convo.

Everything a deployment changes comes from the environment; with nothing set, Convo runs on an
SQLite file in the project and the in-memory channel layer, so a newcomer needs nothing else.
"""

import contextlib
import datetime as dt
import os
import re
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int | None) -> int | None:
    """Read an integer setting; "none"/"never" stands for no value (e.g. a timeout that never fires)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    if value.strip().lower() in {"none", "never", "null"}:
        return None
    return int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return float(value)
    except ValueError:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{name} must be a number (got {value!r})") from None


def secret_key_from_file(path: Path) -> str:
    """Return the key kept in ``path``, creating it (random, mode 0600) on first use.

    The file appears complete or not at all: the key is written to a private temporary file that is
    then hard-linked into place, which fails if another process got there first (then its key wins).
    """
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        from django.core.management.utils import get_random_secret_key

        temporary = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(get_random_secret_key() + "\n")
            with contextlib.suppress(FileExistsError):  # another process was first: its key wins
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        key = path.read_text().strip()
    if not key:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"the secret key file {path} is empty: delete it or set DJANGO_SECRET_KEY")
    return key


# Debug is opt-in (DJANGO_DEBUG=true, or `make dev`): its error pages show settings and local variables.
DEBUG = env_bool("DJANGO_DEBUG", False)
# Without DJANGO_SECRET_KEY, a random key generated on first start and kept in a git-ignored file.
CONVO_SECRET_KEY_FILE = Path(os.environ.get("CONVO_SECRET_KEY_FILE", "").strip() or BASE_DIR / ".secret_key")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "") or secret_key_from_file(CONVO_SECRET_KEY_FILE)

ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

# HTTPS deployments (CONVO_HTTPS=true): cookies only over HTTPS, HTTP redirected to HTTPS, and HSTS
# for CONVO_HSTS_SECONDS (0 switches HSTS off, e.g. while trying HTTPS out).
CONVO_HTTPS = env_bool("CONVO_HTTPS", False)
CONVO_HSTS_SECONDS = env_int("CONVO_HSTS_SECONDS", 31536000) or 0
if CONVO_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = CONVO_HSTS_SECONDS
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CONVO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("CONVO_HSTS_PRELOAD", True)
# Behind a TLS-terminating proxy: the request header that proxy sets to "https" (e.g.
# HTTP_X_FORWARDED_PROTO for X-Forwarded-Proto). Only set it when the proxy always sets or strips it.
CONVO_PROXY_SSL_HEADER = os.environ.get("CONVO_PROXY_SSL_HEADER", "").strip()
if CONVO_PROXY_SSL_HEADER:
    SECURE_PROXY_SSL_HEADER = (CONVO_PROXY_SSL_HEADER, "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# Content-Security-Policy (django-csp) on every response: scripts, styles and everything else from
# Convo itself only, nothing inline. sessions_app.middleware adds the page's own websocket origin to
# connect-src, and relaxes style-src for the Django admin only (its templates use inline styles).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    # In INSTALLED_APPS so the API docs page is served from django-ninja's bundled static files (no CDN).
    "ninja",
    "csp",
    "axes",
    "sessions_app",
]

MIDDLEWARE = [
    # First: a NUL in the URL or a cookie is refused before anything can reach the database with it.
    "sessions_app.request_guard.NulRequestMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files, served on the event loop (ServeStatic is ASGI-native: no thread waits on the loop),
    # with their own precompressed variants: their responses never reach the GZip middleware below.
    "servestatic.middleware.ServeStaticMiddleware",
    # Compresses HTML and JSON (a chat page is ~70 KB of HTML). Django's version pads each response
    # with random bytes ("Heal The Breach") against BREACH, and CSRF tokens are masked per response.
    "django.middleware.gzip.GZipMiddleware",
    # django-csp plus the per-request parts: the page's websocket origin, inline styles for the admin only.
    "sessions_app.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "sessions_app.middleware.PrivateCacheMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "sessions_app.rendering.render_budget_middleware",  # bounds a request's Markdown rendering time
    # Last, as django-axes requires: turns a locked-out login into the lock-out page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "convo_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "convo_site.wsgi.application"
ASGI_APPLICATION = "convo_site.asgi.application"

# Database: DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/convo), else an SQLite file.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    # CONN_MAX_AGE stays 0: under ASGI each sync_to_async thread would keep its own connection.
    # On PostgreSQL connections are kept across requests by psycopg's pool instead (Django's
    # OPTIONS["pool"]): "closing" a connection at the end of a request returns it to the pool. Health
    # checks on: a pooled connection is tested before it is handed out, so a cut one is replaced
    # instead of failing the request. Long-lived threads (replies, their watcher, the periodic sweep)
    # reconnect themselves (sessions_app.replies.dbconn).
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Spelled out so that a forked test server (daphne) finds the same test database.
        DATABASES["default"]["TEST"] = {"NAME": "test_" + DATABASES["default"]["NAME"]}
        # CONVO_DB_POOL_MAX_SIZE connections per process at most (daphne's request threads, reply
        # threads and the watcher all draw from it; 0 switches the pool off, e.g. behind PgBouncer in
        # transaction mode, which pools on its side). A request waits up to CONVO_DB_POOL_TIMEOUT
        # seconds for a free connection, then fails with the API's 503 storage_error.
        CONVO_DB_POOL_MAX_SIZE = env_int("CONVO_DB_POOL_MAX_SIZE", 20) or 0
        if CONVO_DB_POOL_MAX_SIZE:
            DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
                "min_size": min(env_int("CONVO_DB_POOL_MIN_SIZE", 2) or 0, CONVO_DB_POOL_MAX_SIZE),
                "max_size": CONVO_DB_POOL_MAX_SIZE,
                "timeout": env_float("CONVO_DB_POOL_TIMEOUT", 10.0),
                # Connections are recycled after an hour so that server-side settings and memory stay fresh.
                "max_lifetime": 3600.0,
            }
else:
    DATABASES = {
        "default": {
            "ENGINE": "convo_site.sqlite_backend",
            "NAME": os.environ.get("CONVO_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            "OPTIONS": {
                # Take the write lock when a transaction starts: concurrent writers then queue
                # instead of failing with "database is locked" on lock upgrade.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": os.environ.get("CONVO_SQLITE_TEST_PATH") or None},
        }
    }

# Login throttle (django-axes): after CONVO_LOGIN_FAILURE_LIMIT wrong passwords for one username, or
# from one address, further logins for it are refused (429 and a lock-out page) for
# CONVO_LOGIN_COOLOFF_MINUTES; a successful login resets the count. AxesStandaloneBackend only checks
# the lock; ModelBackend authenticates.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
CONVO_LOGIN_FAILURE_LIMIT = env_int("CONVO_LOGIN_FAILURE_LIMIT", 5)
CONVO_LOGIN_COOLOFF_MINUTES = env_int("CONVO_LOGIN_COOLOFF_MINUTES", 15)
AXES_ENABLED = env_bool("CONVO_LOGIN_THROTTLE", True)
AXES_FAILURE_LIMIT = CONVO_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = dt.timedelta(minutes=CONVO_LOGIN_COOLOFF_MINUTES or 15)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_LOCKOUT_CALLABLE = "sessions_app.middleware.login_locked_out"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False
# The client address for the per-address count: REMOTE_ADDR (what daphne saw, or, with daphne's
# --proxy-headers, the proxy's X-Forwarded-For), never a header a client could set freely.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# collectstatic (run by `make run`) stores each file under a name with a hash of its content, plus
# compressed copies; pages link the hashed names, which ServeStatic serves as cacheable forever
# ("immutable"). In debug mode the plain names are linked and found in the source directories.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "convo_site.static_storage.StaticFilesStorage"},
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Log level of the sessions_app logger.
CONVO_LOG_LEVEL = os.environ.get("CONVO_LOG_LEVEL", "INFO")
# One handler, on the root logger: every record is printed once. The named loggers only set levels
# and propagate (a handler of their own would print each record a second time through the root's,
# e.g. the one daphne installs with logging.basicConfig, which this configuration replaces).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "sessions_app": {"level": CONVO_LOG_LEVEL},
        "daphne": {"level": "INFO"},  # "Listening on ..." and friends
        # Django's own console handler (debug only) would print its records twice as well.
        "django": {"handlers": [], "level": "INFO"},
        # Server errors (the friendly 500 page) leave their traceback in the server's log.
        "django.request": {"level": "ERROR"},
    },
}

# Convo: project-wide defaults of a session's config (the spec's SessionConfig::default()).
CONVO_MAX_MESSAGES = env_int("CONVO_MAX_MESSAGES", 100)
CONVO_MAX_TOKENS = env_int("CONVO_MAX_TOKENS", 8192)
CONVO_TIMEOUT_SECONDS = env_int("CONVO_TIMEOUT_SECONDS", 3600)  # "none" = sessions never expire
CONVO_PERSIST_SYSTEM_PROMPT = env_bool("CONVO_PERSIST_SYSTEM_PROMPT", True)

# Convo UI (issue 3).
# Sign-up page on/off: switch off for closed deployments (accounts are then made by an admin).
CONVO_SIGNUP_ENABLED = env_bool("CONVO_SIGNUP_ENABLED", True)
# How many of the newest messages the chat page renders (older ones load on demand, in pages this size).
CONVO_CHAT_PAGE_SIZE = env_int("CONVO_CHAT_PAGE_SIZE", 50)
# Default timeout of conversations created in the chat UI (issue 11): 30 days; "none" = never expire.
# The engine's and the API's default stays CONVO_TIMEOUT_SECONDS (the spec's 3600 s).
CONVO_CHAT_TIMEOUT_SECONDS = env_int("CONVO_CHAT_TIMEOUT_SECONDS", 30 * 24 * 3600)
# Titles: "first" (the default) takes the first user message; "model" (with the openai responder)
# then asks the model for a short title after the first reply.
CONVO_AUTO_TITLE = os.environ.get("CONVO_AUTO_TITLE", "").strip().lower() or "first"
if CONVO_AUTO_TITLE not in {"first", "model"}:
    raise RuntimeError('CONVO_AUTO_TITLE must be "first" or "model"')
# How many conversations the sidebar shows at first (the rest load as it scrolls).
CONVO_SIDEBAR_PAGE_SIZE = env_int("CONVO_SIDEBAR_PAGE_SIZE", 30)
# Rendered messages and turns are cached per process (their cache keys digest everything they show).
# The "library" cache holds each user's sidebar version and rendered sidebar: shared through Redis when
# REDIS_URL is set (every process sees a change), per process otherwise (one process, as the in-memory
# channel layer).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "template_fragments": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "convo-fragments",
        "OPTIONS": {"MAX_ENTRIES": 20000},
    },
    "library": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ.get("REDIS_URL", ""),
            # A Redis that stopped answering fails a bump or a read at once (the page renders without
            # the cache) rather than holding a request for the operating system's TCP timeout.
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
        if os.environ.get("REDIS_URL", "")
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "convo-library"}
    ),
}

# Channel layer: Redis when REDIS_URL is set (several daphne processes share it), else in-memory.
# CONVO_REDIS_LAYER picks the Redis flavour: "pubsub" (the default: RedisPubSubChannelLayer, where a
# group send is one Redis message per process, which each process fans out to its own sockets; W4
# measured p99 75 ms against 109 ms) or "core" (RedisChannelLayer: one Redis list entry per socket).
# Either may drop a notification; pages lose nothing, as the next one or a reconnect catches up.
REDIS_URL = os.environ.get("REDIS_URL", "")
CONVO_REDIS_LAYER = os.environ.get("CONVO_REDIS_LAYER", "pubsub").strip().lower()
if CONVO_REDIS_LAYER not in {"pubsub", "core"}:
    raise RuntimeError('CONVO_REDIS_LAYER must be "pubsub" or "core"')
# CONVO_CHANNEL_PREFIX names this deployment's channels and groups in Redis: deployments sharing one
# redis-server must differ in it (the pub/sub layer ignores the /db of REDIS_URL, so without it one
# deployment's pages would hear another's events). Default: "convo." and the database's name.
CONVO_CHANNEL_PREFIX = os.environ.get("CONVO_CHANNEL_PREFIX", "").strip() or "convo." + re.sub(
    r"[^A-Za-z0-9_.-]", "_", Path(str(DATABASES["default"]["NAME"])).stem or "default"
)
if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,80}", CONVO_CHANNEL_PREFIX):
    raise RuntimeError("CONVO_CHANNEL_PREFIX may hold letters, digits and _ . : - (at most 80)")
if not REDIS_URL:
    _layer = {"BACKEND": "channels.layers.InMemoryChannelLayer"}
elif CONVO_REDIS_LAYER == "pubsub":
    _layer = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": CONVO_CHANNEL_PREFIX},
    }
else:
    _layer = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000, "expiry": 30, "prefix": CONVO_CHANNEL_PREFIX},
    }
CHANNEL_LAYERS = {"default": _layer}

# Input limits, the same for the UI, the API, the admin and the websocket (engine/values.py checks them;
# over a size limit the API answers 413, the UI shows the error on the form, and nothing is stored).
# Longest message content, system prompt or variable value, in characters.
CONVO_MAX_CONTENT_CHARS = env_int("CONVO_MAX_CONTENT_CHARS", 32000)
# Longest name: a message's name or tool_call_id, a variable, data or metadata key, in characters.
CONVO_MAX_NAME_CHARS = env_int("CONVO_MAX_NAME_CHARS", 256)
# Largest metadata of a session, a message or a turn, in bytes as compact JSON.
CONVO_MAX_METADATA_BYTES = env_int("CONVO_MAX_METADATA_BYTES", 64 * 1024)
# Largest state of a session (variables and data together), in bytes as compact JSON.
CONVO_MAX_STATE_BYTES = env_int("CONVO_MAX_STATE_BYTES", 256 * 1024)
# Deepest nesting of lists and objects in a data value (and a websocket frame).
CONVO_MAX_JSON_DEPTH = env_int("CONVO_MAX_JSON_DEPTH", 64)
# Largest websocket frame a page may send, in characters (the socket is closed with 1009 beyond).
CONVO_WS_MAX_FRAME_BYTES = env_int("CONVO_WS_MAX_FRAME_BYTES", 64 * 1024)
# The JSON API (/api/v1): largest request body in bytes (413 beyond), and how long an append's
# Idempotency-Key is remembered.
CONVO_API_MAX_BODY_BYTES = env_int("CONVO_API_MAX_BODY_BYTES", 1024 * 1024)
CONVO_API_IDEMPOTENCY_TTL_SECONDS = env_int("CONVO_API_IDEMPOTENCY_TTL_SECONDS", 24 * 3600)
# Import (issue 11): the largest file the upload page and POST /api/v1/import accept, in bytes (413 or a
# form error beyond; manage.py import_sessions has no limit). The file is read whole, so this bounds memory.
CONVO_IMPORT_MAX_BYTES = env_int("CONVO_IMPORT_MAX_BYTES", 50 * 1024 * 1024)

# Convo: what one user can make the server do (issue 9). Counters (sign-up, API) live in Redis when
# REDIS_URL is set, shared by every process; else in this process's cache (sessions_app.throttle).
# Rendered Markdown larger than this (bytes of HTML) is shown as plain preformatted text instead.
CONVO_MARKDOWN_MAX_HTML_BYTES = env_int("CONVO_MARKDOWN_MAX_HTML_BYTES", 128 * 1024)
# Milliseconds of Markdown rendering one request may spend; messages after that show as plain text.
CONVO_MARKDOWN_BUDGET_MS = env_int("CONVO_MARKDOWN_BUDGET_MS", 300)
# Websocket frames a page may send per second (a token bucket with this burst); past it: closed, 1008.
CONVO_WS_FRAMES_PER_SECOND = env_float("CONVO_WS_FRAMES_PER_SECOND", 5.0)
CONVO_WS_FRAME_BURST = env_int("CONVO_WS_FRAME_BURST", 20)
# Open chat pages check in every CONVO_RESYNC_SECONDS with the newest sequence number they show; the
# server answers with whatever they miss (a notification lost to a Redis outage), so a page is never
# further behind than this, even while the channel layer is down.
CONVO_RESYNC_SECONDS = env_float("CONVO_RESYNC_SECONDS", 15.0)
if CONVO_RESYNC_SECONDS <= 0:
    raise RuntimeError("CONVO_RESYNC_SECONDS must be a positive number of seconds")
# Sign-up attempts per client address per hour ("none": unlimited); past it: 429.
CONVO_SIGNUP_PER_HOUR = env_int("CONVO_SIGNUP_PER_HOUR", 10)
# API requests per minute per API key (browser sessions: per user; "none": unlimited); past it: 429.
CONVO_API_RATE_LIMIT = env_int("CONVO_API_RATE_LIMIT", 600)
# Assistant replies one user may have running at once, over all their conversations; past it: 409.
CONVO_MAX_CONCURRENT_REPLIES = env_int("CONVO_MAX_CONCURRENT_REPLIES", 3)


# Shutdown (SIGTERM, convo_site/shutdown.py): seconds a serving process keeps the requests and replies
# in flight going while it refuses new ones (503) before it stops; it exits at most 3.5 s later.
CONVO_SHUTDOWN_GRACE_SECONDS = env_float("CONVO_SHUTDOWN_GRACE_SECONDS", 5.0)


# Convo: assistant replies (sessions_app.replies). CONVO_RESPONDER: "builtin" (offline, no model) or
# "openai" (any OpenAI-compatible Chat Completions server with streaming: OpenAI, vLLM, llama.cpp,
# Ollama, LM Studio). The API key is only ever sent in the Authorization header: it is never
# rendered, logged or stored (and Django's debug page masks settings named like it).
CONVO_RESPONDER = os.environ.get("CONVO_RESPONDER", "").strip().lower() or "builtin"
CONVO_LLM_BASE_URL = os.environ.get("CONVO_LLM_BASE_URL", "").strip() or "https://api.openai.com/v1"
CONVO_LLM_API_KEY = os.environ.get("CONVO_LLM_API_KEY", "").strip()
CONVO_LLM_MODEL = os.environ.get("CONVO_LLM_MODEL", "").strip()
CONVO_LLM_TIMEOUT = env_float("CONVO_LLM_TIMEOUT", 60.0)  # seconds without a byte from the server
CONVO_REPLY_MAX_TOOL_ROUNDS = env_int("CONVO_REPLY_MAX_TOOL_ROUNDS", 5)
CONVO_BUILTIN_WORD_DELAY = env_float("CONVO_BUILTIN_WORD_DELAY", 0.04)  # seconds between streamed words
CONVO_REPLY_HEARTBEAT_SECONDS = env_float("CONVO_REPLY_HEARTBEAT_SECONDS", 2.0)
# A running reply whose process has not reported for this long is marked interrupted (by the periodic
# sweep of any serving process). Several heartbeats (7 by default), so a busy process or a short
# database blip does not lose its replies; a reply thread stops sending once half of it has passed
# without a confirmed write (it cannot know whether it was marked meanwhile).
CONVO_REPLY_STALE_SECONDS = env_float("CONVO_REPLY_STALE_SECONDS", 15.0)
# How often every serving process sweeps: marks stale replies (above), resumes interrupted ones, and
# purges expired Idempotency-Keys (at most once a minute). "none": no periodic sweep in this process.
_sweep = os.environ.get("CONVO_REPLY_SWEEP_SECONDS", "").strip().lower()
CONVO_REPLY_SWEEP_SECONDS = None if _sweep in {"none", "never", "off"} else env_float("CONVO_REPLY_SWEEP_SECONDS", 2.0)
# A reply interrupted by a process death or a shutdown is restarted once, automatically, by another
# live process's sweep (its partial text stays in the interrupted reply's record).
CONVO_REPLY_AUTO_RETRY = env_bool("CONVO_REPLY_AUTO_RETRY", True)
# Internal pacing of a running reply: REPLY delta events at most this often, the partial text saved to
# its row at most this often, and how often a reply's watcher polls for Stop (all in seconds).
CONVO_REPLY_EVENT_INTERVAL = env_float("CONVO_REPLY_EVENT_INTERVAL", 0.05)
CONVO_REPLY_SAVE_INTERVAL = env_float("CONVO_REPLY_SAVE_INTERVAL", 1.0)
CONVO_REPLY_POLL_SECONDS = env_float("CONVO_REPLY_POLL_SECONDS", 0.2)
