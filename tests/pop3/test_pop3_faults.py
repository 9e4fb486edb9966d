"""The POP3 store against a scripted fake server, for what Dovecot cannot produce: no
UIDL (with and without TOP), duplicate UIDLs, a connection dropped in mid-RETR, a RETR
without its terminating ".", a garbage status line, a refusing greeting."""

from __future__ import annotations

from collections import Counter

import pytest
from fakepop import Behaviour, FakePOP3, make_tls_context
from imaptools import maildir_bodies, message, run, run_measured

from mailsync.stores import pop3_session

PASSWORD = "secret-pw-7"


def bodies(n: int) -> list[bytes]:
    return [message(i, extra=b".dot line\n") for i in range(n)]


def pull(fake: FakePOP3, root, *extra: str):
    return run(*extra, "pull", fake.url(), root, password=PASSWORD)


def local(root) -> Counter:
    return maildir_bodies(root).get("INBOX", Counter())


@pytest.fixture
def serve():
    started = []

    def start(messages, **behaviour):
        fake = FakePOP3(list(messages), user="alice", password=PASSWORD,
                        behaviour=Behaviour(**behaviour))  # fmt: skip
        started.append(fake.start())
        return fake

    yield start
    for fake in started:
        fake.stop()


def retrs(fake: FakePOP3) -> int:
    return sum(1 for c in fake.commands if c.startswith("RETR"))


def test_no_uidl_falls_back_to_header_digests_with_a_warning(serve, mailenv):
    fake = serve(bodies(5), uidl=False)
    root = mailenv / "mail"
    result = pull(fake, root)
    assert result.exit_code == 0, result.output
    assert "does not support UIDL" in result.stderr
    assert "reads the headers of all messages (TOP)" in result.stderr
    assert local(root) == Counter(bodies(5))
    fake.add(message(99))
    before = retrs(fake)
    result = pull(fake, root)
    assert result.exit_code == 0, result.output
    assert "copied 1 to local" in result.output
    assert retrs(fake) - before == 1  # the old ones were told apart by TOP, not downloaded
    assert local(root) == Counter([*bodies(5), message(99)])


def test_no_uidl_and_no_top_downloads_to_compare_and_says_so(serve, mailenv):
    fake = serve(bodies(3), uidl=False, top=False)
    root = mailenv / "mail"
    assert pull(fake, root).exit_code == 0
    result = pull(fake, root)
    assert result.exit_code == 0, result.output
    assert "every run downloads all 3 messages" in result.stderr
    assert "copied 0 to local" in result.output
    assert local(root) == Counter(bodies(3))


def test_identical_messages_without_uidl_are_both_kept(serve, mailenv):
    fake = serve([message(1), message(1), message(2)], uidl=False)
    root = mailenv / "mail"
    assert pull(fake, root).exit_code == 0
    assert pull(fake, root).exit_code == 0
    assert local(root) == Counter([message(1), message(1), message(2)])


def test_duplicate_uidls_are_told_apart_by_content(serve, mailenv):
    fake = serve(bodies(4), uidls=["a", "same", "same", "d"])
    root = mailenv / "mail"
    result = pull(fake, root)
    assert result.exit_code == 0, result.output
    assert "duplicate or unusable UIDL" in result.stderr
    assert local(root) == Counter(bodies(4))
    result = pull(fake, root)
    assert "copied 0 to local" in result.output
    assert local(root) == Counter(bodies(4))


def test_unusable_uidl_is_not_used_as_a_key(serve, mailenv):
    fake = serve(bodies(2), uidls=["x" * 200, "ok"])
    root = mailenv / "mail"
    result = pull(fake, root)
    assert result.exit_code == 0, result.output
    assert "duplicate or unusable UIDL" in result.stderr
    assert pull(fake, root).exit_code == 0
    assert local(root) == Counter(bodies(2))


def test_connection_dropped_mid_retr_is_resumed(serve, mailenv):
    fake = serve(bodies(6), drop_in_retr=3, drop_after=40)
    root = mailenv / "mail"
    result = pull(fake, root)
    assert result.exit_code == 0, result.output
    assert "connection lost while downloading" in result.stderr
    assert fake.sessions == 2
    assert local(root) == Counter(bodies(6))


def test_connection_dropped_every_time_fails_cleanly_and_a_rerun_finishes(serve, mailenv):
    fake = serve(bodies(6), drop_in_retr=4, drop_times=-1)
    root = mailenv / "mail"
    result = pull(fake, root)
    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") <= 3 and "connection lost" in result.stderr
    got = local(root)
    assert max(got.values()) == 1 and bodies(6)[3] not in got
    fake.behaviour.drop_in_retr = None
    result = pull(fake, root)
    assert result.exit_code == 0, result.output
    assert local(root) == Counter(bodies(6))


def test_retr_without_terminator_loses_nothing(serve, mailenv):
    fake = serve(bodies(5), malformed_retr=2)
    root = mailenv / "mail"
    result = pull(fake, root)
    assert result.exit_code != 0
    assert bodies(5)[1] not in local(root)  # a truncated body is never stored
    fake.behaviour.malformed_retr = None
    assert pull(fake, root).exit_code == 0
    assert local(root) == Counter(bodies(5))


def test_garbage_status_line_is_a_clear_error(serve, mailenv):
    fake = serve(bodies(2), garbage_status=True)
    result = pull(fake, mailenv / "mail")
    assert result.exit_code == 1
    assert "cannot read" in result.stderr and "garbage" in result.stderr
    assert not local(mailenv / "mail")


