"""Microsoft 365 over IMAP, through the command line, against the Exchange Online fake
(fakem365.py, whose docstring cites what Exchange does): throttling waited out as
suggested and reported, "User is authenticated but not connected" logged in again,
messages over the size limit refused for good, an access token that expires mid-run.

FakeM365 takes XOAUTH2 only; until mailsync's IMAP login speaks it, these tests log in
with the fake's ``allow_login`` knob (LOGIN with the token as the password).  No
assertion is about time: the fake counts the commands that came back before the
backoff it suggested had passed (Throttle.early), a client that waits as told has none.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from fakem365 import FakeM365, Throttle
from imaptools import maildir_bodies, message, run, write_local

import mailsync.stores.imap_patience as imap_patience
from mailsync.config import STORE_OPTIONS

TOKEN = "eyJ0eXAiOiJKV1Qi.fake.token"


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Waits as short as the fake's backoffs (milliseconds), not a second at least."""
    monkeypatch.setattr(imap_patience, "THROTTLE_FLOOR", 0.0)
    monkeypatch.setattr(imap_patience, "RECONNECT_BACKOFF", 0.01)


def wire(body: bytes) -> bytes:
    return body.replace(b"\n", b"\r\n")


def server(folders: dict[str, list[bytes]], **options) -> FakeM365:
    """A Microsoft 365 fake holding `folders` (LF bodies), logging in by the test knob."""
    return FakeM365(
        {name: [wire(b) for b in bodies] for name, bodies in folders.items()},
        allow_login=True,
        **options,
    )


def pull(fake: FakeM365, local, *extra: str, query: str = "tls=none"):
    return run(
        "pull", "--jobs", "1", *extra, fake.url(query=query), f"maildir:{local}", password=TOKEN
    )


def push(fake: FakeM365, local, *extra: str, query: str = "tls=none"):
    return run(
        "push", "--jobs", "1", *extra, f"maildir:{local}", fake.url(query=query), password=TOKEN
    )


def on_server(fake: FakeM365) -> dict[str, Counter]:
    """Each folder's bodies (LF), counted."""
    return {
        name: Counter(m.body.replace(b"\r\n", b"\n") for m in box.messages)
        for name, box in fake.mailboxes.items()
    }


def folders_of(result) -> dict[str, dict]:
    (channel,) = json.loads(result.stdout)["channels"]
    return {folder["folder"]: folder for folder in channel["folders"]}


INBOX = [message(n) for n in range(1, 7)]
ARCHIVE = [message(n, "archived") for n in range(7, 10)]


# -- throttling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["NO", "BAD"])
def test_a_pull_through_throttling_windows_gets_every_message_once(mailenv, status):
    """Throttled on EXAMINE, on a listing's FETCH and on a body FETCH, with and without
    the BYE that may follow: every message arrives exactly once, each wait is logged
    (-v) and reported per folder (--json), and mailsync never came back early."""
    rules = [
        Throttle("EXAMINE", backoff_ms=120, status=status),
        Throttle("UID FETCH", skip=1, backoff_ms=150, status=status, bye=True),
        Throttle("UID FETCH", skip=3, backoff_ms=100, status=status),
    ]
    local = mailenv / "local"
    with server({"INBOX": INBOX, "Archive": ARCHIVE}, throttles=rules) as fake:
        result = pull(fake, local, "-v", "--json")
        commands = fake.commands()
    assert result.exit_code == 0, result.output
    assert maildir_bodies(local) == {"INBOX": Counter(INBOX), "Archive": Counter(ARCHIVE)}
    assert [(rule.answered, rule.early) for rule in rules] == [(1, 0)] * 3
    assert result.stderr.count("the server is throttling") == 3
    assert "the server closed the session" in result.stderr  # the BYE: a new login
    assert sum(1 for c in commands if c.startswith("LOGIN")) == 2
    reports = folders_of(result)
    assert sum(f["throttled"] for f in reports.values()) == 3
    assert all(f["throttled_seconds"] > 0 for f in reports.values() if f["throttled"])
    assert all(not f["errors"] for f in reports.values())


