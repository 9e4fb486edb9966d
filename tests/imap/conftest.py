"""The IMAP store's tests: the private Dovecot fixtures (see tests/servers/dovecot.py) and
the helpers of imaptools.py."""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from servers.dovecot import dovecot_server, dovecot_user  # noqa: E402, F401
