# Two commands do everything on a fresh machine (Python 3.11+, git, make):
#   make demo   create .venv, install pinned dependencies, run a whole campaign
#   make test   the same install (the lock pins test tools too), then the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WHEELHOUSE := .wheelhouse

.PHONY: demo test test-fast test-deps system-deps view-deps install bench faults lock clean serve prefect-yaml migration

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(STAMP)

demo: $(STAMP) system-deps
	$(BIN)/bulletin demo $(if $(HOME_DIR),--home $(HOME_DIR),)

# What the bulletin's outputs need from the system, installed as root from Debian's packages:
# a CJK font for the charts and the PDF (fonts-noto-cjk), and Pango for WeasyPrint. Without
# root the bulletin goes without charts (the log says so) and the PDF uses whatever is there.
SYSTEM_PACKAGES := fonts-noto-cjk libpango-1.0-0 libpangoft2-1.0-0
# What the tests add to look at the outputs as a reader would: Chromium (the mail at phone and
# desktop widths), LibreOffice (the DOCX as pages) and poppler (pdftotext, pdftoppm).
VIEW_PACKAGES := chromium poppler-utils libreoffice-writer-nogui
system-deps:
	@$(call apt_install,$(SYSTEM_PACKAGES))
view-deps:
	@$(call apt_install,$(VIEW_PACKAGES))
define apt_install
missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
if [ -z "$$missing" ]; then :; \
elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
  echo "installing$$missing"; \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
else echo "missing Debian packages:$$missing (run make as root, or install them)"; fi
endef

# The IMAP tests run a real dovecot on 127.0.0.1 (tests/imap_server.py), the PostgreSQL tests a
# real postgres (tests/pg_server.py: its own cluster in a temp folder). Installed here as root;
# the system services apt may start are stopped again (the tests use their own config/port).
test-deps:
	@if command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing dovecot-imapd for the IMAP tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null) && \
	  { systemctl disable --now dovecot >/dev/null 2>&1 || service dovecot stop >/dev/null 2>&1 || true; }; \
	else echo "test-deps: dovecot missing and not root (or no apt-get): the IMAP tests skip, or fail when CI is set"; fi
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing postgresql for the PostgreSQL tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) && \
	  { systemctl disable --now postgresql >/dev/null 2>&1 || service postgresql stop >/dev/null 2>&1 || true; }; \
	else echo "test-deps: PostgreSQL missing and not root (or no apt-get): the PostgreSQL tests skip, or fail when CI is set"; fi

# Two workers (pytest-xdist), each module on one of them: much of the suite waits on servers
# and processes, so the wall time drops by about 40 % on two cores. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: $(STAMP) system-deps view-deps test-deps $(WHEELHOUSE)/.built
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The wheels of what the project needs (pinned by the lock) and of setuptools to build it, for
# tests/test_wheel.py, which builds the project's wheel and installs it into a fresh virtualenv,
# both without the network
$(WHEELHOUSE)/.built: $(STAMP) pyproject.toml requirements.lock $(shell git ls-files flows tasks templates config 2>/dev/null)
	rm -rf $(WHEELHOUSE)
	$(BIN)/pip wheel --quiet --disable-pip-version-check -c requirements.lock -w $(WHEELHOUSE) . "setuptools>=68"
	touch $@

# The plain-function tests alone (no server, no process): a minute while you work
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not imap and not postgres and not prefect_server and not slow" $(PYTEST_ARGS)

serve: $(STAMP)
	$(BIN)/bulletin serve

bench: $(STAMP)
	$(BIN)/python bench/collect.py

# SIGKILL in every phase of collect (drop folder and mailbox), send, request and remind, each
# step run again and compared with an uninterrupted run; then each step twice at once, on SQLite
# and on PostgreSQL (bench/faults.py; needs dovecot and postgres, hence test-deps)
faults: $(STAMP) test-deps
	$(BIN)/python bench/faults.py --postgres $(FAULTS_ARGS)

lock: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	{ echo "# Pinned versions installed together (pip freeze), used by make. Update: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^-e'; } > requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache

prefect-yaml: $(STAMP)
	$(BIN)/python -m flows.deployments

# After changing the ledger's models (tasks/core/ledger.py): write the migration, then read and edit it.
#   make migration MSG="what changes"     (tests/test_schema.py fails until models and migrations agree)
MIGRATION_DB := $(CURDIR)/.migration.db
migration: $(STAMP)
	@rm -f $(MIGRATION_DB)
	BULLETIN_DB_URL=sqlite:///$(MIGRATION_DB) $(BIN)/alembic -c tasks/core/migrations/alembic.ini upgrade head
	BULLETIN_DB_URL=sqlite:///$(MIGRATION_DB) $(BIN)/alembic -c tasks/core/migrations/alembic.ini revision --autogenerate \
	  --rev-id $$(printf '%04d' $$(( $$(ls tasks/core/migrations/versions/[0-9]*.py | wc -l) + 1 ))) -m "$(MSG)"
	@rm -f $(MIGRATION_DB)