@pytest.mark.parametrize("bye", [False, True])
def test_windows_on_every_command_right_after_the_login_too(mailenv, bye):
    """Exchange throttles any command: the first one after the login (mailsync's
    CAPABILITY), and later a window on all of them (NOOP included)."""
    rules = [
        Throttle("*", backoff_ms=100, status="BAD", bye=bye),
        Throttle("*", skip=7, backoff_ms=100, bye=bye),
    ]
    local = mailenv / "local"
    with server({"INBOX": INBOX, "Archive": ARCHIVE}, throttles=rules) as fake:
        result = pull(fake, local)
        commands = fake.commands()
    assert result.exit_code == 0, result.output
    assert maildir_bodies(local) == {"INBOX": Counter(INBOX), "Archive": Counter(ARCHIVE)}
    assert [(rule.answered, rule.early) for rule in rules] == [(1, 0)] * 2
    assert commands[2] == "CAPABILITY"  # (CAPABILITY, LOGIN, CAPABILITY: throttled)


def test_the_summary_says_a_folder_was_throttled(mailenv):
    local = mailenv / "local"
    with server({"INBOX": INBOX}, throttles=[Throttle("UID FETCH", backoff_ms=50)]) as fake:
        result = pull(fake, local)
        again = pull(fake, local)
    assert result.exit_code == 0, result.output
    assert "INBOX: copied 6 to local, 0 to remote" in result.stdout
    assert ", throttled 1x, waited 0.1 s" in result.stdout  # (50 ms, rounded)
    assert again.exit_code == 0 and "throttled" not in again.stdout


@pytest.mark.parametrize("bye", [False, True])
def test_a_push_through_throttled_appends_puts_every_message_there_once(mailenv, bye):
    """Exchange answers a throttled APPEND instead of its continuation (the message is
    not sent), maybe with a BYE: the APPEND is sent again after the wait, never twice."""
    local = mailenv / "local"
    for body in INBOX:
        write_local(local, "INBOX", body)
    for body in ARCHIVE:
        write_local(local, "Archive", body)
    rules = [
        Throttle("APPEND", skip=1, backoff_ms=120, bye=bye),
        Throttle("APPEND", skip=4, backoff_ms=80, status="BAD", bye=bye),
        Throttle("SELECT", skip=1, backoff_ms=60),
    ]
    with server({"Archive": []}, throttles=rules) as fake:
        result = push(fake, local, "--json")
        assert result.exit_code == 0, result.output
        assert on_server(fake) == {"INBOX": Counter(INBOX), "Archive": Counter(ARCHIVE)}
        assert [(rule.answered, rule.early) for rule in rules] == [(1, 0)] * 3
        assert sum(f["throttled"] for f in folders_of(result).values()) == 3
        again = push(fake, local)
        assert again.exit_code == 0, again.output
        assert on_server(fake) == {"INBOX": Counter(INBOX), "Archive": Counter(ARCHIVE)}


def test_a_server_that_throttled_once_gets_its_appends_one_at_a_time(mailenv):
    """A server that does not greet as Exchange gets its APPENDs pipelined (LITERAL+:
    its first window finds the rest of INBOX's batch in flight, each answered throttled
    and sent again alone after the wait); once it has throttled, the run sends one at a
    time, so a window opened by Archive's first APPEND finds no other early.  Every
    message arrives once."""
    local = mailenv / "local"
    for body in INBOX:
        write_local(local, "INBOX", body)
    for body in ARCHIVE:
        write_local(local, "Archive", body)
    first = Throttle("APPEND", skip=1, backoff_ms=100)
    archive = {"answered": 0, "early": 0}  # the second window: Archive's first APPEND

    def archive_window(fake, connection, command, args):
        if command != "APPEND" or "Archive" not in str(args[0]) or not first.answered:
            return None
        now = time.monotonic()
        if "until" not in archive:
            archive["until"] = now + 0.08
        elif now < archive["until"]:
            archive["early"] += 1
        else:
            return None
        archive["answered"] += 1
        left = max(1, round((archive["until"] - now) * 1000))
        return fake._answer(
            f"NO Request is throttled. Suggested Backoff Time: {left} milliseconds", None
        )

    with server({"Archive": []}, throttles=[first], fault=archive_window) as fake:
        fake.greeting = "* OK IMAP4rev1 server ready"  # (not Microsoft's)
        result = push(fake, local, "--json")
        assert result.exit_code == 0, result.output
        assert on_server(fake) == {"INBOX": Counter(INBOX), "Archive": Counter(ARCHIVE)}
        assert first.early > 0  # pipelined until the first throttled answer
        assert (archive["answered"], archive["early"]) == (1, 0)  # then one at a time
        again = push(fake, local)
        assert again.exit_code == 0, again.output
        assert on_server(fake) == {"INBOX": Counter(INBOX), "Archive": Counter(ARCHIVE)}


