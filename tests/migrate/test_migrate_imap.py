"""`mailsync migrate` against the private Dovecot: IMAP -> IMAP between two users, message
by message (bytes, flags and keywords, INTERNALDATE); SOURCE untouched; --delete-source
against a DEST that refuses a message (a real quota); runs killed at every step and
rerun; accounts in parallel with one wrong password."""

from __future__ import annotations

import json
from collections import Counter

from imaptools import (
    CommandSpy,
    Msg,
    connect,
    maildir_bodies,
    message,
    run,
    run_process,
    seed,
    server_bodies,
    when,
    write_local,
)

from mailsync.message import to_lf

CRASHED = 137


def imap_url(server, user, password: str | None = None) -> str:
    """The user's imaps URL with its own password_command (so two users share a run)."""
    command = f"echo {password or user.password}".replace(" ", "%20")
    return f"{server.url('imaps', user)}?cafile={server.cafile}&password_command={command}"


def raw_messages(server, user) -> dict[str, dict[int, tuple[bytes, frozenset, int]]]:
    """folder -> uid -> (the bytes as the server sends them, flags, INTERNALDATE)."""
    out = {}
    with connect(server, user) as client:
        for flags, _, folder in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            info = client.select_folder(folder, readonly=True)
            out[folder] = {"uidvalidity": info[b"UIDVALIDITY"]}
            if not info[b"EXISTS"]:
                continue
            data = client.fetch(client.search(["ALL"]), ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])
            for uid, item in data.items():
                flags = frozenset(f for f in item[b"FLAGS"] if f != b"\\Recent")
                out[folder][uid] = (
                    item[b"BODY[]"],
                    flags,
                    int(item[b"INTERNALDATE"].timestamp()),
                )
    return out


def contents(snapshot) -> dict[str, Counter]:
    """folder -> Counter of (bytes, flags, INTERNALDATE), without UIDs."""
    return {
        folder: Counter(v for k, v in messages.items() if k != "uidvalidity")
        for folder, messages in snapshot.items()
    }


CORPUS = {
    "INBOX": [
        Msg(message(1), frozenset(), when(2019)),
        Msg(message(2), frozenset({"\\Seen", "\\Flagged"}), when(2020)),
        Msg(message(3, extra=b"x" * 5000), frozenset({"\\Answered", "$Forwarded"}), when(2021)),
        Msg(message(3), frozenset({"\\Seen"}), when(2018)),
    ],
    "Archive/2019": [Msg(message(20 + i), frozenset({"\\Seen"}), when(2019)) for i in range(3)],
    "Drafts": [Msg(message(30), frozenset({"\\Draft", "Custom_Keyword"}), when(2022))],
    "Empty": [],
}


def test_imap_to_imap_copies_bytes_flags_and_dates_and_leaves_source_untouched(
    dovecot_server, mailenv
):
    source, dest = dovecot_server.add_user(), dovecot_server.add_user()
    seed(dovecot_server, source, CORPUS)
    before = raw_messages(dovecot_server, source)
    result = run("migrate", imap_url(dovecot_server, source), imap_url(dovecot_server, dest))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "complete: every selected SOURCE message (8 in 4 folders) is in DEST"
    )
    assert raw_messages(dovecot_server, source) == before  # same UIDs, flags, bytes, dates
    assert contents(raw_messages(dovecot_server, dest)) == contents(before)
    assert source.password not in result.output and dest.password not in result.output

    again = run(
        "migrate", "--json", imap_url(dovecot_server, source), imap_url(dovecot_server, dest)
    )
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["copied"], report["adopted"], report["messages"]) == (0, 0, 8)
    assert contents(raw_messages(dovecot_server, dest)) == contents(before)
    assert raw_messages(dovecot_server, source) == before


