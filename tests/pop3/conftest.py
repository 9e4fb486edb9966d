"""The POP3 store's tests: the private Dovecot (tests/servers/dovecot.py), the IMAP
tests' helpers (tests/imap/imaptools.py) and a scripted fake server (fakepop.py)."""

import sys
from pathlib import Path

_TESTS_DIR = Path(__file__).resolve().parent.parent
for _path in (_TESTS_DIR, _TESTS_DIR / "imap", _TESTS_DIR / "pop3"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import pytest  # noqa: E402
from servers.dovecot import dovecot_server, dovecot_user  # noqa: E402, F401


@pytest.fixture
def mailenv(tmp_path, monkeypatch):
    """A private XDG_STATE_HOME/XDG_CONFIG_HOME and no stray password sources."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("MAILSYNC_PASSWORD", "MAILSYNC_PASSWORD_COMMAND", "MAILSYNC_CRASH_AT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MAILSYNC_NOW", raising=False)
    return tmp_path
