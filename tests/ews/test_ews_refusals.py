"""A message Exchange refuses to create (ErrorMessageSizeExceeded): named, recorded, not
offered again unless --retry-refused; a full mailbox (ErrorQuotaExceeded) is no such
refusal: the message is offered again on the next run."""

from __future__ import annotations

import base64

import pytest
from fakeews import _T, FakeEWS, ResponseError
from imaptools import run, write_local

from mailsync.stores import ews as ewsmod

USER, PASSWORD = "alice@example.org", "ews-pw-31"


class RefusingEWS(FakeEWS):
    """Refuses to create a message containing TOO-BIG with `code`, as Exchange refuses one
    above the organisation's size limit (or any, in a full mailbox)."""

    code = "ErrorMessageSizeExceeded"

    def _create_from_xml(self, elem, folder, disposition):
        mime = elem.find(_T("MimeContent"))
        if folder is not None and mime is not None and b"TOO-BIG" in base64.b64decode(mime.text):
            raise ResponseError(self.code, "Refused by the test server.")
        return super()._create_from_xml(elem, folder, disposition)


@pytest.fixture
def fake(mailenv, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(mailenv / "cache"))
    monkeypatch.setattr(ewsmod, "MAX_WAIT", 30)
    server = RefusingEWS(user=USER, password=PASSWORD).start()
    yield server
    server.stop()


def url(server) -> str:
    return server.url.replace("http://", "ews://alice%40example.org@") + "?tls=none&auth=basic"


def body(n: int, extra: str = "") -> bytes:
    return (
        f"From: bob@example.org\nTo: {USER}\nSubject: message {n}\n"
        f"Message-ID: <{n}.ews@example.org>\nDate: Mon, 4 Mar 2019 05:06:07 +0000\n\n"
        f"Body {n}.\n{extra}"
    ).encode()


def test_a_message_exchange_refuses_is_named_once_then_held_back(fake, mailenv):
    root = mailenv / "mail"
    write_local(root, "INBOX", body(1))
    write_local(root, "INBOX", body(2, "TOO-BIG\n"))
    first = run("push", f"maildir:{root}", url(fake), password=PASSWORD)
    assert first.exit_code == 1, first.output
    assert (
        '"message 2", <2.ews@example.org>): ErrorMessageSizeExceeded: Refused by the test '
        "server." in first.stderr
    )
    assert [i["subject"] for i in fake.items("inbox")] == ["message 1"]
    second = run("push", f"maildir:{root}", url(fake), password=PASSWORD)
    assert second.exit_code == 0, second.output
    assert "1 message(s) refused for good by the remote side" in second.stderr
    creates = [r for r in fake.requests if r[0] == "CreateItem"]
    assert len(creates) == 2  # message 1, and message 2 once
    assert "ErrorMessageSizeExceeded" in run("status").stdout


def test_a_full_mailbox_is_no_refusal_of_the_message(fake, mailenv):
    fake.code = "ErrorQuotaExceeded"
    root = mailenv / "mail"
    write_local(root, "INBOX", body(2, "TOO-BIG\n"))
    for _ in range(2):
        result = run("push", f"maildir:{root}", url(fake), password=PASSWORD)
        assert result.exit_code == 1, result.output
        assert "ErrorQuotaExceeded" in result.stderr and "recorded" not in result.stderr
    assert len([r for r in fake.requests if r[0] == "CreateItem"]) == 2  # offered each time
