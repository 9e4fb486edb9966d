"""Fixtures shared by every test directory: the private Dovecot, Cyrus and Courier
(tests/servers/dovecot.py, cyrus.py, courier.py) and a private environment for running
mailsync (mailenv)."""

import pytest

pytest_plugins = ["servers.dovecot", "servers.cyrus", "servers.courier"]


@pytest.fixture
def mailenv(tmp_path, monkeypatch):
    """A private XDG_STATE_HOME/XDG_CONFIG_HOME and no stray password sources, crash hook
    or fixed clock from the environment."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in (
        "MAILSYNC_PASSWORD",
        "MAILSYNC_PASSWORD_COMMAND",
        "MAILSYNC_CRASH_AT",
        "MAILSYNC_NOW",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path
