"""The POP3 store against a real Dovecot POP3 server: byte-exact downloads, reruns that
download nothing twice, leave-on-server, delete after download, delete after N days,
max_size, arrival dates, authentication methods and TLS."""

from __future__ import annotations

import os
import poplib
import re
import time
from collections import Counter
from email.utils import format_datetime
from pathlib import Path

import pytest
from imaptools import maildir_bodies, maildir_files, message, run, when

from mailsync.message import to_lf

DAY = 86400
poplib._MAXLINE = 1 << 20  # the reference reader must take long lines (RFC 5322 allows 998+)


def pop3s(server, user, **query) -> str:
    options = {"cafile": server.cafile, **query}
    return f"{server.url('pop3s', user)}?" + "&".join(f"{k}={v}" for k, v in options.items())


def deliver(server, user, *bodies: bytes) -> None:
    """New mail, as a delivery agent would leave it (IMAP APPEND into INBOX)."""
    client = server.imap(user)
    try:
        for body in bodies:
            client.append("INBOX", body.replace(b"\n", b"\r\n"))
    finally:
        client.logout()


def on_server(server, user) -> Counter:
    """The bodies (LF) the server's maildrop holds, by POP3 itself."""
    client = server.pop3(user)
    try:
        count, _ = client.stat()
        out = Counter()
        for n in range(1, count + 1):
            _, lines, _ = client.retr(n)
            # poplib strips CRLF and dot-stuffing; the body ends with a line break.
            out[to_lf(b"\r\n".join(lines) + b"\r\n")] += 1
        return out
    finally:
        client.quit()


def local(root: Path, folder: str = "INBOX") -> Counter:
    return maildir_bodies(root).get(folder, Counter())


def mbox_bodies(path: Path) -> Counter:
    """The bodies of an mboxrd file, read independently of mailsync: split at From_
    lines, drop each message's separator line end, take one > off every >+From line."""
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.startswith(b"From ")
    out = Counter()
    for chunk in re.split(rb"(?m)^From ", data)[1:]:
        body = chunk.split(b"\n", 1)[1]
        assert body.endswith(b"\n"), chunk[:80]
        out[re.sub(rb"(?m)^>(>*From )", rb"\1", body[:-1])] += 1
    return out


def local_bodies(root: Path, kind: str, folder: str = "INBOX") -> Counter:
    """What a Maildir tree or an mbox tree (one file per folder) holds in `folder`."""
    return local(root, folder) if kind == "maildir" else mbox_bodies(root / folder)


def config(tmp_path: Path, server, user, store: str = "", channel: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[store.pop]\nurl = "{server.url("pop3s", user)}"\ncafile = "{server.cafile}"\n'
        f"{store}\n"
        f'[store.backup]\nurl = "maildir:{tmp_path / "mail"}"\n\n'
        f'[channel.mail]\nremote = "pop"\nlocal = "backup"\n{channel}\n'
    )
    return path


ODD = [
    message(1),
    message(2, "dots", b".\n..\n.starts with a dot\n...\n"),
    message(3, "From lines", b"From the start\n>From quoted\n"),
    "From: Zoë <z@example.de>\nSubject: Grüße ✓\n\nÄpfel\n".encode(),
    b"Subject: no final newline\n\nlast line",
    message(6, "long line", b"x" * 5000 + b"\n"),
    message(1),  # the same bytes again: two messages, both kept
]


def test_pull_is_byte_exact_and_a_rerun_downloads_nothing(
    dovecot_server, dovecot_user, mailenv, monkeypatch
):
    deliver(dovecot_server, dovecot_user, *ODD)
    url = pop3s(dovecot_server, dovecot_user)
    root = mailenv / "mail"
    result = run("pull", url, root, password=dovecot_user.password)
    assert result.exit_code == 0, result.output
    assert "INBOX: copied 7 to local" in result.output
    # What the server sends is what is stored (with LF line ends); the body without a
    # final newline gets the one every POP3 server adds (RFC 1939 responses are lines).
    want = Counter(on_server(dovecot_server, dovecot_user))
    assert local(root) == want
    assert want[message(1)] == 2
    assert sum(want.values()) == len(ODD)  # left on the server

    commands = []
    from mailsync.stores import pop3 as popmod

    send = popmod._Session._send

    def spy(self, *lines, secret=False):
        commands.extend(line.split()[0] for line in lines)
        return send(self, *lines, secret=secret)

    monkeypatch.setattr(popmod._Session, "_send", spy)
    result = run("pull", url, root, password=dovecot_user.password)
    assert result.exit_code == 0, result.output
    assert "INBOX: copied 0 to local" in result.output
    assert "RETR" not in commands and "TOP" not in commands and "DELE" not in commands
    assert local(root) == want


