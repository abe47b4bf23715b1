"""Export in constant memory: peak RSS of ``manage.py export_sessions`` for 1,000-, 10,000- and
100,000-message conversations (and of ``import_sessions`` reading the 100,000-message file back).

Each command runs as a subprocess, as an operator runs it; its peak RSS comes from ``os.wait4`` and
its wall time includes Django's start-up. The conversations are built in bulk with the engine's exact
bookkeeping (``_setup.make_long_session``). Constant memory means the 100,000-message export peaks
at about the 1,000-message one (the messages are read 1,000 at a time and written as they are read).
The import reads one conversation (one JSON line) whole, so its memory grows with the conversation:
reported for information.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import emit, log, run_command, setup_django

OWNER = "bench-export"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="message counts (comma-separated)")
    parser.add_argument("--no-import", action="store_true", help="skip the import of the largest file")
    options = parser.parse_args()
    setup_django()
    from _setup import make_long_session
    from django.contrib.auth import get_user_model

    from sessions_app.models import ConversationSession

    user, _ = get_user_model().objects.get_or_create(username=OWNER)
    ConversationSession.objects.filter(owner=user).delete()
    out_dir = Path(tempfile.mkdtemp(prefix="convo-export-bench-"))
    largest = None
    for size in (int(s) for s in options.sizes.split(",")):
        sid = f"export-{size}"
        log(f"building a {size:,}-message conversation")
        make_long_session(sid, user, size)
        path = out_dir / f"{sid}.jsonl"
        seconds, rss, _ = run_command("export_sessions", "--owner", OWNER, "--id", sid, "--output", str(path))
        emit(
            "export_rss",
            "convo",
            f"export_sessions peak RSS, {size:,} messages",
            rss,
            "MB",
            seconds=round(seconds, 2),
            file_mb=round(path.stat().st_size / 2**20, 1),
            better="lower",
        )
        largest = path
    if largest is not None and not options.no_import:
        seconds, rss, _ = run_command("import_sessions", str(largest), "--owner", OWNER)
        emit("export_rss", "convo", f"import_sessions peak RSS, {largest.stem}", rss, "MB", seconds=round(seconds, 2))
    ConversationSession.objects.filter(owner=user).delete()
    for path in out_dir.iterdir():
        path.unlink()
    out_dir.rmdir()


if __name__ == "__main__":
    main()
