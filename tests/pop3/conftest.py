"""The POP3 store's tests: the private Dovecot (tests/servers/dovecot.py), the IMAP
tests' helpers (tests/imap/imaptools.py) and a scripted fake server (fakepop.py)."""

import sys
from pathlib import Path

_TESTS_DIR = Path(__file__).resolve().parent.parent
for _path in (_TESTS_DIR, _TESTS_DIR / "imap", _TESTS_DIR / "pop3"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from servers.dovecot import dovecot_server, dovecot_user  # noqa: E402, F401