def test_new_mail_after_others_were_deleted_is_downloaded_once(
    dovecot_server, dovecot_user, mailenv
):
    """Message numbers shift when another client deletes mail: keys are UIDLs."""
    deliver(dovecot_server, dovecot_user, *(message(n) for n in range(10)))
    url = pop3s(dovecot_server, dovecot_user)
    root = mailenv / "mail"
    assert run("pull", url, root, password=dovecot_user.password).exit_code == 0
    client = dovecot_server.pop3(dovecot_user)  # another POP client deletes 1, 2 and 7
    for n in (1, 2, 7):
        client.dele(n)
    client.quit()
    deliver(dovecot_server, dovecot_user, message(10), message(11))
    result = run("pull", url, root, password=dovecot_user.password)
    assert result.exit_code == 0, result.output
    assert "INBOX: copied 2 to local" in result.output
    assert local(root) == Counter(message(n) for n in range(12))


def test_delete_after_download(dovecot_server, dovecot_user, mailenv):
    deliver(dovecot_server, dovecot_user, *(message(n) for n in range(5)))
    conf = config(mailenv, dovecot_server, dovecot_user, 'delete = "after-download"')
    env = {"MAILSYNC_PASSWORD": dovecot_user.password}
    result = run("--config", conf, "pull", "mail", env=env)
    assert result.exit_code == 0, result.output
    assert local(mailenv / "mail") == Counter(message(n) for n in range(5))
    assert on_server(dovecot_server, dovecot_user) == Counter()
    assert "deleted 5" in result.output

    deliver(dovecot_server, dovecot_user, message(5))
    result = run("--config", conf, "pull", "mail", env=env)
    assert result.exit_code == 0, result.output
    assert "copied 1 to local" in result.output and "deleted 1" in result.output
    assert local(mailenv / "mail") == Counter(message(n) for n in range(6))
    assert on_server(dovecot_server, dovecot_user) == Counter()


def test_pull_into_mbox_is_byte_exact_and_deletes_after_download(
    dovecot_server, dovecot_user, mailenv
):
    """The destination may be an mbox tree: INBOX is one mboxrd file, From lines in the
    bodies quoted and unquoted exactly, and a rerun leaves the file alone."""
    deliver(dovecot_server, dovecot_user, *ODD)
    want = on_server(dovecot_server, dovecot_user)
    url = pop3s(dovecot_server, dovecot_user, delete="after-download")
    root = mailenv / "mbox"
    result = run("pull", url, f"mbox:{root}", password=dovecot_user.password)
    assert result.exit_code == 0, result.output
    assert "INBOX: copied 7 to local" in result.output and "deleted 7" in result.output
    assert mbox_bodies(root / "INBOX") == want
    assert b"\n>From the start\n>>From quoted\n" in (root / "INBOX").read_bytes()
    assert on_server(dovecot_server, dovecot_user) == Counter()

    before = (root / "INBOX").read_bytes()
    result = run("pull", url, f"mbox:{root}", password=dovecot_user.password)
    assert result.exit_code == 0, result.output
    assert "INBOX: copied 0 to local" in result.output
    assert (root / "INBOX").read_bytes() == before

    deliver(dovecot_server, dovecot_user, message(8))
    result = run("pull", url, f"mbox:{root}", password=dovecot_user.password)
    assert result.exit_code == 0, result.output
    assert mbox_bodies(root / "INBOX") == want + Counter([message(8)])
    assert (root / "INBOX").read_bytes().startswith(before)  # appended, nothing rewritten


