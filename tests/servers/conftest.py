"""Gives the tests under tests/servers/ the private server fixtures of dovecot.py,
cyrus.py and courier.py.

Another test directory gets them the same way (copy these lines into its conftest.py),
or all of them at once with ``pytest_plugins = ["servers.dovecot", "servers.cyrus",
"servers.courier"]`` in the top-level tests/conftest.py.  Either way one server of each
kind serves the whole session.
"""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from servers.courier import courier_server, courier_user  # noqa: E402, F401
from servers.cyrus import cyrus_server, cyrus_user  # noqa: E402, F401
from servers.dovecot import (  # noqa: E402, F401
    dovecot_prefixed_server,
    dovecot_prefixed_user,
    dovecot_server,
    dovecot_user,
)
