"""Folder names between two IMAP servers (folder_names.py), on two private Dovecots: the
plain one (``/`` delimiter, no prefix) and the prefixed one (``INBOX.`` prefix, ``.``
delimiter, Sent/Trash/Drafts/Junk/Archive marked by SPECIAL-USE) -- as an Exchange or
Cyrus account meets a Dovecot one: --map and rename rules, the table of usual names
against SPECIAL-USE, a name DEST cannot hold escaped, each shown by --dry-run; a rerun
copies nothing; verify pairs the folders alike."""

from __future__ import annotations

import json
from collections import Counter

from imaptools import Msg, connect, message, run, run_process, seed, server_bodies
from imaptools import server_messages as imap_messages

from mailsync.message import STANDARD_FLAGS
from mailsync.stores.imap import IMAPFolder


def imaps(server, user) -> str:
    return f"{server.url('imaps', user)}?cafile={server.cafile}"


def on_server(server, user) -> dict[str, Counter]:
    return {name: bodies for name, bodies in server_bodies(server, user).items() if bodies}


def lf(n: int, subject: str) -> bytes:
    return message(n, subject)


def seed_bodies(server, user, folders: dict[str, list[bytes]]) -> None:
    """Server folders (server names) with these LF bodies."""
    seed(server, user, {name: [Msg(body) for body in bodies] for name, bodies in folders.items()})


class Accounts:
    """A SOURCE user on the plain Dovecot and a DEST user on the prefixed one."""

    def __init__(self, source_server, dest_server, mailenv, tmp_path):
        self.source, self.dest = source_server, dest_server
        self.alice = source_server.add_user()
        self.bob = dest_server.add_user(special_use=True)
        password_file = tmp_path / "alice-pw"
        password_file.write_text(f"{self.alice.password}\n")
        self.src_url = f"{imaps(source_server, self.alice)}&password_command=cat%20{password_file}"
        self.dst_url = f"{imaps(dest_server, self.bob)}&password_command=echo%20{self.bob.password}"

    def mailsync(self, command: str, *args: str):
        return run(
            command, *args, self.src_url, self.dst_url, env={"MAILSYNC_PASSWORD_COMMAND": ""}
        )


def copied(result) -> int:
    data = json.loads(result.stdout)
    return sum(f["copied_a_to_b"] for c in data["channels"] for f in c["folders"])


