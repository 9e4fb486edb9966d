"""Fixtures shared by every test directory: the private Dovecot (tests/servers/dovecot.py)."""

pytest_plugins = ["servers.dovecot"]
