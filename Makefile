# Convo: `make run` installs and starts the app; `make test` installs and runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The PostgreSQL + Redis run of the suite (CI's second configuration).
PG_URL ?= postgres://postgres:postgres@127.0.0.1:5432/convo
REDIS_TEST_URL ?= redis://127.0.0.1:6379/1

.PHONY: run dev test test-sqlite test-postgres test-fast lint format bench bench-ui screenshots pygments-css venv services clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# Production serving: daphne, debug off (friendly error pages; static files collected under hashed
# names and served by ServeStatic, cacheable forever). SIGTERM drains within CONVO_SHUTDOWN_GRACE_SECONDS.
# Without DJANGO_SECRET_KEY, a key is generated into .secret_key on first start.
run: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	exec $(VENV)/bin/daphne -b $(HOST) -p $(PORT) convo_site.asgi:application

# Development mode: Django's debug pages (they show settings: never on a reachable server).
dev: venv
	$(PY) manage.py migrate --noinput
	DJANGO_DEBUG=true $(PY) manage.py runserver $(HOST):$(PORT)

services:
	bash .ci/services

# The whole suite, twice: SQLite + in-memory channel layer (a newcomer's set-up), then PostgreSQL + Redis.
test: venv services
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgres

test-sqlite: venv
	env -u DATABASE_URL -u REDIS_URL bash .ci/pytest-all

test-postgres: venv
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) bash .ci/pytest-all

# Quick loop while developing: SQLite, no browser.
test-fast: venv
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -q --ignore=tests/browser

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv services
	bash bench/run

# The chat and home pages at 1440×900, 1280×720 and 390×844, light and dark (plus the phone's drawer and
# panels sheet), regenerated into tests/browser/screenshots/ (checked in: look at them after a UI change).
screenshots: venv
	CONVO_SCREENSHOTS=1 env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -q -p no:cacheprovider tests/browser/test_browser_screenshots.py

# The chat page in chromium: cold page weight and Enter → own message (bench/ui_chat.py; not a test).
bench-ui: venv
	$(PY) bench/ui_chat.py

# static/convo/pygments.css: highlighted code colours, light and dark, raised to AA contrast.
pygments-css: venv
	$(PY) manage.py build_pygments_css

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts staticfiles
