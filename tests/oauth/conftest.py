"""The OAuth2 tests' servers: the authorization server of tests/servers/oauth.py (HTTP and
HTTPS) and the private Dovecot that checks its tokens; the other private servers as
everywhere (tests/conftest.py)."""

import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from servers.oauth import (  # noqa: E402, F401
    dovecot_oauth2_server,
    dovecot_oauth2_user,
    oauth_server,
    oauth_tls_server,
)


@pytest.fixture
def token_dir(mailenv):
    """Where the tests' token files go: $XDG_STATE_HOME/mailsync/tokens of mailenv."""
    return str(mailenv / "state" / "mailsync" / "tokens")