def test_folders_meet_by_rule_special_use_usual_name_and_escape(
    dovecot_server, dovecot_prefixed_server, mailenv, tmp_path
):
    accounts = Accounts(dovecot_server, dovecot_prefixed_server, mailenv, tmp_path)
    source = {
        "INBOX": [lf(1, "inbox")],
        "Sent Items": [lf(2, "sent"), lf(3, "sent too")],
        "Deleted Items": [lf(4, "deleted")],
        "Old/Projects": [lf(5, "project")],
        "v1.2": [lf(6, "dotted")],
        "Plain": [lf(7, "plain")],
    }
    seed_bodies(accounts.source, accounts.alice, source)
    before = on_server(accounts.dest, accounts.bob)

    env = {"MAILSYNC_PASSWORD_COMMAND": ""}
    listed = run("list", accounts.src_url, env=env)
    assert "\\Sent by its name" in next(x for x in listed.stdout.splitlines() if "Sent Items" in x)
    listed = run("list", accounts.dst_url, env=env)
    sent = next(x for x in listed.stdout.splitlines() if x.startswith("Sent\t"))
    assert sent.endswith("\t\\Sent by its SPECIAL-USE")

    dry = accounts.mailsync("pull", "--dry-run", "--map", "Old/Projects=Work/Projects")
    assert dry.exit_code == 0, dry.output
    lines = dry.stdout.splitlines()
    assert "Old/Projects -> Work/Projects (--map Old/Projects=Work/Projects)" in lines
    assert "Sent Items -> Sent (a usual name of \\Sent here, SPECIAL-USE \\Sent on DEST)" in lines
    assert (
        "Deleted Items -> Trash (a usual name of \\Trash here, SPECIAL-USE \\Trash on DEST)"
        in lines
    )
    assert "v1.2 -> v1%2E2 (escaped: '.' cannot be in a level on DEST)" in lines
    assert not any(line.startswith("Plain ->") for line in lines)
    assert on_server(accounts.dest, accounts.bob) == before  # (nothing written)

    first = accounts.mailsync("pull", "--json", "--map", "Old/Projects=Work/Projects")
    assert first.exit_code == 0, first.output
    assert copied(first) == 7
    assert on_server(accounts.dest, accounts.bob) == {
        "INBOX": Counter([lf(1, "inbox")]),
        "INBOX.Sent": Counter([lf(2, "sent"), lf(3, "sent too")]),
        "INBOX.Trash": Counter([lf(4, "deleted")]),
        "INBOX.Work.Projects": Counter([lf(5, "project")]),
        "INBOX.v1%2E2": Counter([lf(6, "dotted")]),
        "INBOX.Plain": Counter([lf(7, "plain")]),
    }
    report = json.loads(first.stdout)["channels"][0]["folder_names"]
    assert {(p["remote"], p["local"]) for p in report} == {
        ("Old/Projects", "Work/Projects"),
        ("Sent Items", "Sent"),
        ("Deleted Items", "Trash"),
        ("v1.2", "v1%2E2"),
    }

    # The next run maps the same way without being told again (--map left out: the
    # state keeps the pairing), also after a folder of the source's name appeared on
    # DEST, and copies nothing.
    seed(accounts.dest, accounts.bob, {"INBOX.Sent Items": [], "INBOX.Old.Projects": []})
    again = accounts.mailsync("pull", "--json")
    assert again.exit_code == 0, again.output
    assert copied(again) == 0
    assert json.loads(again.stdout)["channels"][0]["warnings"] == []

    # verify pairs the folders as the sync did: every message is there.
    verified = accounts.mailsync("verify", "--json")
    assert verified.exit_code == 0, verified.output

    # A message removed from DEST's Sent is missing from Sent Items' copy.
    with connect(accounts.dest, accounts.bob) as client:
        client.select_folder("INBOX.Sent")
        client.delete_messages(client.search(["ALL"])[:1])
        client.expunge()
    missing = accounts.mailsync("verify", "--json")
    assert missing.exit_code == 1, missing.output
    assert "Sent Items" in missing.stdout


def test_a_bad_rule_is_exit_2_before_anything_is_copied(
    dovecot_server, dovecot_prefixed_server, mailenv, tmp_path
):
    accounts = Accounts(dovecot_server, dovecot_prefixed_server, mailenv, tmp_path)
    seed(accounts.source, accounts.alice, {"A": [], "B": []})
    bad = accounts.mailsync("pull", "--map", "A=C", "--map", "B=C")
    assert bad.exit_code == 2, bad.output
    assert "map both 'A' and 'B' to 'C'" in bad.output
    malformed = accounts.mailsync("pull", "--map", "A")
    assert malformed.exit_code == 2 and "OLD=NEW" in malformed.output
    assert on_server(accounts.dest, accounts.bob) == {}


def server_messages(server, user, folder: str) -> Counter:
    """(LF body, standard flags) of each message of a server folder."""
    with connect(server, user) as client:
        messages = imap_messages(client, folder)
    return Counter((m.body, m.flags & STANDARD_FLAGS) for m in messages.values())