def test_nothing_is_deleted_when_the_local_copies_are_gone(dovecot_server, dovecot_user, mailenv):
    """Deletion needs the local copy to be there: a local tree that vanished (an unmounted
    disk) must not let the server's copies go."""
    deliver(dovecot_server, dovecot_user, *(message(n) for n in range(4)))
    conf = config(mailenv, dovecot_server, dovecot_user, "delete_after_days = 1")
    env = {"MAILSYNC_PASSWORD": dovecot_user.password}
    now = time.time()
    assert (
        run("--config", conf, "pull", "mail", env={**env, "MAILSYNC_NOW": str(now)}).exit_code == 0
    )
    for path in sum(maildir_files(mailenv / "mail").values(), []):
        path.unlink()
    later = {**env, "MAILSYNC_NOW": str(now + 3 * DAY)}
    result = run("--config", conf, "pull", "mail", env=later)
    assert result.exit_code == 0, result.output
    assert sum(on_server(dovecot_server, dovecot_user).values()) == 4


def test_delete_after_days(dovecot_server, dovecot_user, mailenv):
    deliver(dovecot_server, dovecot_user, message(1), message(2))
    conf = config(mailenv, dovecot_server, dovecot_user, "delete_after_days = 3")
    env = {"MAILSYNC_PASSWORD": dovecot_user.password}
    start = time.time()

    def pull_at(days: float):
        result = run(
            "--config", conf, "pull", "mail", env={**env, "MAILSYNC_NOW": str(start + days * DAY)}
        )
        assert result.exit_code == 0, result.output
        return result

    pull_at(0)
    assert sum(on_server(dovecot_server, dovecot_user).values()) == 2
    deliver(dovecot_server, dovecot_user, message(3))
    pull_at(2)  # message 3 downloaded on day 2
    assert sum(on_server(dovecot_server, dovecot_user).values()) == 3
    result = pull_at(3.5)  # 1 and 2 are 3.5 days old, 3 is 1.5 days old
    assert "deleted 2" in result.output
    assert on_server(dovecot_server, dovecot_user) == Counter([message(3)])
    pull_at(5.1)
    assert on_server(dovecot_server, dovecot_user) == Counter()
    assert local(mailenv / "mail") == Counter(message(n) for n in (1, 2, 3))


def test_dry_run_says_what_would_be_downloaded_and_deleted(dovecot_server, dovecot_user, mailenv):
    deliver(dovecot_server, dovecot_user, *(message(n) for n in range(3)))
    conf = config(mailenv, dovecot_server, dovecot_user, 'delete = "after-download"')
    env = {"MAILSYNC_PASSWORD": dovecot_user.password}
    result = run("--config", conf, "-v", "pull", "--dry-run", "--json", "mail", env=env)
    assert result.exit_code == 0, result.output
    planned = __import__("json").loads(result.stdout)["channels"][0]["folders"][0]["planned"]
    assert planned["copy_a_to_b"] == 3 and planned["delete_a"] == 3
    assert "would delete remote" in result.stderr
    assert sum(on_server(dovecot_server, dovecot_user).values()) == 3
    assert not (mailenv / "mail").exists() or not local(mailenv / "mail")


def test_max_size_skips_with_a_warning(dovecot_server, dovecot_user, mailenv):
    big = message(9, "big", b"y" * 40_000 + b"\n")
    deliver(dovecot_server, dovecot_user, message(1), big)
    conf = config(
        mailenv, dovecot_server, dovecot_user, 'max_size = "20K"\ndelete = "after-download"'
    )
    env = {"MAILSYNC_PASSWORD": dovecot_user.password}
    for _ in range(2):  # every run says so again
        result = run("--config", conf, "pull", "mail", env=env)
        assert result.exit_code == 0, result.output
        assert re.search(r"larger than max_size \(20\.0 KB\): left on the server", result.stderr)
        assert "skipped 1" in result.stdout
    assert local(mailenv / "mail") == Counter([message(1)])
    assert on_server(dovecot_server, dovecot_user) == Counter([big])


