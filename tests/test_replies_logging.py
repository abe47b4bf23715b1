"""Each sessions_app log record is printed once, in a server process too (daphne installs a root
handler with logging.basicConfig before it loads the application)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = """
import logging
logging.basicConfig(level=logging.INFO, format="%(asctime)-15s %(levelname)-8s %(message)s")  # as daphne does
import django
django.setup()
logging.getLogger("sessions_app.replies.workers").warning("reply marker-7f3a")
logging.getLogger("sessions_app").info("info marker-91c2")
logging.getLogger("sessions_app").debug("debug marker-5b0e")
logging.getLogger("daphne.server").info("daphne marker-d4e1")
logging.getLogger("django.request").error("request marker-2a7c")
logging.getLogger("django.request").warning("not found marker-0c3d")
"""


def test_each_record_is_printed_once_under_a_server():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "convo_site.settings", "PYTHONPATH": str(ROOT)}
    env.pop("CONVO_LOG_LEVEL", None)
    done = subprocess.run(
        [sys.executable, "-c", SERVER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    output = done.stdout + done.stderr
    counts = {m: output.count(m) for m in ("7f3a", "91c2", "5b0e", "d4e1", "2a7c", "0c3d")}
    # Once each at their levels; below their loggers' levels not at all (debug, a 404 warning).
    assert counts == {"7f3a": 1, "91c2": 1, "5b0e": 0, "d4e1": 1, "2a7c": 1, "0c3d": 0}, output
