"""The IMAP store against a real Dovecot: pull, reruns, changes behind mailsync's back,
UIDVALIDITY, serving the pulled Maildir, two-way sync, push, TLS, passwords and errors."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter

from imaptools import (
    CommandSpy,
    Msg,
    connect,
    expected,
    maildir_bodies,
    maildir_contents,
    maildir_files,
    message,
    rich_corpus,
    run,
    seed,
    server_bodies,
    server_contents,
    server_messages,
    state_flags,
    when,
    write_local,
)


def imaps(server, user) -> str:
    return f"{server.url('imaps', user)}?cafile={server.cafile}"


def pull(server, user, dest, *extra, json_report=True):
    args = ["pull", *extra, imaps(server, user), f"maildir:{dest}"]
    if json_report:
        args.insert(1, "--json")
    return run(*args, password=user.password)


def report(result) -> dict:
    """folder -> its report, from a --json run."""
    data = json.loads(result.stdout)
    return {f["folder"]: f for channel in data["channels"] for f in channel["folders"]}


def copied(result) -> int:
    return sum(f["copied_a_to_b"] + f["copied_b_to_a"] for f in report(result).values())


def cursors(state_home) -> dict[str, dict]:
    out = {}
    for db in (state_home / "mailsync").glob("*.db"):
        con = sqlite3.connect(db)
        try:
            for name, cursor in con.execute("SELECT name_a, cursor_a FROM folders"):
                out[name] = json.loads(cursor)
        finally:
            con.close()
    return out


# -- 1. pull ------------------------------------------------------------------------------


def test_pull_is_byte_exact_and_a_rerun_selects_nothing(dovecot_server, mailenv, monkeypatch):
    server = dovecot_server
    user = server.add_user(special_use=True)
    corpus = rich_corpus(big=True)
    seed(server, user, corpus.folders)
    dest = mailenv / "mail"

    result = pull(server, user, dest)
    assert result.exit_code == 0, result.output
    assert copied(result) == corpus.count()

    # Message by message against the server: bytes (CRLF -> LF), flags, mtime.
    on_server = server_contents(server, user)
    local = maildir_contents(dest)
    assert set(local) == set(on_server)  # every folder, the empty ones and "Entwürfe" too
    for folder, messages in on_server.items():
        assert local[folder] == messages, folder
    for folder, messages in expected(corpus).items():
        assert local[folder] == messages, folder
    with connect(server, user) as client:
        raw = server_messages(client, "INBOX")
        client.select_folder("INBOX", readonly=True)
        wire = client.fetch(client.search(["ALL"]), ["BODY.PEEK[]"])
    assert all(b"\r\n" in item[b"BODY[]"] for item in wire.values())
    assert not any(b"\r" in p.read_bytes() for p in maildir_files(dest)["INBOX"])
    big = max(raw.values(), key=lambda m: len(m.body))
    assert len(big.body) > 5 * 1024 * 1024
    assert (dest / "Archive/2019/cur").is_dir() and (dest / "Entwürfe/cur").is_dir()

    # Keywords live in the state, SPECIAL-USE in the cursors.
    flags = state_flags(mailenv / "state")
    assert any("work" in f for f in flags) and any("$Label1" in f for f in flags)
    specials = {name: c.get("special_use") for name, c in cursors(mailenv / "state").items()}
    assert specials["Sent"] == "\\Sent" and specials["Trash"] == "\\Trash"
    assert specials["INBOX"] is None

    # Nothing changed: nothing copied, and no folder is selected (STATUS only).
    before = {p.name for files in maildir_files(dest).values() for p in files}
    spy = CommandSpy(monkeypatch)
    again = pull(server, user, dest)
    assert again.exit_code == 0, again.output
    assert copied(again) == 0
    assert {p.name for files in maildir_files(dest).values() for p in files} == before
    assert spy.count("SELECT", "EXAMINE") == 0, spy.commands
    assert not any(c.startswith("UID FETCH") for c in spy.commands)
    # Dovecot has LIST-STATUS: one LIST answers for every folder.  Once the local
    # folders' directory times have settled (folders created a moment ago are not
    # vouched for yet), a rerun is that LIST on one connection: no STATUS, no workers.
    assert any(c.startswith('LIST "" "*" RETURN') for c in spy.commands), spy.commands
    time.sleep(2.1)
    assert pull(server, user, dest).exit_code == 0
    spy.clear()
    assert pull(server, user, dest).exit_code == 0
    assert spy.count("STATUS", "SELECT", "EXAMINE") == 0, spy.commands
    assert spy.count("LOGIN") == 1, spy.commands

    # One change: only that folder is selected (read-only: EXAMINE), and only it.
    with connect(server, user) as client:
        client.append("Sent", message(999).replace(b"\n", b"\r\n"), flags=[b"\\Seen"])
    spy.clear()
    third = pull(server, user, dest)
    assert third.exit_code == 0, third.output
    assert copied(third) == 1
    assert spy.count("SELECT") == 0
    assert [c for c in spy.commands if c.startswith("EXAMINE")] == ['EXAMINE "SENT"']


# -- 2. changes behind mailsync's back ------------------------------------------------------


def small_corpus() -> dict[str, list[Msg]]:
    return {
        "INBOX": [
            Msg(message(i), frozenset({"\\Flagged"} if i == 1 else ()), when(2020, 1, i + 1))
            for i in range(6)
        ],
        "Archive/2019": [Msg(message(50 + i), frozenset({"\\Seen"}), when(2019)) for i in range(2)],
        "Sent": [Msg(message(70 + i), frozenset({"\\Seen"}), when(2018)) for i in range(3)],
    }


def uid_of(client, folder: str, body: bytes) -> int:
    for uid, msg in server_messages(client, folder).items():
        if msg.body == body:
            return uid
    raise AssertionError(f"no such message in {folder}")


def test_changes_behind_the_back(dovecot_server, mailenv):
    server = dovecot_server
    user = server.add_user()
    seed(server, user, small_corpus())
    dest = mailenv / "mail"
    first = pull(server, user, dest)
    assert first.exit_code == 0, first.output
    sent_files = len(maildir_files(dest)["Sent"])

    with connect(server, user) as client:
        seen, unflag, keyword, gone = (uid_of(client, "INBOX", message(i)) for i in (0, 1, 2, 3))
        client.select_folder("INBOX")
        client.add_flags([seen], [b"\\Seen"])
        client.remove_flags([unflag], [b"\\Flagged"])
        client.add_flags([keyword], [b"project-x"])
        client.add_flags([gone], [b"\\Deleted"])
        client.uid_expunge([gone])
        for n in (10, 11):
            client.append("INBOX", message(n).replace(b"\n", b"\r\n"), msg_time=when(2024))
        client.create_folder("Projects")
        client.append("Projects", message(20).replace(b"\n", b"\r\n"), msg_time=when(2024))
        client.rename_folder("Archive/2019", "Archive/2019-old")
    server.change_uidvalidity(user, "Sent")

    result = pull(server, user, dest)
    assert result.exit_code == 0, result.output
    folders = report(result)
    local = maildir_contents(dest)
    inbox = {body: flags for body, flags, _ in local["INBOX"]}
    assert inbox[message(0)] == {"\\Seen"}
    assert inbox[message(1)] == frozenset()
    assert message(3) in inbox  # expunged on the server, kept by pull
    assert message(10) in inbox and message(11) in inbox
    assert folders["INBOX"]["copied_a_to_b"] == 2
    assert any("project-x" in f for f in state_flags(mailenv / "state"))
    assert maildir_bodies(dest)["Projects"] == Counter([message(20)])
    assert maildir_bodies(dest)["Archive/2019-old"] == Counter(message(50 + i) for i in range(2))
    assert len(maildir_files(dest)["Archive/2019"]) == 2  # the old name is kept locally
    # UIDVALIDITY: re-matched by content, nothing copied again, the report says so.
    assert len(maildir_files(dest)["Sent"]) == sent_files
    assert folders["Sent"]["copied_a_to_b"] == 0
    assert any("re-matched" in note and "3 " in note for note in folders["Sent"]["notes"])

    # --mirror follows the expunge; nothing else goes.
    mirror = pull(server, user, dest, "--mirror", "--folders", "INBOX")
    assert mirror.exit_code == 0, mirror.output
    assert report(mirror)["INBOX"]["deleted_b"] == 1
    assert message(3) not in maildir_bodies(dest)["INBOX"]
    assert maildir_bodies(dest)["INBOX"] == server_bodies(server, user)["INBOX"]

    # And after the UIDVALIDITY change the new UIDs are known: a rerun copies nothing.
    again = pull(server, user, dest)
    assert again.exit_code == 0 and copied(again) == 0


# -- 3. the pulled Maildir, served by Dovecot ----------------------------------------------


def serve_utf8(server, path):
    """serve_maildir(copy=True), with Dovecot told that directory names are UTF-8 (as
    mailsync writes them: "Entwürfe", not "Entw&APw-rfe").  Without ``:UTF-8`` in its
    mail_location Dovecot lists such a folder as \\Noselect."""
    user = server.serve_maildir(path, copy=True)
    if ":UTF-8" not in user.mail_location:
        user.mail_location += ":UTF-8"
        server._write_user(user, f"userdb_mail={user.mail_location}")  # before any login
    return user


def test_pulled_maildir_served_by_dovecot_has_the_same_mail(dovecot_server, mailenv):
    server = dovecot_server
    user = server.add_user(special_use=True)
    seed(server, user, rich_corpus(big=False).folders)
    dest = mailenv / "mail"
    assert pull(server, user, dest).exit_code == 0
    served = serve_utf8(server, dest)
    original, copy = server_contents(server, user), server_contents(server, served)
    assert set(copy) == set(original)
    for folder in original:
        # Dovecot reads Maildir's P letter (mailsync's $Forwarded) as no flag at all.
        assert system_flags_only(copy[folder]) == system_flags_only(original[folder]), folder
    assert any("$Forwarded" in flags for _, flags, _ in original["INBOX"])


def system_flags_only(items: Counter) -> Counter:
    system = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"}
    return Counter({(body, flags & system, date): n for (body, flags, date), n in items.items()})


# -- 4. two-way sync and push -------------------------------------------------------------


def sync(server, user, local, *extra):
    return run(
        "-v", "sync", *extra, imaps(server, user), f"maildir:{local}", password=user.password
    )


def test_two_way_sync(dovecot_server, mailenv, monkeypatch):
    server = dovecot_server
    user = server.add_user()
    seed(
        server,
        user,
        {"INBOX": [Msg(message(i), frozenset(), when(2020, 1, i + 1)) for i in range(5)]},
    )
    local = mailenv / "mail"
    first = sync(server, user, local)
    assert first.exit_code == 0, first.output
    assert maildir_bodies(local)["INBOX"] == Counter(message(i) for i in range(5))

    files = {p.read_bytes(): p for p in maildir_files(local)["INBOX"]}
    # Local changes: a flag, a new message, a deletion.
    path = files[message(0)]
    path.rename(path.parent.parent / "cur" / (path.name.split(":2,")[0] + ":2,FS"))
    write_local(local, "INBOX", message(40), flags="S", mtime=when(2021, 7, 7).timestamp())
    files[message(1)].unlink()
    # Someone else marked another message \Deleted without expunging it.
    with connect(server, user) as client:
        other = uid_of(client, "INBOX", message(2))
        doomed = uid_of(client, "INBOX", message(1))
        client.select_folder("INBOX")
        client.add_flags([other], [b"\\Deleted"])

    spy = CommandSpy(monkeypatch)
    second = sync(server, user, local)
    assert second.exit_code == 0, second.output
    with connect(server, user) as client:
        now = server_messages(client, "INBOX")
    bodies = {m.body: (uid, m) for uid, m in now.items()}
    assert bodies[message(0)][1].flags == {"\\Flagged", "\\Seen"}
    assert message(1) not in bodies and doomed not in now  # expunged, that UID only
    assert bodies[message(2)][1].flags == {"\\Deleted"}  # still there: not ours to expunge
    new_uid, new = bodies[message(40)]
    assert new.flags == {"\\Seen"} and new.date.timestamp() == when(2021, 7, 7).timestamp()
    assert f"to remote {new_uid}\n" in second.stderr  # the UID from APPENDUID
    expunges = [c for c in spy.commands if "EXPUNGE" in c]
    assert expunges == [f"UID EXPUNGE {doomed}"], spy.commands
    # The \Deleted flag set by someone else reached the local side (Maildir T).
    assert {f for b, f, _ in maildir_contents(local)["INBOX"] if b == message(2)} == {
        frozenset({"\\Deleted"})
    }

    # Server-side changes come back: a flag, a keyword, a new message.
    with connect(server, user) as client:
        uid = uid_of(client, "INBOX", message(3))
        client.select_folder("INBOX")
        client.add_flags([uid], [b"\\Answered", b"todo"])
        client.append("INBOX", message(41).replace(b"\n", b"\r\n"), flags=[b"\\Flagged"])
    third = sync(server, user, local)
    assert third.exit_code == 0, third.output
    local_now = {b: f for b, f, _ in maildir_contents(local)["INBOX"]}
    assert local_now[message(3)] == {"\\Answered"}
    assert local_now[message(41)] == {"\\Flagged"}
    assert any("todo" in f for f in state_flags(mailenv / "state"))
    # The keyword survives a local flag change: a mail reader keeps its letter.
    path = next(p for p in maildir_files(local)["INBOX"] if p.read_bytes() == message(3))
    base, info = path.name.split(":2,")
    path.rename(path.with_name(base + ":2,RS" + "".join(c for c in info if c.islower())))
    assert sync(server, user, local).exit_code == 0
    with connect(server, user) as client:
        final = {m.body: m.flags for m in server_messages(client, "INBOX").values()}
    assert final[message(3)] == {"\\Answered", "\\Seen", "todo"}
    assert server_bodies(server, user)["INBOX"] == maildir_bodies(local)["INBOX"]


def test_a_deletion_interrupted_before_expunge_completes(dovecot_server, mailenv):
    server = dovecot_server
    user = server.add_user()
    seed(server, user, {"INBOX": [Msg(message(i), frozenset(), when(2020)) for i in range(3)]})
    local = mailenv / "mail"
    assert sync(server, user, local).exit_code == 0
    victim = next(p for p in maildir_files(local)["INBOX"] if p.read_bytes() == message(0))
    victim.unlink()
    with connect(server, user) as client:  # what the killed run had done on the server
        uid = uid_of(client, "INBOX", message(0))
        client.select_folder("INBOX")
        client.add_flags([uid], [b"\\Deleted"])
    assert sync(server, user, local).exit_code == 0
    assert message(0) not in server_bodies(server, user)["INBOX"]
    assert message(0) not in maildir_bodies(local)["INBOX"]


def test_push_restores_an_empty_account(dovecot_server, mailenv):
    server = dovecot_server
    source = server.add_user(special_use=True)
    seed(server, source, rich_corpus(big=False).folders)
    local = mailenv / "mail"
    assert pull(server, source, local).exit_code == 0
    target = server.add_user()
    url = imaps(server, target)
    result = run("push", "--json", f"maildir:{local}", url, password=target.password)
    assert result.exit_code == 0, result.output
    original, restored = server_contents(server, source), server_contents(server, target)
    assert set(restored) == set(original)
    for folder in original:
        assert restored[folder] == original[folder], folder  # bytes, flags and dates
    again = run("push", "--json", f"maildir:{local}", url, password=target.password)
    assert again.exit_code == 0 and copied(again) == 0


def test_keywords_reach_another_server_through_the_maildir(dovecot_server, mailenv):
    server = dovecot_server
    source, target = server.add_user(), server.add_user()
    seed(server, source, {"INBOX": [Msg(message(1), frozenset({"\\Seen", "todo"}), when(2020))]})
    local = mailenv / "mail"
    assert pull(server, source, local).exit_code == 0
    assert (
        run("push", f"maildir:{local}", imaps(server, target), password=target.password).exit_code
        == 0
    )
    restored = server_contents(server, target, std_only=False)["INBOX"]
    assert [flags for _, flags, _ in restored] == [frozenset({"\\Seen", "todo"})]


# -- 5. security and errors ------------------------------------------------------------------


def test_starttls_is_verified_with_cafile(dovecot_server, mailenv, monkeypatch):
    server = dovecot_server
    user = server.add_user()
    seed(server, user, {"INBOX": [Msg(message(1), frozenset(), when(2020))]})
    spy = CommandSpy(monkeypatch)
    url = f"{server.url('imap', user)}?cafile={server.cafile}"
    result = run("pull", url, f"maildir:{mailenv / 'mail'}", password=user.password)
    assert result.exit_code == 0, result.output
    names = [c.split()[0] for c in spy.commands]
    assert names.index("STARTTLS") < names.index("LOGIN")
    # Without the CA the STARTTLS certificate is refused too, before LOGIN.
    spy.clear()
    refused = run("pull", server.url("imap", user), f"maildir:{mailenv / 'x'}", password="x")
    assert refused.exit_code == 3
    assert "certificate" in refused.stderr
    assert "LOGIN" not in [c.split()[0] for c in spy.commands]


def test_imaps_without_cafile_is_a_one_line_certificate_error(dovecot_server, mailenv):
    user = dovecot_server.add_user()
    result = run(
        "pull",
        dovecot_server.url("imaps", user),
        f"maildir:{mailenv / 'm'}",
        password=user.password,
    )
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "certificate" in lines[0] and "cafile" in lines[0], lines
    assert not (mailenv / "m").exists()


def test_wrong_password_is_exit_3_at_once(dovecot_server, mailenv, monkeypatch):
    user = dovecot_server.add_user()
    spy = CommandSpy(monkeypatch)
    result = run(
        "pull", imaps(dovecot_server, user), f"maildir:{mailenv / 'm'}", password="Wr0ng-Pa55"
    )
    assert result.exit_code == 3
    assert spy.count("LOGIN") == 1  # no retry
    assert "login failed" in result.stderr and "Wr0ng-Pa55" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_closed_port_is_exit_3(mailenv):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run("pull", f"imaps://u@127.0.0.1:{port}", f"maildir:{mailenv / 'm'}", password="x")
    assert result.exit_code == 3
    assert "cannot connect" in result.stderr


def test_tls_none_works_on_the_plain_port(dovecot_server, mailenv, monkeypatch):
    user = dovecot_server.add_user()
    seed(dovecot_server, user, {"INBOX": [Msg(message(1), frozenset({"\\Seen"}), when(2020))]})
    spy = CommandSpy(monkeypatch)
    url = f"{dovecot_server.url('imap', user)}?tls=none"
    result = run("pull", url, f"maildir:{mailenv / 'm'}", password=user.password)
    assert result.exit_code == 0, result.output
    assert "STARTTLS" not in [c.split()[0] for c in spy.commands]
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter([message(1)])


def test_password_never_appears_in_debug_output(dovecot_server, mailenv):
    secret = 'Pa"ss\\w0rd-Zq7'
    user = dovecot_server.add_user(password=secret)
    seed(dovecot_server, user, {"INBOX": [Msg(message(1), frozenset(), when(2020))]})
    local = mailenv / "m"
    write_local(local, "INBOX", message(2), flags="S")
    for args in (
        ["-vv", "pull", imaps(dovecot_server, user), f"maildir:{local}"],
        ["-vv", "sync", imaps(dovecot_server, user), f"maildir:{local}"],
        ["-vv", "sync", f"{dovecot_server.url('imap', user)}?tls=none", f"maildir:{local}"],
    ):
        result = run(*args, password=secret)
        assert result.exit_code == 0, result.output
        text = result.output
        assert "imap: " in text and "LOGIN ****" in text  # the protocol is shown ...
        for fragment in ("w0rd-Zq7", "Zq7", secret):  # ... the password never
            assert fragment not in text
    # Without -vv there is no protocol at all.
    quiet = run("-v", "pull", imaps(dovecot_server, user), f"maildir:{local}", password=secret)
    assert "imap: " not in quiet.output


def test_no_password_source_is_exit_3(dovecot_server, mailenv):
    user = dovecot_server.add_user()
    result = run("pull", imaps(dovecot_server, user), f"maildir:{mailenv / 'm'}")
    assert result.exit_code == 3
    assert "no password" in result.stderr


def test_list_shows_folders_with_utf8_names(dovecot_server, mailenv):
    user = dovecot_server.add_user()
    seed(dovecot_server, user, {"Entwürfe/Ärger": [Msg(message(1), frozenset(), when(2020))]})
    result = run("list", imaps(dovecot_server, user), password=user.password)
    assert result.exit_code == 0, result.output
    assert "Entwürfe/Ärger\t1\t" in result.stdout


def test_non_ascii_password_uses_authenticate_plain(dovecot_server, mailenv, monkeypatch):
    secret = "Pässwörd-ÿ7"
    user = dovecot_server.add_user(password=secret)  # (server.imap() cannot log in here)
    spy = CommandSpy(monkeypatch)
    result = run(
        "-vv", "pull", imaps(dovecot_server, user), f"maildir:{mailenv / 'm'}", password=secret
    )
    assert result.exit_code == 0, result.output
    assert spy.count("AUTHENTICATE") == 1 and spy.count("LOGIN") == 0
    assert "ÿ7" not in result.output and "sswö" not in result.output
    assert (mailenv / "m" / "INBOX" / "cur").is_dir()
    wrong = run(
        "pull", imaps(dovecot_server, user), f"maildir:{mailenv / 'x'}", password="Pässwort"
    )
    assert wrong.exit_code == 3 and "Pässwort" not in wrong.output