def test_refusing_greeting(serve, mailenv):
    fake = serve(bodies(1), greeting="-ERR [SYS/TEMP] maintenance")
    result = pull(fake, mailenv / "mail")
    assert result.exit_code == 3
    assert "refused the session" in result.stderr and "maintenance" in result.stderr


def test_no_pipelining_still_works(serve, mailenv):
    fake = serve(bodies(5), pipelining=False)
    root = mailenv / "mail"
    assert pull(fake, root).exit_code == 0
    assert local(root) == Counter(bodies(5))


def test_list_sizes_that_lie_do_not_matter(serve, mailenv):
    fake = serve(bodies(3), list_size_lie=-50)
    root = mailenv / "mail"
    assert pull(fake, root).exit_code == 0
    assert local(root) == Counter(bodies(3))


def test_password_never_reaches_the_log(serve, mailenv):
    fake = serve(bodies(1))
    result = pull(fake, mailenv / "mail", "-vv")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert "pop3: > PASS ****" in result.stderr


def test_stls_refused_when_not_offered(serve, mailenv):
    fake = serve(bodies(1))  # no STLS offered
    url = fake.url().replace("?tls=none", "")
    result = run("pull", url, mailenv / "mail", password=PASSWORD)
    assert result.exit_code == 3
    assert "does not offer STLS" in result.stderr
    assert not any(c.startswith(("PASS", "AUTH", "APOP", "USER")) for c in fake.commands)


def test_stls_upgrade_against_the_fake(mailenv, tmp_path):
    context, cafile = make_tls_context(tmp_path / "tls")
    fake = FakePOP3(bodies(2), user="alice", password=PASSWORD,
                    behaviour=Behaviour(stls=True), tls_context=context).start()  # fmt: skip
    try:
        result = run("pull", f"{fake.url()}?cafile={cafile}", mailenv / "mail", password=PASSWORD)
        assert result.exit_code == 0, result.output
        assert fake.commands.index("STLS") < fake.commands.index("USER alice")
    finally:
        fake.stop()
    assert local(mailenv / "mail") == Counter(bodies(2))


@pytest.mark.parametrize(
    "behaviour, want",
    [
        ({"sasl_plain": True, "apop": True}, "APOP"),  # plain text: APOP keeps it secret
        ({"apop": True}, "APOP"),
        ({"sasl_plain": True}, "AUTH"),
        ({}, "USER"),
    ],
)
def test_auto_login_choice_without_tls(serve, mailenv, behaviour, want):
    fake = serve(bodies(1), **behaviour)
    assert pull(fake, mailenv / "mail").exit_code == 0
    logins = [c.split()[0] for c in fake.commands if c.split()[0] in ("USER", "APOP", "AUTH")]
    assert logins == [want]


def test_wrong_password_against_the_fake_is_one_login(serve, mailenv):
    fake = serve(bodies(1), sasl_plain=True)
    result = run("pull", fake.url(), mailenv / "mail", password="not-it")
    assert result.exit_code == 3
    assert sum(c.startswith(("AUTH", "USER", "APOP")) for c in fake.commands) == 1


# -- a hostile server (issue 10) ---------------------------------------------------------


@pytest.mark.parametrize("verbose", [[], ["-vv"]])
def test_a_refused_pass_echoing_the_password_does_not_show_it(verbose, serve, mailenv):
    """ "-ERR [AUTH] PASS <password> refused" went into the error line as it came."""
    fake = serve(bodies(1), echo_pass=True)
    result = run(*verbose, "pull", fake.url(), mailenv / "mail", password="hunter2-pw")
    assert result.exit_code == 3
    assert "login failed ([AUTH] PASS **** refused)" in result.stderr
    assert "hunter2" not in result.output


def test_a_dripping_retr_is_given_up_with_a_clear_error(serve, tmp_path):
    """A RETR dripping a byte every 50 ms, each well within the socket timeout: given up
    (then once more on a new connection, as a dropped one is).  Before the fix it ran
    until the child's timeout killed it."""
    fake = serve(bodies(3), drip_retr=2)
    result, _ = run_measured(
        "pull", fake.url() + "&timeout=1", tmp_path / "mail", password=PASSWORD, home=tmp_path
    )
    assert result.returncode == 3, result.stderr
    assert "gave up during RETR (the server sent" in result.stderr
    assert "slower than 1 KiB/s" in result.stderr


def test_an_endless_capa_before_login_is_refused(serve, mailenv):
    """CAPA comes before STLS and login: 300,000 lines of it (an endless one filled up to
    1 GiB before the fix, which took this one whole) are refused past 64 KiB."""
    fake = serve(bodies(1), capa_lines=300_000)
    result = pull(fake, mailenv / "mail")
    assert result.exit_code == 1, result.output  # the session's folder fails, as for garbage
    assert "cannot read (login: a response of more than 64.0 KB)" in result.stderr
    assert not any(c.startswith(("USER", "PASS", "AUTH", "APOP")) for c in fake.commands)


def test_a_listing_longer_than_any_maildrop_is_refused(serve, mailenv, monkeypatch):
    """LIST and UIDL are bounded (MAX_LISTING lines, here lowered to keep the test small):
    an endless listing is not parsed into an endless list."""
    monkeypatch.setattr(pop3_session, "MAX_LISTING", 100)
    fake = serve(bodies(150))
    result = pull(fake, mailenv / "mail")
    assert result.exit_code == 1, result.output
    assert "lists more than 100 messages" in result.stderr