def test_a_rerun_of_a_pull_between_servers_selects_no_folder(dovecot_server, mailenv, monkeypatch):
    """The destination a run only appended to vouches for itself (cursor_after_writes):
    the first rerun with nothing new is STATUS on both sides, as a rerun into Maildir."""
    source, dest = dovecot_server.add_user(), dovecot_server.add_user()
    seed(dovecot_server, source, CORPUS)
    urls = imap_url(dovecot_server, source), imap_url(dovecot_server, dest)
    assert run("pull", *urls).exit_code == 0
    spy = CommandSpy(monkeypatch)
    again = run("pull", *urls)
    assert again.exit_code == 0, again.output
    assert spy.count("SELECT", "EXAMINE") == 0, spy.commands
    assert not any(c.startswith("UID FETCH") for c in spy.commands), spy.commands
    with connect(dovecot_server, dest) as client:  # a change in DEST is still seen
        client.select_folder("INBOX")
        client.add_flags(client.search(["ALL"])[:1], [b"\\Deleted"])
        client.expunge()
    third = run("migrate", *urls)  # (which copies again what DEST lost)
    assert third.exit_code == 0, third.output
    assert contents(raw_messages(dovecot_server, dest)) == contents(
        raw_messages(dovecot_server, source)
    )


def test_delete_source_keeps_what_dest_refused(dovecot_server, mailenv):
    source = dovecot_server.add_user()
    dest = dovecot_server.add_user(
        settings={
            "mail_plugins": "quota",
            "quota": "count:User",
            "quota_vsizes": "yes",
            "quota_max_mail_size": "2k",
        }
    )
    big = message(9, extra=b"a long line of a big message\n" * 200)
    seed(dovecot_server, source, {"INBOX": [Msg(message(n)) for n in range(3)] + [Msg(big)]})
    result = run(
        "migrate", "--delete-source", "--json",
        imap_url(dovecot_server, source), imap_url(dovecot_server, dest),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    (inbox,) = report["folders"]
    assert (inbox["copied"], inbox["failed"], inbox["missing"]) == (3, 1, 1)
    assert inbox["deleted_from_source"] == 3
    assert inbox["missing_messages"][0]["subject"] == "message 9"
    assert server_bodies(dovecot_server, source)["INBOX"] == Counter([to_lf(big)])
    assert server_bodies(dovecot_server, dest)["INBOX"] == Counter(message(n) for n in range(3))
    assert report["verdict"].startswith("incomplete: 1 of the 4 selected SOURCE messages")


def test_killed_at_every_step_then_rerun_copies_each_message_exactly_once(dovecot_server, mailenv):
    """Maildir -> Dovecot, killed (the crash hook, as kill -9) at step k of a first run,
    for every k until a run gets through, each time into a fresh DEST with a fresh
    state; then a rerun: DEST holds each SOURCE message exactly once, complete."""
    src = mailenv / "src"
    wanted: dict[str, Counter] = {"INBOX": Counter(), "Lists/python": Counter()}
    for n in range(6):
        folder = "INBOX" if n % 3 else "Lists/python"
        body = message(n, extra=b"x\n" * (n * 50))
        write_local(src, folder, body, flags="S" if n % 2 else "", mtime=1.6e9 + n)
        wanted[folder][body] += 1
    crashes = 0
    for crash_at in range(1, 60):
        dest = dovecot_server.add_user()
        state = mailenv / f"state{crash_at}"
        url = f"{dovecot_server.url('imaps', dest)}?cafile={dovecot_server.cafile}"
        args = ("migrate", "--jobs", "1", src, url)
        first = run_process(*args, password=dest.password, state=state, crash_at=crash_at)
        assert first.returncode in (0, CRASHED), first.stderr
        if first.returncode == 0:
            break
        crashes += 1
        rerun = run_process(*args, password=dest.password, state=state)
        assert rerun.returncode == 0, (crash_at, rerun.stderr)
        assert "complete: every selected SOURCE message (6 in 2 folders)" in rerun.stdout
        assert server_bodies(dovecot_server, dest) == wanted, crash_at
    assert crashes >= 8  # every durable step of the run: journal, appends, flush, commit
    assert maildir_bodies(src) == wanted  # SOURCE untouched


def test_parallel_accounts_go_on_past_a_wrong_password(dovecot_server, mailenv):
    rows = []
    users = [dovecot_server.add_user() for _ in range(3)]
    for i, user in enumerate(users):
        write_local(mailenv / f"src{i}", "INBOX", message(i))
        write_local(mailenv / f"src{i}", "INBOX", message(10 + i))
        secret = mailenv / f"password{i}"
        secret.write_text(("not-" if i == 1 else "") + user.password + "\n")
        url = f"{dovecot_server.url('imaps', user)}?cafile={dovecot_server.cafile}"
        rows.append(f"{mailenv / f'src{i}'},{url},,cat {secret}")
    accounts = mailenv / "accounts.csv"
    accounts.write_text(
        "source,dest,source_password_command,dest_password_command\n" + "\n".join(rows) + "\n"
    )
    result = run("migrate", "--accounts", accounts, "--parallel", "2")
    assert result.exit_code == 3, result.output  # the gravest: an authentication failure
    table = result.output.splitlines()
    for line_number in (2, 4):
        row = next(r for r in table if r.startswith(f"line {line_number}:"))
        assert row.split()[-7:] == ["1", "2", "2", "0", "0", "0", "complete"]
    wrong = next(r for r in table if r.startswith("line 3:"))
    assert users[1].name in wrong and "error: " in wrong
    assert "2 of 3 accounts complete" in result.output
    for i in (0, 2):
        assert server_bodies(dovecot_server, users[i])["INBOX"] == Counter(
            [message(i), message(10 + i)]
        )
    assert all(user.password not in result.output for user in users)

    as_json = run("migrate", "--accounts", accounts, "--parallel", "2", "--json")
    rows_out = json.loads(as_json.stdout)["accounts"]
    assert [r["result"] for r in rows_out] == ["complete", "error", "complete"]
    assert [r["copied"] for r in rows_out] == [0, 0, 0]  # a rerun copies nothing


def test_the_check_after_a_migration_reads_only_what_the_state_does_not_vouch_for(
    dovecot_server, mailenv, monkeypatch
):
    """migrate's check takes the pairs it recorded (both keys still listed, the same
    UIDVALIDITYs) without reading them again, but not one it adopted by its headers; a
    message DEST has that no pair names is read; the verify command and --delete-source
    read every message."""
    from mailsync import verify as verifymod

    read: list[int] = []
    digests = verifymod._digests
    monkeypatch.setattr(
        verifymod, "_digests", lambda f, keys, t: read.append(len(keys)) or digests(f, keys, t)
    )
    source, dest = dovecot_server.add_user(), dovecot_server.add_user()
    seed(dovecot_server, source, CORPUS)
    urls = imap_url(dovecot_server, source), imap_url(dovecot_server, dest)
    seed(dovecot_server, dest, {"INBOX": [CORPUS["INBOX"][0]]})  # there before: adopted
    first = run("migrate", *urls)
    assert first.exit_code == 0, first.output
    assert "adopted 1" in first.output
    assert sum(read) == 2  # the adopted one, on both sides: found by its headers only
    read.clear()
    assert run("migrate", *urls).exit_code == 0
    assert sum(read) == 2  # (and so on every check)
    seed(dovecot_server, dest, {"INBOX": [Msg(message(77), frozenset(), when(2023))]})
    read.clear()
    again = run("migrate", "--json", *urls)
    assert again.exit_code == 0, again.output
    assert sum(read) == 2 + 1  # and the one in DEST alone: an extra message
    assert json.loads(again.stdout)["folders"][0]["extra_messages"]
    read.clear()
    assert run("verify", *urls).exit_code == 0
    assert sum(read) == 2 * 8 + 1
    read.clear()
    deleting = run("migrate", "--delete-source", *urls)
    assert deleting.exit_code == 0, deleting.output
    assert sum(read) == 2 * 8 + 1