def test_arrival_date_from_received_then_date(dovecot_server, dovecot_user, mailenv):
    received = (
        b"Received: from b by c; Tue, 5 Mar 2019 10:00:00 +0000\n"
        b"Received: from a by b; Tue, 5 Mar 2019 09:00:00 +0000\n"
        b"Subject: received\nDate: Mon, 1 Jan 2018 00:00:00 +0000\n\nhi\n"
    )
    dated = f"Subject: dated\nDate: {format_datetime(when(2017, 6, 1, 8))}\n\nhi\n".encode()
    undated = b"Subject: no date\n\nhi\n"
    deliver(dovecot_server, dovecot_user, received, dated, undated)
    root = mailenv / "mail"
    before = time.time()
    url = pop3s(dovecot_server, dovecot_user)
    assert run("pull", url, root, password=dovecot_user.password).exit_code == 0
    mtimes = {p.read_bytes(): p.stat().st_mtime for p in maildir_files(root)["INBOX"]}
    assert mtimes[received] == when(2019, 3, 5, 10).timestamp()
    assert mtimes[dated] == when(2017, 6, 1, 8).timestamp()
    assert before - 5 <= mtimes[undated] <= time.time() + 5


def test_channel_folder_names_the_local_folder(dovecot_server, dovecot_user, mailenv):
    deliver(dovecot_server, dovecot_user, message(1))
    conf = config(mailenv, dovecot_server, dovecot_user, channel='folder = "POP/provider"')
    result = run("--config", conf, "pull", "mail", env={"MAILSYNC_PASSWORD": dovecot_user.password})
    assert result.exit_code == 0, result.output
    assert maildir_bodies(mailenv / "mail") == {"POP/provider": Counter([message(1)])}
    result = run("--config", conf, "pull", "mail", env={"MAILSYNC_PASSWORD": dovecot_user.password})
    assert "copied 0 to local" in result.output


def test_list_shows_count_and_size(dovecot_server, dovecot_user, mailenv):
    deliver(dovecot_server, dovecot_user, message(1), message(2))
    result = run(
        "list", "--json", pop3s(dovecot_server, dovecot_user), password=dovecot_user.password
    )
    assert result.exit_code == 0, result.output
    rows = __import__("json").loads(result.stdout)
    rows = rows if isinstance(rows, list) else rows["folders"]
    (row,) = rows
    wire = sum(len(message(n).replace(b"\n", b"\r\n")) for n in (1, 2))
    assert row["folder"] == "INBOX" and row["messages"] == 2 and row["bytes"] == wire


@pytest.mark.parametrize("auth", ["user", "plain", "apop", "auto"])
def test_auth_methods(dovecot_server, dovecot_user, mailenv, auth):
    deliver(dovecot_server, dovecot_user, message(1))
    url = pop3s(dovecot_server, dovecot_user, auth=auth)
    result = run("-vv", "pull", url, mailenv / "mail", password=dovecot_user.password)
    assert result.exit_code == 0, result.output
    assert dovecot_user.password not in result.output
    assert local(mailenv / "mail") == Counter([message(1)])
    shown = {"user": "PASS ****", "plain": "AUTH ****", "apop": "APOP ****", "auto": "AUTH ****"}
    assert f"pop3: > {shown[auth]}" in result.stderr


def test_wrong_password_is_exit_3_at_once(dovecot_server, dovecot_user, mailenv):
    result = run(
        "pull", pop3s(dovecot_server, dovecot_user), mailenv / "mail", password="Xyzzy-pw-42"
    )
    assert result.exit_code == 3
    assert "login failed" in result.stderr and "check the user name and password" in result.stderr
    assert "Xyzzy-pw-42" not in result.output


def test_stls_and_plain_text_only_when_asked(dovecot_server, dovecot_user, mailenv):
    deliver(dovecot_server, dovecot_user, message(1))
    plain = dovecot_server.url("pop3", dovecot_user)
    result = run(
        "-vv",
        "pull",
        f"{plain}?cafile={dovecot_server.cafile}",
        mailenv / "a",
        password=dovecot_user.password,
    )
    assert result.exit_code == 0, result.output
    assert "pop3: > STLS" in result.stderr
    result = run("pull", f"{plain}?tls=none", mailenv / "b", password=dovecot_user.password)
    assert result.exit_code == 0, result.output
    assert local(mailenv / "a") == local(mailenv / "b") == Counter([message(1)])


