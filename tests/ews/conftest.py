"""The EWS store's tests: a protocol-faithful fake Exchange Web Services server (fakeews.py)
driven by the real exchangelib client, and the IMAP tests' helpers (tests/imap/imaptools.py)."""

import sys
from pathlib import Path

_TESTS_DIR = Path(__file__).resolve().parent.parent
for _path in (_TESTS_DIR, _TESTS_DIR / "imap", _TESTS_DIR / "ews"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
