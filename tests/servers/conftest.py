"""Gives the tests under tests/servers/ the private Dovecot fixtures of dovecot.py.

Another test directory gets them the same way (copy these lines into its conftest.py),
or all of them at once with ``pytest_plugins = ["servers.dovecot"]`` in the top-level
tests/conftest.py.  Either way one Dovecot serves the whole session.
"""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from servers.dovecot import dovecot_server, dovecot_user  # noqa: E402, F401