def test_a_wait_beyond_the_cap_is_cut_and_the_server_asked_again(mailenv, monkeypatch):
    """THROTTLE_CAP bounds one wait: after it the command is sent again, and the server
    says what is left (the waits add up to its backoff)."""
    monkeypatch.setattr(imap_patience, "THROTTLE_CAP", 0.05)
    rule = Throttle("UID FETCH", backoff_ms=180)
    local = mailenv / "local"
    with server({"INBOX": INBOX}, throttles=[rule]) as fake:
        result = pull(fake, local, "--json")
    assert result.exit_code == 0, result.output
    assert maildir_bodies(local) == {"INBOX": Counter(INBOX)}
    # Each wait but the last was cut short (the server was asked again early); the last
    # was what the server said was left.
    assert rule.answered >= 2 and rule.early == rule.answered - 1
    (inbox,) = folders_of(result).values()
    assert inbox["throttled"] == rule.answered
    assert inbox["throttled_seconds"] <= 0.05 * rule.answered


def test_throttling_longer_than_throttle_wait_fails_the_folder_and_a_rerun_completes(mailenv):
    """A backoff the run will not wait (throttle_wait) fails the folder at once, with
    exit 1 and one line saying what to do; what was copied is kept, and the next run,
    once the server serves again, completes without copying anything twice."""
    rule = Throttle("UID FETCH", skip=2, backoff_ms=600_000)  # Archive's listing
    local = mailenv / "local"
    with server({"INBOX": INBOX, "Archive": ARCHIVE}, throttles=[rule]) as fake:
        first = pull(fake, local, "--json", query="tls=none&throttle_wait=30")
        assert first.exit_code == 1, first.output
        assert (rule.answered, rule.early) == (1, 0)  # given up without waiting
        reports = folders_of(first)
        assert not reports["INBOX"]["errors"]
        (error,) = reports["Archive"]["errors"]
        assert "the server kept throttling fetch (it asks for 600 s more; 0 s waited" in error
        assert "throttle_wait is 30 s); gave up. The state is consistent: rerun later" in error
        assert maildir_bodies(local) == {"INBOX": Counter(INBOX), "Archive": Counter()}
        fake.throttles.clear()  # the window has passed
        second = pull(fake, local)
    assert second.exit_code == 0, second.output
    assert "copied 3 to local" in second.stdout and "copied 6" not in second.stdout
    assert maildir_bodies(local) == {"INBOX": Counter(INBOX), "Archive": Counter(ARCHIVE)}


def test_throttle_wait_must_be_a_number(mailenv):
    with server({}) as fake:
        result = pull(fake, mailenv / "local", query="tls=none&throttle_wait=soon")
    assert result.exit_code == 2
    assert "throttle_wait must be a number of seconds" in result.output


# -- "User is authenticated but not connected" --------------------------------------------------


def test_not_connected_sessions_are_logged_in_again(mailenv):
    local = mailenv / "local"
    with server({"INBOX": INBOX}, not_connected=2) as fake:
        result = pull(fake, local)
        logins = len(fake.logins)
    assert result.exit_code == 0, result.output
    assert maildir_bodies(local) == {"INBOX": Counter(INBOX)}
    assert logins == 3
    assert result.stderr.count("the server says the session is not connected") == 2