def test_mail_already_in_dest_is_adopted_not_copied_again(
    dovecot_server, dovecot_prefixed_server, mailenv, tmp_path
):
    """DEST holds three of SOURCE's five messages (an earlier migration by another tool,
    with other flags) and one of its own: the pull copies two, adopts three with
    SOURCE's flags, and leaves DEST's own message alone; SOURCE's Sent Items meets
    DEST's Sent, also prefilled."""
    accounts = Accounts(dovecot_server, dovecot_prefixed_server, mailenv, tmp_path)
    inbox = [Msg(lf(n, f"inbox {n}"), frozenset({"\\Seen"} if n % 2 else ())) for n in range(5)]
    sent = [Msg(lf(10, "sent"), frozenset({"\\Seen", "\\Answered"}))]
    seed(accounts.source, accounts.alice, {"INBOX": inbox, "Sent Items": sent})
    own = Msg(lf(99, "DEST's own"), frozenset({"\\Flagged"}))
    earlier = [Msg(m.body, frozenset({"\\Flagged"})) for m in inbox[:3]]
    seed(accounts.dest, accounts.bob, {"INBOX": [*earlier, own]})
    seed(accounts.dest, accounts.bob, {"INBOX.Sent": [Msg(sent[0].body)]})

    result = accounts.mailsync("pull", "--json")
    assert result.exit_code == 0, result.output
    folders = {f["folder"]: f for c in json.loads(result.stdout)["channels"] for f in c["folders"]}
    assert (folders["INBOX"]["copied_a_to_b"], folders["INBOX"]["adopted"]) == (2, 3)
    assert (folders["Sent Items"]["copied_a_to_b"], folders["Sent Items"]["adopted"]) == (0, 1)
    assert server_messages(accounts.dest, accounts.bob, "INBOX") == Counter(
        [(m.body, m.flags) for m in inbox] + [(own.body, own.flags)]
    )
    assert server_messages(accounts.dest, accounts.bob, "INBOX.Sent") == Counter(
        [(sent[0].body, sent[0].flags)]
    )
    plain = accounts.mailsync("pull")
    assert plain.exit_code == 0 and "adopted" not in plain.output  # (nothing left to adopt)
    assert accounts.mailsync("verify").exit_code == 0


