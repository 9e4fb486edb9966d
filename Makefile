# mailsync: make demo | make test | make lint | make man | make bench
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all test lint man demo bench clean

all: test

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check mailsync tests bench
	$(VENV)/bin/ruff format --check mailsync tests bench

man: $(STAMP)
	$(PY) -m mailsync --help >/dev/null
	for page in man/mailsync.1 man/mailsync.conf.5; do \
	  groff -man -ww -z $$page || exit 1; \
	  groff -man -Tutf8 $$page > /dev/null 2>&1 || exit 1; \
	done
	@echo "man pages render cleanly; view with: man -l man/mailsync.1"

clean:
	rm -rf $(VENV) build *.egg-info demo-mail
