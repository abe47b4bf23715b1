"""The package layout: every module imports first without a cycle, and no module reaches into
another package's private names (the engine's and the replies' ``_x`` stay theirs)."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings

import sessions_app

PACKAGE = Path(sessions_app.__file__).parent
ROOT = PACKAGE.parent
# Packages (or, before they were split, modules) whose underscored names are private to them.
GUARDED = ("engine", "replies")


def module_names() -> list[str]:
    """Every module under sessions_app/, found on disk (walk_packages would import them)."""
    names = []

    def walk(path: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(path)]):
            names.append(prefix + info.name)
            if info.ispkg:
                walk(path / info.name, f"{prefix}{info.name}.")

    names.append("sessions_app")
    walk(PACKAGE, "sessions_app.")
    return sorted(names)


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


# The child process: import the third-party modules a full import needs once (so that each module's
# own check costs a fork and django.setup() rather than a whole interpreter), then, for each
# module, fork a process with no project module loaded that runs django.setup() and imports it
# first. django.setup() itself imports what the app registry needs (apps, models, the admin and
# whatever their ready() imports); every other module is the first project import after it.
IMPORT_FIRST = textwrap.dedent(
    """
    import importlib, os, sys, traceback

    import django
    from django.conf import settings

    settings.INSTALLED_APPS  # load the settings module
    modules = sys.argv[1:]
    project = ("sessions_app", "convo_site.urls", "convo_site.asgi", "convo_site.wsgi")


    def is_project(name):
        return any(name == p or name.startswith(p + ".") for p in project)


    def in_child(job, *, out=None):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                job()
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if out is not None:
            os.close(out[1])
            chunks = []
            while chunk := os.read(out[0], 65536):
                chunks.append(chunk)
            os.close(out[0])
            out[:] = [b"".join(chunks).decode()]
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


    def everything(pipe):
        os.close(pipe[0])
        django.setup()
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException:
                pass  # reported below, when it is imported first
        os.write(pipe[1], "\\n".join(n for n in list(sys.modules) if not is_project(n)).encode())
        os.close(pipe[1])


    pipe = list(os.pipe())
    in_child(lambda: everything(pipe), out=pipe)
    for name in pipe[0].split("\\n"):
        if name and name not in sys.modules:
            try:
                importlib.import_module(name)
            except BaseException:
                pass  # needs the app registry: the children import it after django.setup()
    assert not [n for n in sys.modules if is_project(n)], "the parent must not load project modules"


    def first(name):
        django.setup()
        importlib.import_module(name)


    failed = [name for name in modules if in_child(lambda name=name: first(name)) != 0]
    if failed:
        print("cannot be imported first:", " ".join(failed))
        sys.exit(1)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a process per module")
def test_every_module_imports_first_in_a_fresh_process():
    """Each module of sessions_app/ can be the first one imported (after django.setup()): no cycle
    depends on which module a process happens to import first."""
    modules = module_names()
    assert "sessions_app.views" in modules and "sessions_app.replies" in modules
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE)}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_FIRST, *modules],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _owner(path: Path) -> str | None:
    """The guarded package (or module) a source file belongs to, if any."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    return rel[0] if rel and rel[0] in GUARDED else None


def _package_of(path: Path) -> list[str]:
    """The dotted package a file's relative imports start from, as parts."""
    return list(path.relative_to(ROOT).with_suffix("").parts[:-1])


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``import from`` names."""
    base = _package_of(path)
    if not node.level:
        return node.module or ""
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _guarded(module: str) -> str | None:
    """The guarded package a dotted module name is in (``sessions_app.engine.values`` → engine)."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "sessions_app" and parts[1] in GUARDED:
        return parts[1]
    return None


def _is_module(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_uses(path: Path) -> list[str]:
    """The private names of a guarded package (or module) this file uses from outside it:
    ``from ..engine import _x``, ``from . import engine`` + ``engine._x``, ``import sessions_app.engine.y``
    + ``sessions_app.engine.y._x``, and the same for replies."""
    owner = _owner(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    modules: dict[str, str] = {}  # local name → the guarded module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            for alias in node.names:
                full = f"{module}.{alias.name}"
                pkg = _guarded(full)
                if pkg is None or pkg == owner:
                    continue
                if alias.name.startswith("_"):
                    found.append(f"{path.name}:{node.lineno} imports {full}")
                elif _is_module(full):
                    modules[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                pkg = _guarded(alias.name)
                if pkg is not None and pkg != owner:
                    modules[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        parts = ast.unparse(node.value).split(".")
        for n in range(len(parts), 0, -1):  # the longest bound prefix: engine.values → engine
            bound = modules.get(".".join(parts[:n]))
            if bound is not None:
                found.append(f"{path.name}:{node.lineno} uses {'.'.join(parts)}.{node.attr} ({bound})")
                break
    return found


def test_no_private_names_of_engine_or_replies_are_used_outside_them():
    """Only the engine uses the engine's ``_x`` names, and only replies/ uses the replies' ones."""
    uses = [use for path in source_files() for use in private_uses(path)]
    assert uses == []


def test_the_private_name_check_sees_each_way_in(tmp_path, monkeypatch):
    """The check above flags the forms of access it is meant to catch (and not the engine's own)."""
    src = tmp_path / "sessions_app"
    (src / "engine").mkdir(parents=True)
    (src / "replies").mkdir()
    files = {
        "views.py": "from . import engine\nengine._lock(1)\n",
        "api.py": "from sessions_app.engine import _lock, session_get\n",
        "forms.py": "from .engine.values import _check\n",
        "admin.py": "import sessions_app.replies.runner as r\nr._loop()\n",
        "rendering.py": "from .replies import runner\nrunner._loop()\n",
        "consumers.py": "from . import engine\nengine.session_get(1)\n",
        "tools.py": "import sessions_app.engine\nsessions_app.engine.values._check()\n",
        "engine/__init__.py": "",
        "engine/values.py": "",
        "engine/sessions.py": "from .values import _check\nfrom . import values\nvalues._check()\n",
        "replies/__init__.py": "",
        "replies/runner.py": "",
        "replies/run.py": "from sessions_app.engine import _lock\n",
    }
    for name, text in files.items():
        (src / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", src)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    flagged = {path.relative_to(src).as_posix(): private_uses(path) for path in sorted(src.rglob("*.py"))}
    assert flagged["views.py"] and flagged["api.py"] and flagged["forms.py"]
    assert flagged["admin.py"] and flagged["rendering.py"] and flagged["tools.py"] and flagged["replies/run.py"]
    assert flagged["consumers.py"] == [] and flagged["engine/sessions.py"] == []