def test_adoption_after_a_kill_at_every_step(
    dovecot_server, dovecot_prefixed_server, mailenv, tmp_path
):
    """A prefilled DEST, and the pull killed (as kill -9) at each step in turn, then run
    again: every SOURCE message is in DEST exactly once, DEST's own message too (the
    messages DEST had before are never copied again, whatever step the kill hit)."""
    step = 1
    while True:
        accounts = Accounts(dovecot_server, dovecot_prefixed_server, mailenv, tmp_path)
        inbox = [Msg(lf(n, f"inbox {n}")) for n in range(4)]
        seed(accounts.source, accounts.alice, {"INBOX": inbox})
        own = Msg(lf(99, "DEST's own"))
        seed(accounts.dest, accounts.bob, {"INBOX": [inbox[0], inbox[2], own]})
        state = tmp_path / f"state{step}"
        crashed = run_process(
            "pull", accounts.src_url, accounts.dst_url, password="", state=state, crash_at=step,
            env={"MAILSYNC_PASSWORD": "", "MAILSYNC_PASSWORD_COMMAND": ""},
        )  # fmt: skip
        rerun = run_process(
            "pull", "--json", accounts.src_url, accounts.dst_url, password="", state=state,
            env={"MAILSYNC_PASSWORD": "", "MAILSYNC_PASSWORD_COMMAND": ""},
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        assert server_messages(accounts.dest, accounts.bob, "INBOX") == Counter(
            (m.body, frozenset()) for m in [*inbox, own]
        ), f"after a crash at step {step}"
        if crashed.returncode == 0:
            break
        assert crashed.returncode == 137, crashed.stderr
        step += 1
    assert step > 2


def test_adoption_reads_headers_not_bodies_of_dest(
    dovecot_server, dovecot_prefixed_server, mailenv, tmp_path, monkeypatch
):
    """DEST already holds every SOURCE message (another tool migrated them): they are
    adopted by header and size (BODY.PEEK[HEADER]), no DEST body is downloaded.  With
    one more SOURCE message, which matches no header, the DEST messages not adopted are
    read once to be sure it is not among them (a server may have rewritten its copy)."""
    accounts = Accounts(dovecot_server, dovecot_prefixed_server, mailenv, tmp_path)
    inbox = [Msg(lf(n, f"inbox {n}")) for n in range(6)]
    seed(accounts.source, accounts.alice, {"INBOX": inbox})
    own = Msg(lf(99, "DEST's own"))
    seed(accounts.dest, accounts.bob, {"INBOX": [*inbox, own]})
    dest_port = f":{dovecot_prefixed_server.ports['imaps']}"
    read_in_dest: list[list[str]] = []  # the keys of each fetch_many of DEST's bodies
    original = IMAPFolder.fetch_many

    def fetch_many(self, keys):
        keys = list(keys)
        if dest_port in self.store.url:
            read_in_dest.append(keys)
        return original(self, keys)

    monkeypatch.setattr(IMAPFolder, "fetch_many", fetch_many)
    first = accounts.mailsync("pull", "--json")
    assert first.exit_code == 0, first.output
    folder = json.loads(first.stdout)["channels"][0]["folders"][0]
    assert (folder["copied_a_to_b"], folder["adopted"]) == (0, 6)
    assert read_in_dest == []

    # Another account, whose SOURCE has one message more, copied after the others.
    accounts = Accounts(dovecot_server, dovecot_prefixed_server, mailenv, tmp_path)
    new = Msg(lf(7, "new"))
    seed(accounts.source, accounts.alice, {"INBOX": [*inbox, new]})
    seed(accounts.dest, accounts.bob, {"INBOX": [*inbox, own]})
    second = accounts.mailsync("pull", "--json")
    assert second.exit_code == 0, second.output
    folder = json.loads(second.stdout)["channels"][0]["folders"][0]
    assert (folder["copied_a_to_b"], folder["adopted"]) == (1, 6)
    assert [len(keys) for keys in read_in_dest] == [1]  # (DEST's own message, once)
    assert server_messages(accounts.dest, accounts.bob, "INBOX") == Counter(
        (m.body, frozenset()) for m in [*inbox, own, new]
    )


def test_from_the_prefixed_server_to_localized_names(
    dovecot_server, dovecot_prefixed_server, mailenv, tmp_path
):
    """The other way: SOURCE on the prefixed Dovecot (INBOX.Sent marked \\Sent,
    INBOX.Lists.Dev nested with '.'), DEST on the plain one with German folders of its
    own and no marks: Sent meets Gesendet by SPECIAL-USE here and the name there,
    INBOX.Lists.Dev becomes Lists/Dev, and verify agrees."""
    alice = dovecot_prefixed_server.add_user(special_use=True)
    bob = dovecot_server.add_user()
    password_file = tmp_path / "alice-pw"
    password_file.write_text(f"{alice.password}\n")
    src = f"{imaps(dovecot_prefixed_server, alice)}&password_command=cat%20{password_file}"
    dst = f"{imaps(dovecot_server, bob)}&password_command=echo%20{bob.password}"
    seed_bodies(
        dovecot_prefixed_server,
        alice,
        {"INBOX.Sent": [lf(1, "sent")], "INBOX.Lists.Dev": [lf(2, "dev")], "INBOX": [lf(3, "in")]},
    )
    seed_bodies(dovecot_server, bob, {"Gesendet": [], "Papierkorb": []})
    env = {"MAILSYNC_PASSWORD_COMMAND": ""}
    result = run("pull", src, dst, env=env)
    assert result.exit_code == 0, result.output
    assert "Sent -> Gesendet (SPECIAL-USE \\Sent here, a usual name of \\Sent on DEST)" in (
        result.stdout.splitlines()
    )
    assert on_server(dovecot_server, bob) == {
        "INBOX": Counter([lf(3, "in")]),
        "Gesendet": Counter([lf(1, "sent")]),
        "Lists/Dev": Counter([lf(2, "dev")]),
    }
    assert run("verify", src, dst, env=env).exit_code == 0
