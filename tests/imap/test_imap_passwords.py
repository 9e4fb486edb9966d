"""Two accounts in one run, each with its own password: ?password_command= in the store URL
works, and two accounts that would both take MAILSYNC_PASSWORD are refused up front."""

from __future__ import annotations

import socket
from collections import Counter

from imaptools import Msg, message, run, seed, server_bodies

from mailsync.message import to_lf


def with_command(server, user) -> str:
    command = f"echo {user.password}".replace(" ", "%20")
    return f"{server.url('imaps', user)}?cafile={server.cafile}&password_command={command}"


def test_password_command_in_each_url_lets_two_accounts_share_a_run(dovecot_server, mailenv):
    old, new = dovecot_server.add_user(), dovecot_server.add_user()
    seed(dovecot_server, old, {"INBOX": [Msg(message(1)), Msg(message(2))]})
    # MAILSYNC_PASSWORD is wrong for both: each URL's password_command comes first.
    result = run(
        "pull", with_command(dovecot_server, old), with_command(dovecot_server, new),
        password="wrong",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert server_bodies(dovecot_server, new)["INBOX"] == Counter(to_lf(message(n)) for n in (1, 2))
    assert old.password not in result.output and new.password not in result.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_accounts_on_mailsync_password_are_refused_before_connecting(mailenv):
    with socket.socket() as listener:  # would see a connection attempt
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0)
        port = listener.getsockname()[1]
        a = f"imap://alice@127.0.0.1:{port}?tls=none"
        b = f"imap://bob@localhost:{port}?tls=none"
        result = run("pull", a, b, password="secret")
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1
        assert "would both take their password from MAILSYNC_PASSWORD" in result.stderr
        assert "?password_command=" in result.stderr
        try:
            listener.accept()
            raise AssertionError("mailsync connected although the run was refused")
        except BlockingIOError:
            pass
    assert not (mailenv / "state").exists()


def test_one_account_on_two_urls_or_one_password_command_is_fine(mailenv):
    port = free_port()  # nothing listens: these runs get as far as connecting (exit 3)
    same = run(
        "sync", f"imap://alice@127.0.0.1:{port}?tls=none", f"imaps://alice@127.0.0.1:{port}",
        password="secret",
    )  # fmt: skip
    assert same.exit_code == 3, same.output
    own = run(
        "pull", f"imap://alice@127.0.0.1:{port}?tls=none",
        f"imap://bob@127.0.0.1:{port}?tls=none&password_command=echo%20pw",
        password="secret",
    )  # fmt: skip
    assert own.exit_code == 3, own.output
    assert "MAILSYNC_PASSWORD" not in own.output