def test_untrusted_certificate_is_refused(dovecot_server, dovecot_user, mailenv):
    result = run("pull", dovecot_server.url("pop3s", dovecot_user), mailenv / "m", password="x")
    assert result.exit_code == 3
    assert "certificate is not trusted" in result.stderr


def test_unreachable_host(mailenv):
    result = run("pull", "pop3s://u@127.0.0.1:9", mailenv / "m", password="x")
    assert result.exit_code == 3
    assert "cannot connect to 127.0.0.1:9" in result.stderr


@pytest.mark.parametrize(
    "args, text",
    [
        (["sync", "{url}", "{dest}"], "can only be pulled from"),
        (["push", "{dest}", "{url}"], "can only be pulled from"),
        (["pull", "--mirror", "{url}", "{dest}"], "never propagated"),
        (["pull", "{dest}", "{url}"], "only be the remote side"),
    ],
)
def test_pop3_is_a_source_only(mailenv, args, text):
    url, dest = "pop3s://u@example.org", str(mailenv / "m")
    result = run(*(a.format(url=url, dest=dest) for a in args), password="x")
    assert result.exit_code == 2, result.output
    assert text in result.stderr


def test_state_records_uidls(dovecot_server, dovecot_user, mailenv):
    import sqlite3

    deliver(dovecot_server, dovecot_user, message(1), message(2))
    assert (
        run(
            "pull",
            pop3s(dovecot_server, dovecot_user),
            mailenv / "m",
            password=dovecot_user.password,
        ).exit_code
        == 0
    )
    client = dovecot_server.pop3(dovecot_user)
    uidls = {line.split()[1].decode() for line in client.uidl()[1]}
    client.quit()
    (db,) = (mailenv / "state" / "mailsync").glob("*.db")
    con = sqlite3.connect(db)
    keys = {row[0] for row in con.execute("SELECT key_a FROM pairs")}
    con.close()
    assert keys == uidls
    assert os.stat(db).st_mode & 0o777 == 0o600


def test_unchanged_mailbox_is_skipped_but_a_new_max_size_is_noticed(
    dovecot_server, dovecot_user, mailenv
):
    big = message(9, "big", b"y" * 40_000 + b"\n")
    deliver(dovecot_server, dovecot_user, message(1), big)
    env = {"MAILSYNC_PASSWORD": dovecot_user.password}
    limited = config(mailenv, dovecot_server, dovecot_user, 'max_size = "20K"')
    assert run("--config", limited, "pull", "mail", env=env).exit_code == 0
    result = run("--config", limited, "-vv", "pull", "mail", env=env)
    assert "larger than max_size" in result.stderr  # said again, not skipped silently
    assert local(mailenv / "mail") == Counter([message(1)])
    client = dovecot_server.pop3(dovecot_user)
    client.dele(2)  # the big one
    client.quit()
    assert run("--config", limited, "pull", "mail", env=env).exit_code == 0
    result = run("--config", limited, "-vv", "pull", "mail", env=env)
    assert "unchanged on both sides" in result.stderr
    deliver(dovecot_server, dovecot_user, big)
    unlimited = config(mailenv, dovecot_server, dovecot_user)
    result = run("--config", unlimited, "pull", "mail", env=env)
    assert "copied 1 to local" in result.stdout
    assert local(mailenv / "mail") == Counter([message(1), big])


def test_turning_on_delete_after_download_applies_to_mail_already_here(
    dovecot_server, dovecot_user, mailenv
):
    deliver(dovecot_server, dovecot_user, message(1), message(2))
    env = {"MAILSYNC_PASSWORD": dovecot_user.password}
    keep = config(mailenv, dovecot_server, dovecot_user)
    assert run("--config", keep, "pull", "mail", env=env).exit_code == 0
    assert run("--config", keep, "pull", "mail", env=env).exit_code == 0  # cursor saved
    delete = config(mailenv, dovecot_server, dovecot_user, 'delete = "after-download"')
    result = run("--config", delete, "pull", "mail", env=env)
    assert result.exit_code == 0, result.output
    assert "deleted 2" in result.stdout
    assert on_server(dovecot_server, dovecot_user) == Counter()
    assert local(mailenv / "mail") == Counter([message(1), message(2)])
