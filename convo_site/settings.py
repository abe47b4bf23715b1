"""Django settings for Convo.

Everything a deployment changes comes from the environment; with nothing set, Convo runs on an
SQLite file in the project and the in-memory channel layer, so a newcomer needs nothing else.
"""

import os
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


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
    SECRET_KEY = "convo-insecure-development-key-change-me"  # noqa: S105 - development only

ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    # In INSTALLED_APPS so the API docs page is served from django-ninja's bundled static files (no CDN).
    "ninja",
    "sessions_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "sessions_app.rendering.render_budget_middleware",  # bounds a request's Markdown rendering time
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
    # No persistent connections: under ASGI each sync_to_async thread would keep its own.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Spelled out so that a forked test server (daphne) finds the same test database.
        DATABASES["default"]["TEST"] = {"NAME": "test_" + DATABASES["default"]["NAME"]}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
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
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Log level of the sessions_app logger.
CONVO_LOG_LEVEL = os.environ.get("CONVO_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"sessions_app": {"handlers": ["console"], "level": CONVO_LOG_LEVEL}},
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
# Rendered messages and turns are cached per process (their cache keys digest everything they show).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "template_fragments": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "convo-fragments",
        "OPTIONS": {"MAX_ENTRIES": 20000},
    },
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
if not REDIS_URL:
    _layer = {"BACKEND": "channels.layers.InMemoryChannelLayer"}
elif CONVO_REDIS_LAYER == "pubsub":
    _layer = {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
else:
    _layer = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000, "expiry": 30},
    }
CHANNEL_LAYERS = {"default": _layer}

# Largest message content (and system prompt) in characters, for the UI and the API (413 beyond).
CONVO_MAX_CONTENT_CHARS = env_int("CONVO_MAX_CONTENT_CHARS", 32000)
# The JSON API (/api/v1): largest request body in bytes (413 beyond), and how long an append's
# Idempotency-Key is remembered.
CONVO_API_MAX_BODY_BYTES = env_int("CONVO_API_MAX_BODY_BYTES", 1024 * 1024)
CONVO_API_IDEMPOTENCY_TTL_SECONDS = env_int("CONVO_API_IDEMPOTENCY_TTL_SECONDS", 24 * 3600)

# Convo: what one user can make the server do (issue 9). Counters (sign-up, API) live in Redis when
# REDIS_URL is set, shared by every process; else in this process's cache (sessions_app.throttle).
# Rendered Markdown larger than this (bytes of HTML) is shown as plain preformatted text instead.
CONVO_MARKDOWN_MAX_HTML_BYTES = env_int("CONVO_MARKDOWN_MAX_HTML_BYTES", 128 * 1024)
# Milliseconds of Markdown rendering one request may spend; messages after that show as plain text.
CONVO_MARKDOWN_BUDGET_MS = env_int("CONVO_MARKDOWN_BUDGET_MS", 300)
# Websocket frames a page may send per second (a token bucket with this burst); past it: closed, 1008.
CONVO_WS_FRAMES_PER_SECOND = env_float("CONVO_WS_FRAMES_PER_SECOND", 5.0)
CONVO_WS_FRAME_BURST = env_int("CONVO_WS_FRAME_BURST", 20)
# Sign-up attempts per client address per hour ("none": unlimited); past it: 429.
CONVO_SIGNUP_PER_HOUR = env_int("CONVO_SIGNUP_PER_HOUR", 10)
# API requests per minute per API key (browser sessions: per user; "none": unlimited); past it: 429.
CONVO_API_RATE_LIMIT = env_int("CONVO_API_RATE_LIMIT", 600)
# Assistant replies one user may have running at once, over all their conversations; past it: 409.
CONVO_MAX_CONCURRENT_REPLIES = env_int("CONVO_MAX_CONCURRENT_REPLIES", 3)


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
# A running reply whose process has not reported for this long is marked interrupted.
CONVO_REPLY_STALE_SECONDS = env_float("CONVO_REPLY_STALE_SECONDS", 15.0)
# Internal pacing of a running reply: REPLY delta events at most this often, the partial text saved to
# its row at most this often, and how often a reply's watcher polls for Stop (all in seconds).
CONVO_REPLY_EVENT_INTERVAL = env_float("CONVO_REPLY_EVENT_INTERVAL", 0.05)
CONVO_REPLY_SAVE_INTERVAL = env_float("CONVO_REPLY_SAVE_INTERVAL", 1.0)
CONVO_REPLY_POLL_SECONDS = env_float("CONVO_REPLY_POLL_SECONDS", 0.2)