def test_always_not_connected_is_exit_3_after_a_few_logins(mailenv):
    local = mailenv / "local"
    with server({"INBOX": INBOX}, not_connected=1000) as fake:
        result = pull(fake, local)
        logins = len(fake.logins)
    assert result.exit_code == 3, result.output
    assert logins == imap_patience.RECONNECT_ATTEMPTS + 1
    (line,) = [x for x in result.stderr.splitlines() if "error" in x.lower() or "mailsync:" in x][
        -1:
    ]
    assert "User is authenticated but not connected" in line
    assert "check that IMAP is enabled for it" in line
    assert not (local / "INBOX").exists() or not maildir_bodies(local).get("INBOX")


# -- message size ---------------------------------------------------------------------------------

BIG = message(5, "the big one", b"x" * 2000 + b"\n")


@pytest.mark.parametrize(
    "options, sent",
    [
        ({"announce_appendlimit": True}, False),  # APPENDLIMIT=1500: never sent
        ({}, True),  # "NO Maximum size of appendable message has been exceeded."
        ({"too_big": "BAD Command Argument Error. 11"}, True),
    ],
    ids=["appendlimit", "no", "bad"],
)
def test_a_message_over_the_size_limit_is_refused_named_and_not_retried(mailenv, options, sent):
    local = mailenv / "local"
    for body in (message(1), BIG, message(3)):
        write_local(local, "INBOX", body)
    with server({}, max_message_size=1500, **options) as fake:

        def appends() -> int:
            return sum(1 for c in fake.commands() if c.startswith("APPEND"))

        first = push(fake, local)
        assert first.exit_code == 1, first.output
        assert on_server(fake)["INBOX"] == Counter([message(1), message(3)])
        assert appends() == (3 if sent else 2)
        (line,) = [x for x in first.stderr.splitlines() if "the big one" in x]
        assert "INBOX: the remote side refuses local message" in line
        assert 'Mon, 4 Mar 2019 05:06:07 +0000, from a@example.org, "the big one"' in line
        assert f"{len(wire(BIG))} bytes" in line
        if not sent:
            assert "over the server's limit of 1500 bytes (APPENDLIMIT); not sent" in line
        assert "later runs will not offer it again (--retry-refused does)" in line

        second = push(fake, local)
        assert second.exit_code == 0, second.output
        assert appends() == (3 if sent else 2)  # not offered again
        assert "1 message(s) refused for good by the remote side" in second.stderr
        assert '"the big one"' in run("status").stdout

        retried = push(fake, local, "--retry-refused")
        assert retried.exit_code == 1, retried.output
        assert appends() == (4 if sent else 2)  # offered again (APPENDLIMIT: checked again)
        assert "the big one" in retried.stderr
        assert on_server(fake)["INBOX"] == Counter([message(1), message(3)])


# -- an access token that expires mid-run ----------------------------------------------------


# Until the IMAP store takes a token_command (branch i12-login), the token is the password
# of the fake's LOGIN knob; after that, the same run logs in with XOAUTH2 as Exchange wants.
TOKEN_LOGIN = "token_command" in STORE_OPTIONS["imaps"]


@pytest.mark.parametrize(
    "login",
    [
        "password_command",
        pytest.param(
            "token_command",
            marks=pytest.mark.skipif(
                not TOKEN_LOGIN, reason="the IMAP store takes no token_command yet (i12-login)"
            ),
        ),
    ],
)
def test_an_expired_token_mid_run_logs_in_again_with_a_fresh_one(mailenv, tmp_path, login):
    """``* BYE Session invalidated - AccessTokenExpired``: the credentials are asked for
    again (a token_command printing the current token, or, before mailsync's IMAP store
    speaks XOAUTH2, a password_command doing so for the fake's LOGIN knob) and the run
    goes on."""
    token_file = tmp_path / "token"
    token_file.write_text("token-1\n")
    local = mailenv / "local"
    fetches = []

    def expire_on_the_third_fetch(fake, connection, command, args):
        if command == "UID FETCH":
            fetches.append(connection)
            if len(fetches) == 3:
                fake.tokens.add("token-2")
                token_file.write_text("token-2\n")
                fake.expire_token("token-1")
        return None

    with FakeM365(
        {"INBOX": [wire(b) for b in INBOX], "Archive": [wire(b) for b in ARCHIVE]},
        allow_login=login == "password_command",
        tokens=("token-1",),
        fault=expire_on_the_third_fetch,
    ) as fake:
        query = f"tls=none&{login}=cat%20{token_file}"
        result = run("pull", "--jobs", "1", fake.url(query=query), f"maildir:{local}")
        logins = [token for _, _, token in fake.logins]
    assert result.exit_code == 0, result.output
    assert maildir_bodies(local) == {"INBOX": Counter(INBOX), "Archive": Counter(ARCHIVE)}
    assert logins[-1] == "token-2" and set(logins) == {"token-1", "token-2"}
    assert "the server ended the session" in result.stderr
    assert "token-1" not in result.output and "token-2" not in result.output


