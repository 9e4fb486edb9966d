"""imap_patience.py: how long a connection waits when the server asks it to (with an
injected sleep: nothing here waits), and how servers' answers are read."""

from __future__ import annotations

import pytest

from mailsync.errors import ConfigError, ConnectError, StoreError
from mailsync.stores.imap_patience import (
    NotConnected,
    Patience,
    Throttled,
    ThrottledFolder,
    append_limit,
    check_answer,
    size_refusal,
)


def throttled(ms: int) -> Throttled:
    text = f"NO Request is throttled. Suggested Backoff Time: {ms} milliseconds"
    with pytest.raises(Throttled) as caught:
        check_answer(text)
    return caught.value


def patience(budget: float = 600.0) -> tuple[Patience, list[float]]:
    slept: list[float] = []
    return Patience(budget, floor=1.0, cap=300.0, sleep=slept.append), slept


def test_waits_are_as_suggested_within_the_floor_and_the_cap():
    wait, slept = patience()
    for ms in (2500, 10, 899_609):
        wait.wait_out(throttled(ms), "imaps://a@h", "fetch", in_folder=True)
    assert slept == [2.5, 1.0, 300.0]
    assert (wait.waits, wait.waited) == (3, 303.5)


def test_a_wait_beyond_the_budget_is_not_waited_but_given_up():
    wait, slept = patience(budget=10.0)
    wait.wait_out(throttled(8000), "imaps://a@h INBOX", "fetch", in_folder=True)
    with pytest.raises(ThrottledFolder, match="8 s waited this run, throttle_wait is 10 s"):
        wait.wait_out(throttled(3000), "imaps://a@h INBOX", "fetch", in_folder=True)
    with pytest.raises(StoreError) as store_level:
        wait.wait_out(throttled(3000), "imaps://a@h", "list", in_folder=False)
    assert not isinstance(store_level.value, ThrottledFolder)
    assert slept == [8.0]


def test_not_connected_sessions_get_a_few_logins_with_growing_waits():
    wait, slept = patience()
    for login in (1, 2, 3):
        wait.before_login("imaps://a@h", "select_folder", login)
    with pytest.raises(ConnectError, match="check that IMAP is enabled"):
        wait.before_login("imaps://a@h", "select_folder", 4)
    assert slept == [2.0, 4.0, 8.0]
    assert wait.waits == 0  # not throttling: not reported as such


def test_answers():
    assert throttled(89_117).seconds == pytest.approx(89.117)
    with pytest.raises(NotConnected):
        check_answer("select failed: BAD User is authenticated but not connected.")
    check_answer("NO [TRYCREATE] no such mailbox")  # an ordinary refusal: nothing to do
    assert append_limit({"IMAP4REV1", "APPENDLIMIT=35882577"}) == 35882577
    assert append_limit({"IMAP4REV1", "APPENDLIMIT"}) is True
    assert append_limit({"IMAP4REV1"}) is None
    assert "it is 50 bytes" in size_refusal("BAD", "Command Argument Error. 11", 50)
    assert size_refusal("BAD", "Command Argument Error. 12", 50) is None
    assert "(the message is 50 bytes)" in size_refusal(
        "NO", "Maximum size of appendable message has been exceeded.", 50
    )
    assert size_refusal("NO", "Mailbox is read-only", 50) is None


@pytest.mark.parametrize("value", ["soon", "-1", "nan", ""])
def test_throttle_wait_is_a_number_of_seconds(value):
    with pytest.raises(ConfigError, match="throttle_wait must be a number of seconds"):
        Patience.from_option(value)
    assert Patience.from_option("0").budget == 0.0
    assert Patience.from_option(None).budget == 600.0
