# mailsync: make demo | make test | make lint | make man | make bench
# The virtualenv's interpreter: the distribution's /usr/bin/python3 when it is 3.11 or
# newer (Debian builds it with PGO and LTO: bytes.replace, the CRLF -> LF of every
# download, runs 3.5x faster than in a default pyenv build, pure Python 13 %), else the
# first python3 on PATH (also when /usr/bin/python3 lacks venv and this is not root, so
# venv-deps cannot install it).  `make clean` before switching; `make PYTHON=...` chooses.
PYTHON ?= $(shell if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	      2>/dev/null && { [ "$$(id -u)" = 0 ] \
	      || /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; }; \
	    then echo /usr/bin/python3; else echo python3; fi)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Dovecot for the tests' private servers (tests/servers/dovecot.py).
DOVECOT_PKGS := dovecot-imapd dovecot-pop3d
# Cyrus and Courier for tests/servers/cyrus.py, courier.py.  They conflict with
# dovecot-imapd, so they are downloaded and unpacked into TEST_SERVERS, not installed;
# only what they link against (and saslpasswd2) is installed, and only when missing.
TEST_SERVERS := .test-servers
TEST_SERVER_DEBS := cyrus-common cyrus-imapd \
	courier-base courier-imap courier-authlib courier-authdaemon courier-authlib-userdb
TEST_SERVER_DEPS := sasl2-bin libsasl2-2 libsasl2-modules libsasl2-modules-db \
	libpcre3 libical3 libicu72 libjansson4 libxapian30 libpq5 libsqlite3-0 libxml2 \
	libwrap0 libldap-2.5-0 libkrb5-3 libssl3 libuuid1 libnsl2 libstdc++6 \
	libcourier-unicode4 libgamin0 libgdbm6 libidn12 libltdl7 libgnutls30 libpam0g \
	libcrypt1 perl openssl

.PHONY: all test lint man demo bench bench-deps clean dovecot readers test-servers venv-deps

all: test

# Debian's python3 lacks venv/ensurepip until python3-venv is installed.
venv-deps:
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else \
	    echo "python3 venv support is missing: sudo apt-get install python3-venv" >&2; exit 1; \
	  fi; \
	fi

$(STAMP): setup.cfg pyproject.toml
	@$(MAKE) --no-print-directory venv-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# A plain path in a .pth (editable_mode=compat) rather than an import hook: starting
	# python costs 15 ms less, which the rerun benchmarks measure.
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat \
	  || $(PY) -m pip install -q -e '.[test]'
	$(PY) -c 'import pymap' 2>/dev/null || $(PY) -m pip install -q 'pymap>=0.36'
	touch $(STAMP)

dovecot:
	@if ! command -v doveadm >/dev/null 2>&1 || ! test -x /usr/lib/dovecot/imap \
	    || ! test -x /usr/lib/dovecot/pop3; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "Dovecot is missing and this is not root: the IMAP/POP tests will be skipped" \
	         "(sudo apt-get install $(DOVECOT_PKGS))" >&2; \
	  else \
	    echo "installing Dovecot for the tests"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	      $(DOVECOT_PKGS) >/dev/null || exit 1; \
	    systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true; \
	    service dovecot stop >/dev/null 2>&1 || true; \
	  fi; \
	fi
	@if [ "$$(id -u)" = 0 ] && ! getent passwd mailsynctest >/dev/null; then \
	  useradd --system --user-group --no-create-home --home-dir /nonexistent \
	    --shell /usr/sbin/nologin mailsynctest; \
	fi

# Without root this only says what is missing: those tests skip (they fail under CI=true).
test-servers:
	@if [ "$$(id -u)" != 0 ]; then \
	  test -f $(TEST_SERVERS)/.unpacked || echo "Cyrus and Courier are not unpacked and this" \
	    "is not root: their tests will be skipped (sudo make test-servers)" >&2; \
	  exit 0; \
	fi; \
	missing=$$(for p in $(TEST_SERVER_DEPS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "installing for the Cyrus and Courier tests:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null || exit 1; \
	fi; \
	if [ ! -f $(TEST_SERVERS)/.unpacked ]; then \
	  echo "downloading and unpacking $(TEST_SERVER_DEBS) into $(TEST_SERVERS)"; \
	  rm -rf $(TEST_SERVERS) && mkdir -p $(TEST_SERVERS)/debs $(TEST_SERVERS)/root && \
	  cd $(TEST_SERVERS)/debs && \
	  { apt-get download -qq $(TEST_SERVER_DEBS) 2>/dev/null \
	    || { apt-get update -qq && apt-get download -qq $(TEST_SERVER_DEBS); }; } && \
	  for deb in *.deb; do \
	    dpkg-deb -x $$deb ../root && \
	    dpkg-deb -W --showformat='$${Package} $${Version}\n' $$deb >> ../VERSIONS || exit 1; \
	  done && touch ../.unpacked; \
	fi

# Mail readers the tests check mailsync's files with (tests/readers/): GNU mailutils
# (frm, messages) and notmuch; no MTA comes with them (--no-install-recommends).
readers:
	@missing=""; \
	{ command -v frm >/dev/null 2>&1 && command -v messages >/dev/null 2>&1; } \
	  || missing="$$missing mailutils"; \
	command -v notmuch >/dev/null 2>&1 || missing="$$missing notmuch"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "mail readers missing and this is not root: their tests will be skipped" \
	         "(sudo apt-get install --no-install-recommends$$missing)" >&2; \
	  else \
	    echo "installing$$missing for the tests"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	      $$missing >/dev/null || exit 1; \
	  fi; \
	fi

test: $(STAMP) dovecot test-servers readers
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# mypy's settings are setup.cfg's [mypy]: the engine annotated in full, every module
# checked (check_untyped_defs).
lint: $(STAMP)
	$(VENV)/bin/ruff check mailsync tests bench demo
	$(VENV)/bin/ruff format --check mailsync tests bench demo
	$(VENV)/bin/mypy mailsync

man: $(STAMP)
	@command -v groff >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq groff-base >/dev/null)
	for page in man/mailsync.1 man/mailsync.conf.5; do \
	  groff -man -ww -z $$page || exit 1; \
	  groff -man -Tutf8 $$page > /dev/null 2>&1 || exit 1; \
	done
	$(PY) -m pytest -q -p no:cacheprovider tests/cli/test_cli.py -k man_page
	@echo "man pages render cleanly and document every option; view: man -l man/mailsync.1"

# The peers mailsync is measured against, side by side in one run (bench/RESULTS.md).
bench-deps:
	@missing=""; \
	command -v mbsync >/dev/null 2>&1 || missing="$$missing isync"; \
	command -v offlineimap >/dev/null 2>&1 || missing="$$missing offlineimap"; \
	command -v getmail >/dev/null 2>&1 || missing="$$missing getmail6"; \
	test -x /usr/bin/time || missing="$$missing time"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "to compare with the peers: sudo apt-get install$$missing" >&2; \
	  fi; \
	fi

# BENCH_ARGS="--messages 2000 --megabytes 120" for a quick run; see bench/run.py --help.
BENCH_ARGS ?= --all
bench: $(STAMP) dovecot bench-deps
	$(PY) bench/run.py $(BENCH_ARGS)

demo: $(STAMP)
	$(PY) demo/run.py

clean:
	rm -rf $(VENV) build *.egg-info demo-mail $(TEST_SERVERS)