class PerFolderLimits(FakeM365):
    """A server with a limit per folder (RFC 7889: a bare APPENDLIMIT in CAPABILITY, each
    folder's in STATUS; NIL for none), which Exchange Online does not do."""

    limits = {"INBOX": 1500, "Archive": None}

    def _caps(self, session) -> str:
        return super()._caps(session) + (" APPENDLIMIT" if session["auth"] else "")

    def _cmd_status(self, send, tag, session, args, action):
        if [str(a).upper() for a in args[1]] != ["APPENDLIMIT"]:
            return super()._cmd_status(send, tag, session, args, action)
        box = self._box(args[0])
        limit = self.limits.get(box.name)
        send(f'* STATUS "{box.name}" (APPENDLIMIT {"NIL" if limit is None else limit})\r\n')
        send(f"{tag} OK STATUS completed.\r\n")


def test_a_folder_limit_from_status_refuses_before_sending(mailenv):
    local = mailenv / "local"
    for folder in ("INBOX", "Archive"):
        for body in (message(1), BIG):
            write_local(local, folder, body)
    with PerFolderLimits({"Archive": []}, allow_login=True) as fake:
        result = push(fake, local)
        appends = [c.split(" ")[1] for c in fake.commands() if c.startswith("APPEND")]
        statuses = [c for c in fake.commands() if c.endswith("(APPENDLIMIT)")]
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.stderr.splitlines() if "the big one" in x]
    assert line.startswith("mailsync: INBOX: the remote side refuses local message")
    assert "over the server's limit of 1500 bytes (APPENDLIMIT); not sent" in line
    assert sorted(appends) == ['"Archive"', '"Archive"', '"INBOX"']  # the big one: Archive only
    assert len(statuses) == 2  # once per folder
    assert on_server(fake)["Archive"] == Counter([message(1), BIG])


def test_an_expired_token_during_an_append_sends_that_message_once(mailenv, tmp_path):
    """The BYE of an expired token instead of an APPEND's answer: whether the message
    arrived is not known, so it is not sent again in that run (exit 1); the next run
    finds it or sends it, and every message is there once."""
    token_file = tmp_path / "token"
    token_file.write_text("token-1\n")
    local = mailenv / "local"
    for body in INBOX:
        write_local(local, "INBOX", body)
    appends = []

    def expire_on_the_third_append(fake, connection, command, args):
        if command == "APPEND":
            appends.append(connection)
            if len(appends) == 3:
                fake.tokens.add("token-2")
                token_file.write_text("token-2\n")
                fake.expire_token("token-1")
        return None

    query = f"tls=none&password_command=cat%20{token_file}"
    with FakeM365(allow_login=True, tokens=("token-1",), fault=expire_on_the_third_append) as fake:
        url = fake.url(query=query)
        first = run("push", "--jobs", "1", f"maildir:{local}", url)
        assert first.exit_code == 1, first.output
        assert "the connection dropped while appending; the next run finds" in first.stderr
        assert len(fake.mailboxes["INBOX"].messages) == 5  # the others went on
        second = run("push", "--jobs", "1", f"maildir:{local}", url)
        assert second.exit_code == 0, second.output
        assert on_server(fake) == {"INBOX": Counter(INBOX)}
