"""W5 — open a long conversation: server time and HTML size of the chat page at 10, 10,000 and
100,000 messages. Prints one JSON line per size, then a summary line.

    python bench/w5_open.py [--sizes 10,10000,100000] [--runs 40]

Runs on DATABASE_URL (PostgreSQL) or, without it, an SQLite file of its own. The page is requested
in-process through Django's test client (the whole middleware and template stack, no network). The
sizes are measured round-robin, so that load from other processes on the machine hits them alike.
Besides the page: its first render with empty fragment caches (cold_first_ms) and the context panel,
which the page fetches with a second request as it opens (context_panel_median_ms; its cost follows
the context window, i.e. max_tokens, not the conversation's length).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

from _setup import database_label, django_setup, make_long_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,10000,100000")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    django_setup()

    from django.contrib.auth import get_user_model
    from django.core.cache import caches
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from sessions_app import rendering

    user, _ = get_user_model().objects.get_or_create(username="bench-w5")
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    sizes = [int(s) for s in args.sizes.split(",")]
    info = {}
    for size in sizes:
        session_id = f"bench-w5-{size}"
        started = time.perf_counter()
        make_long_session(session_id, user, size)
        info[size] = {"url": f"/c/{session_id}/", "setup_s": time.perf_counter() - started}
    # The set-up's big inserts must not weigh on the measurement (DEBUG keeps their SQL text).
    connection.queries_log.clear()
    gc.collect()

    for size in sizes:
        caches["template_fragments"].clear()
        rendering._markdown_clean.cache_clear()
        t0 = time.perf_counter()
        response = client.get(info[size]["url"])
        info[size]["cold_ms"] = (time.perf_counter() - t0) * 1000
        assert response.status_code == 200
    for size in sizes:  # warm up
        for _ in range(3):
            client.get(info[size]["url"])

    page_times = {size: [] for size in sizes}
    context_times = {size: [] for size in sizes}
    for _ in range(args.runs):
        for size in sizes:
            t0 = time.perf_counter()
            response = client.get(info[size]["url"])
            page_times[size].append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200
            info[size]["html_bytes"] = len(response.content)
            t0 = time.perf_counter()
            assert client.get(info[size]["url"] + "context/", HTTP_HX_REQUEST="true").status_code == 200
            context_times[size].append((time.perf_counter() - t0) * 1000)

    results = []
    for size in sizes:
        with CaptureQueriesContext(connection) as queries:
            client.get(info[size]["url"])
        result = {
            "bench": "W5",
            "db": database_label(),
            "messages": size,
            "runs": args.runs,
            "median_ms": round(statistics.median(page_times[size]), 2),
            "p90_ms": round(statistics.quantiles(page_times[size], n=10)[-1], 2),
            "html_bytes": info[size]["html_bytes"],
            "queries": len(queries.captured_queries),
            "cold_first_ms": round(info[size]["cold_ms"], 2),
            "context_panel_median_ms": round(statistics.median(context_times[size]), 2),
            "setup_s": round(info[size]["setup_s"], 1),
        }
        results.append(result)
        print(json.dumps(result), flush=True)
    if len(results) > 1:
        ratio = results[-1]["median_ms"] / results[0]["median_ms"]
        summary = {
            "bench": "W5",
            "db": database_label(),
            "summary": f"{results[-1]['messages']} vs {results[0]['messages']} messages",
            "median_ratio": round(ratio, 2),
            "target_median_ms": 50,
            "target_ratio": 1.5,
            "ok": all(r["median_ms"] <= 50 for r in results) and ratio <= 1.5,
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
