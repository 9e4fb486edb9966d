"""The EWS store's tests: a protocol-faithful fake Exchange Web Services server (fakeews.py)
driven by the real exchangelib client, and the IMAP tests' helpers (tests/imap/imaptools.py)."""

import sys
from pathlib import Path

_TESTS_DIR = Path(__file__).resolve().parent.parent
for _path in (_TESTS_DIR, _TESTS_DIR / "imap", _TESTS_DIR / "ews"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import pytest  # noqa: E402


@pytest.fixture
def mailenv(tmp_path, monkeypatch):
    """A private XDG_STATE_HOME/XDG_CONFIG_HOME and no stray password sources."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("MAILSYNC_PASSWORD", "MAILSYNC_PASSWORD_COMMAND", "MAILSYNC_CRASH_AT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MAILSYNC_NOW", raising=False)
    return tmp_path
