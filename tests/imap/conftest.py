"""The IMAP store's tests: the private Dovecot fixtures (see tests/servers/dovecot.py) and
the helpers of imaptools.py."""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import pytest  # noqa: E402
from servers.dovecot import dovecot_server, dovecot_user  # noqa: E402, F401


@pytest.fixture
def mailenv(tmp_path, monkeypatch):
    """A private XDG_STATE_HOME/XDG_CONFIG_HOME and no stray password sources."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("MAILSYNC_PASSWORD", raising=False)
    monkeypatch.delenv("MAILSYNC_PASSWORD_COMMAND", raising=False)
    monkeypatch.delenv("MAILSYNC_CRASH_AT", raising=False)
    return tmp_path
