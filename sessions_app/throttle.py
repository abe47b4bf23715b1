"""Fixed-window counters: the API's per-key rate limit and sign-up's per-address throttle.

A hit counts against ``(scope, who, current window)``; past the limit the caller is told how many
seconds remain in the window (its ``Retry-After``). Where the counters live decides who shares them:

- with ``REDIS_URL`` set, in Redis (``INCR`` and ``EXPIRE`` in one round trip, atomic), so every
  daphne process of the site counts against the same limit;
- without it, in Django's default cache (locmem: this process). A site without Redis runs one
  process anyway, since its in-memory channel layer cannot span two.

A counter store that fails (Redis down) lets the request through and logs it: a rate limit must not
take the site down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time

from django.conf import settings
from django.core.cache import caches

logger = logging.getLogger(__name__)

PREFIX = "convo:throttle:"


def hit(scope: str, who: str, *, limit: int | None, window: int, now: float | None = None) -> int | None:
    """Count one hit of ``who`` in ``scope``; None while within ``limit`` hits per ``window`` seconds,
    else the whole seconds until the window ends (at least 1). A ``limit`` of None: no limit."""
    if limit is None:
        return None
    now = time.time() if now is None else now
    slot = int(now // window)
    digest = hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    key = f"{PREFIX}{scope}:{digest}:{slot}"
    try:
        count = _redis_incr(key, window) if settings.REDIS_URL else _cache_incr(key, window)
    except Exception:
        logger.exception("Could not count a %s hit; letting it through", scope)
        return None
    if count <= limit:
        return None
    return max(1, math.ceil((slot + 1) * window - now))


def reset() -> None:
    """Forget every counter (tests)."""
    if settings.REDIS_URL:
        client = _redis()
        for key in client.scan_iter(match=PREFIX + "*", count=1000):
            client.delete(key)
    caches["default"].clear()


def _cache_incr(key: str, window: int) -> int:
    cache = caches["default"]
    cache.add(key, 0, timeout=window + 1)
    try:
        return cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.set(key, 1, timeout=window + 1)
        return 1


_client = None
_client_pid = 0
_client_lock = threading.Lock()


def _redis():
    global _client, _client_pid
    with _client_lock:
        if _client is None or _client_pid != os.getpid():
            import redis

            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
            _client_pid = os.getpid()
        return _client


def _redis_incr(key: str, window: int) -> int:
    pipe = _redis().pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, window + 1)
    count, _ = pipe.execute()
    return int(count)
