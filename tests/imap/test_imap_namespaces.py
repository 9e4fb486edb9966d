"""IMAP servers whose personal folders live under a namespace prefix (RFC 2342): Cyrus
and Courier as Debian ships them, and Dovecot configured the same way, all with
``INBOX.`` and ``.`` (tests/servers/: cyrus.py, courier.py, dovecot.py).

mailsync leaves the prefix out of folder names (the server's ``INBOX.Archive.2019`` is
``Archive/2019`` locally) and puts it back when it creates folders; it syncs only the
personal namespace.  A state made before that (folders named ``INBOX/Sent`` on both
sides) keeps working: state and local folders move to the new names, nothing is copied
twice.  Cyrus offers OBJECTID: a folder renamed there is followed by its MAILBOXID."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter

import pytest
from imaptools import (
    CommandSpy,
    connect,
    maildir_bodies,
    maildir_files,
    message,
    run,
    run_process,
    server_bodies,
    write_local,
)

from mailsync.message import to_lf
from mailsync.state import State
from mailsync.stores import open_store
from mailsync.stores.imap import IMAPStore

PREFIXED = ["cyrus", "courier", "dovecot_prefixed"]
CRASHED = 137


@pytest.fixture(params=PREFIXED)
def prefixed(request):
    """(server, user): a fresh user on each of the three prefixed servers in turn."""
    server = request.getfixturevalue(f"{request.param}_server")
    return server, server.add_user()


def imaps(server, user) -> str:
    return f"{server.url('imaps', user)}?cafile={server.cafile}"


def mailsync(*args, user, json_report=True):
    args = [str(a) for a in args]
    if json_report:
        args.insert(1, "--json")
    return run(*args, password=user.password)


def report(result) -> dict:
    data = json.loads(result.stdout)
    return {f["folder"]: f for channel in data["channels"] for f in channel["folders"]}


def copied(result) -> int:
    return sum(f["copied_a_to_b"] + f["copied_b_to_a"] for f in report(result).values())


def body(n: int, subject: str = "") -> bytes:
    return message(n, subject or f"message {n}")


def seed(server, user, folders: dict[str, list[bytes]]) -> None:
    """Server folders (their server names) with these LF bodies."""
    with connect(server, user) as client:
        for folder in folders:
            if folder != "INBOX" and not client.folder_exists(folder):
                client.create_folder(folder)
        for folder, bodies in folders.items():
            for data in bodies:
                client.append(folder, data.replace(b"\n", b"\r\n"))


def on_server(server, user) -> dict[str, Counter]:
    """Server name -> bodies (LF), empty folders left out."""
    return {name: bodies for name, bodies in server_bodies(server, user).items() if bodies}


def local_bodies(url: str) -> dict[str, Counter]:
    with open_store(url, read_only=True) as store:
        out = {}
        for name in store.list_folders():
            box = store.open_folder(name)
            out[name] = Counter(box.fetch(k) for k in box.list())
            box.close()
    return {name: bodies for name, bodies in out.items() if bodies}


SERVER_TREE = {
    "INBOX": [body(1), body(2)],
    "INBOX.Sent": [body(3)],
    "INBOX.Archive": [body(4)],
    "INBOX.Archive.2019": [body(5), body(6)],
}
LOCAL_TREE = {  # the same mail as mailsync names it
    "INBOX": Counter([body(1), body(2)]),
    "Sent": Counter([body(3)]),
    "Archive": Counter([body(4)]),
    "Archive/2019": Counter([body(5), body(6)]),
}


# -- pull, push, sync ---------------------------------------------------------------------


def test_pull_leaves_the_prefix_out_and_a_rerun_copies_nothing(prefixed, mailenv):
    server, user = prefixed
    seed(server, user, SERVER_TREE)
    dest = mailenv / "mail"
    result = mailsync("pull", imaps(server, user), dest, user=user)
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == LOCAL_TREE
    assert not (dest / "INBOX" / "Sent").exists()
    again = mailsync("pull", imaps(server, user), dest, user=user)
    assert again.exit_code == 0, again.output
    assert copied(again) == 0
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == LOCAL_TREE


def test_push_of_a_maildir_tree_creates_folders_under_the_prefix(prefixed, mailenv):
    server, user = prefixed
    src = mailenv / "mail"
    for folder, bodies in LOCAL_TREE.items():
        for data in bodies:
            write_local(src, folder, data)
    write_local(src, "Lists/dev", body(7))  # a parent that holds no mail itself
    result = mailsync("push", src, imaps(server, user), user=user)
    assert result.exit_code == 0, result.output
    want = {name.replace("/", "."): bodies for name, bodies in LOCAL_TREE.items()}
    want = {(n if n == "INBOX" else "INBOX." + n): b for n, b in want.items()}
    want["INBOX.Lists.dev"] = Counter([body(7)])
    assert on_server(server, user) == want
    again = mailsync("push", src, imaps(server, user), user=user)
    assert again.exit_code == 0, again.output
    assert copied(again) == 0
    assert on_server(server, user) == want


def test_two_way_sync_creates_new_local_folders_under_the_prefix(prefixed, mailenv):
    server, user = prefixed
    seed(server, user, {"INBOX": [body(1)], "INBOX.Sent": [body(2)]})
    local = mailenv / "mail"
    write_local(local, "INBOX", body(3))
    write_local(local, "Projects/2024", body(4))
    url = imaps(server, user)
    result = mailsync("sync", url, local, user=user)
    assert result.exit_code == 0, result.output
    both = {
        "INBOX": Counter([body(1), body(3)]),
        "Sent": Counter([body(2)]),
        "Projects/2024": Counter([body(4)]),
    }
    assert {k: v for k, v in maildir_bodies(local).items() if v} == both
    assert on_server(server, user) == {
        "INBOX": both["INBOX"],
        "INBOX.Sent": both["Sent"],
        "INBOX.Projects.2024": both["Projects/2024"],
    }
    # Changes on both sides: a flag and a message on the server, a deletion locally.
    with connect(server, user) as client:
        client.select_folder("INBOX.Sent")
        client.add_flags(client.search(["ALL"]), ["\\Flagged"])
        client.append("INBOX.Projects.2024", body(5).replace(b"\n", b"\r\n"))
    [gone] = [p for p in maildir_files(local)["INBOX"] if p.read_bytes() == body(1)]
    gone.unlink()
    result = mailsync("sync", url, local, user=user)
    assert result.exit_code == 0, result.output
    assert on_server(server, user)["INBOX"] == Counter([body(3)])
    assert maildir_bodies(local)["Projects/2024"] == Counter([body(4), body(5)])
    [sent] = maildir_files(local)["Sent"]
    assert sent.name.endswith(":2,F")
    again = mailsync("sync", url, local, user=user)
    assert again.exit_code == 0, again.output
    assert copied(again) == 0
    assert sum(f["flags_a"] + f["flags_b"] for f in report(again).values()) == 0


def test_special_use_folders_are_named_without_the_prefix(dovecot_prefixed_server, mailenv):
    server = dovecot_prefixed_server
    user = server.add_user(special_use=True)
    seed(server, user, {"INBOX.Sent": [body(1)], "INBOX.Trash": [body(2)]})
    dest = mailenv / "mail"
    assert mailsync("pull", imaps(server, user), dest, user=user).exit_code == 0
    con = sqlite3.connect(next((mailenv / "state" / "mailsync").glob("*.db")))
    cursors = {
        name: json.loads(c) for name, c in con.execute("SELECT name_a, cursor_a FROM folders")
    }
    con.close()
    assert cursors["Sent"]["special_use"] == "\\Sent"
    assert cursors["Trash"]["special_use"] == "\\Trash"


def test_cyrus_special_use_and_nested_folders(cyrus_server, mailenv):
    server = cyrus_server
    user = server.add_user()
    with connect(server, user) as client:
        client._imap._simple_command("CREATE", "INBOX.Sent", "(USE (\\Sent))")
    seed(server, user, {"INBOX.Sent": [body(1)], "INBOX.A.B.C": [body(2)]})
    dest = mailenv / "mail"
    result = mailsync("pull", imaps(server, user), dest, user=user)
    assert result.exit_code == 0, result.output
    bodies = maildir_bodies(dest)
    assert bodies["Sent"] == Counter([body(1)]) and bodies["A/B/C"] == Counter([body(2)])
    assert set(bodies) == {"INBOX", "Sent", "A", "A/B", "A/B/C"}  # Cyrus made A and A.B


# -- what is not ours, and names that collide ---------------------------------------------


def test_another_users_shared_folder_is_not_synced(cyrus_server, mailenv):
    server = cyrus_server
    owner, reader = server.add_user(), server.add_user()
    with connect(server, owner) as client:
        client.create_folder("INBOX.Shared")
        client.append("INBOX.Shared", body(1).replace(b"\n", b"\r\n"))
        client.setacl("INBOX.Shared", reader.name, "lrs")
    seed(server, reader, {"INBOX": [body(2)]})
    with connect(server, reader) as client:
        assert any(name.startswith("user.") for _, _, name in client.list_folders())
    dest = mailenv / "mail"
    result = mailsync("-v", "pull", imaps(server, reader), dest, user=reader, json_report=False)
    assert result.exit_code == 0, result.output
    assert "another user's or a shared folder" in result.output
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == {"INBOX": Counter([body(2)])}


@pytest.mark.parametrize("kind", ["cyrus", "courier"])
def test_a_folder_named_inbox_below_inbox_keeps_its_prefix(kind, request, mailenv):
    """INBOX.INBOX cannot be INBOX: it stays INBOX/INBOX (as it always was)."""
    server = request.getfixturevalue(f"{kind}_server")
    user = server.add_user()
    seed(server, user, {"INBOX": [body(1)], "INBOX.INBOX": [body(2)], "INBOX.Other": [body(3)]})
    dest = mailenv / "mail"
    url = imaps(server, user)
    result = mailsync("pull", url, dest, user=user)
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == {
        "INBOX": Counter([body(1)]),
        "INBOX/INBOX": Counter([body(2)]),
        "Other": Counter([body(3)]),
    }
    write_local(dest, "INBOX/INBOX", body(4))
    result = mailsync("sync", url, dest, user=user)
    assert result.exit_code == 0, result.output
    assert on_server(server, user)["INBOX.INBOX"] == Counter([body(2), body(4)])


# -- upgrade from names with the prefix -----------------------------------------------------


def old_mapping(monkeypatch) -> None:
    """Make the IMAP store name folders as mailsync did before it read NAMESPACE: the
    server's name with its delimiter turned into "/", prefix and all, and no ids."""
    monkeypatch.setattr(IMAPStore, "_namespaces", lambda self: setattr(self, "_prefix", ""))
    monkeypatch.setattr(IMAPStore, "folder_ids", lambda self: {})


OLD_LOCAL_TREE = {
    "INBOX": LOCAL_TREE["INBOX"],
    "INBOX/Sent": LOCAL_TREE["Sent"],
    "INBOX/Archive": LOCAL_TREE["Archive"],
    "INBOX/Archive/2019": LOCAL_TREE["Archive/2019"],
}


def test_old_style_state_upgrades_without_copying_anything(prefixed, mailenv, monkeypatch):
    server, user = prefixed
    seed(server, user, SERVER_TREE)
    dest = mailenv / "mail"
    url = imaps(server, user)
    with monkeypatch.context() as patch:
        old_mapping(patch)
        first = mailsync("pull", url, dest, user=user)
    assert first.exit_code == 0, first.output
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == OLD_LOCAL_TREE
    files = {p.name for p in dest.rglob("*") if p.is_file() and "," in p.name}
    seed(server, user, {"INBOX.Archive.2019": [body(7)]})

    spy = CommandSpy(monkeypatch)
    result = mailsync("pull", url, dest, user=user, json_report=False)
    assert result.exit_code == 0, result.output
    assert "Sent: was 'INBOX/Sent'" in result.output
    assert "Archive/2019: its local folder moved from 'INBOX/Archive/2019'" not in result.output
    want = dict(LOCAL_TREE)
    want["Archive/2019"] = want["Archive/2019"] + Counter([body(7)])
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == want
    assert not (dest / "INBOX" / "Sent").exists() and not (dest / "INBOX" / "Archive").exists()
    assert files <= {p.name for p in dest.rglob("*") if p.is_file() and "," in p.name}
    bodies_fetched = [c for c in spy.commands if c.startswith("UID FETCH") and "BODY.PEEK[]" in c]
    assert len(bodies_fetched) == 1, spy.commands  # the one new message
    con = sqlite3.connect(next((mailenv / "state" / "mailsync").glob("*.db")))
    names = sorted(con.execute("SELECT name_a, name_b FROM folders"))
    con.close()
    assert names == [(n, n) for n in sorted(LOCAL_TREE)]
    again = mailsync("pull", url, dest, user=user)
    assert again.exit_code == 0 and copied(again) == 0, again.output


@pytest.mark.parametrize("layout", ["maildir++", "mbox"])
def test_old_style_state_upgrades_in_other_local_layouts(
    layout, cyrus_server, mailenv, monkeypatch
):
    server = cyrus_server
    user = server.add_user()
    seed(server, user, SERVER_TREE)
    root = mailenv / "mail"
    local = f"maildir:{root}?layout=maildir++" if layout == "maildir++" else f"mbox:{root}"
    url = imaps(server, user)
    with monkeypatch.context() as patch:
        old_mapping(patch)
        assert mailsync("pull", url, local, user=user).exit_code == 0
    assert local_bodies(local) == OLD_LOCAL_TREE
    result = mailsync("pull", url, local, user=user)
    assert result.exit_code == 0, result.output
    assert copied(result) == 0
    assert local_bodies(local) == LOCAL_TREE
    assert sorted(open_store(local).list_folders()) == sorted(LOCAL_TREE)


@pytest.mark.parametrize("kind", ["cyrus", "courier"])
def test_old_style_two_way_state_creates_no_folder_twice(kind, request, mailenv, monkeypatch):
    """The old names ran two-way: after the upgrade nothing is created on the server
    under the old names (INBOX.INBOX.Sent), nothing is copied twice either way."""
    server = request.getfixturevalue(f"{kind}_server")
    user = server.add_user()
    seed(server, user, {"INBOX": [body(1)], "INBOX.Sent": [body(2)]})
    local = mailenv / "mail"
    url = imaps(server, user)
    with monkeypatch.context() as patch:
        old_mapping(patch)
        first = mailsync("sync", url, local, user=user)
    assert first.exit_code == 0, first.output
    assert maildir_bodies(local)["INBOX/Sent"] == Counter([body(2)])
    write_local(local, "INBOX/Sent", body(3))  # new local mail in the old-named folder
    result = mailsync("sync", url, local, user=user)
    assert result.exit_code == 0, result.output
    assert on_server(server, user) == {
        "INBOX": Counter([body(1)]),
        "INBOX.Sent": Counter([body(2), body(3)]),
    }
    assert {k: v for k, v in maildir_bodies(local).items() if v} == {
        "INBOX": Counter([body(1)]),
        "Sent": Counter([body(2), body(3)]),
    }
    again = mailsync("sync", url, local, user=user)
    assert again.exit_code == 0 and copied(again) == 0, again.output


MOVE_STEPS = ("move journaled", "move folder", "move recorded")


def test_upgrade_killed_at_every_step_then_rerun(cyrus_server, mailenv, monkeypatch):
    """kill -9 at each step of the upgrade's moves (INBOX/Sent, and INBOX/Archive with
    INBOX/Archive/2019 inside it), then a rerun: every message once, new names only."""
    server = cyrus_server
    steps_seen: list[str] = []
    step = 1
    while True:
        user = server.add_user()
        seed(server, user, SERVER_TREE)
        work = mailenv / f"run{step}"
        dest, url = work / "mail", imaps(server, user)
        with monkeypatch.context() as patch:
            old_mapping(patch)
            patch.setenv("XDG_STATE_HOME", str(work / "state"))
            first = mailsync("pull", url, dest, user=user)
            assert first.exit_code == 0, first.output
        crashed = run_process("-vv", "pull", url, dest, password=user.password,
                              state=work / "state", crash_at=step)  # fmt: skip
        if crashed.returncode == 0:  # no step left to crash at
            assert {k: v for k, v in maildir_bodies(dest).items() if v} == LOCAL_TREE
            break
        assert crashed.returncode == CRASHED, crashed.stderr
        steps_seen.append(re.search(r"exiting at step \d+ \((.*)\)", crashed.stderr)[1])
        rerun = run_process("pull", url, dest, password=user.password, state=work / "state")
        assert rerun.returncode == 0, f"after a crash at {steps_seen[-1]}: {rerun.stderr}"
        assert {k: v for k, v in maildir_bodies(dest).items() if v} == LOCAL_TREE, steps_seen
        step += 1
    assert steps_seen[:6] == list(MOVE_STEPS) * 2


def test_dry_run_of_the_upgrade_copies_nothing_and_changes_nothing(
    cyrus_server, mailenv, monkeypatch
):
    server = cyrus_server
    user = server.add_user()
    seed(server, user, SERVER_TREE)
    dest = mailenv / "mail"
    url = imaps(server, user)
    with monkeypatch.context() as patch:
        old_mapping(patch)
        assert mailsync("pull", url, dest, user=user).exit_code == 0
    result = mailsync("pull", "--dry-run", url, dest, user=user)
    assert result.exit_code == 0, result.output
    planned = {name: f["planned"] for name, f in report(result).items()}
    assert sum(p["copy_a_to_b"] for p in planned.values()) == 0, planned
    assert "its local folder 'INBOX/Sent' would move to 'Sent'" in report(result)["Sent"]["notes"]
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == OLD_LOCAL_TREE
    # A state for the new name that knows no message (as any dry run may leave) does
    # not stand in the way.
    with State(str(next((mailenv / "state" / "mailsync").glob("*.db")))) as state:
        state.folder("Sent", "Sent")
    result = mailsync("pull", url, dest, user=user)
    assert result.exit_code == 0 and copied(result) == 0, result.output
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == LOCAL_TREE


# -- renames on the server (Cyrus: MAILBOXID) ---------------------------------------------


def test_cyrus_rename_moves_the_local_folders_by_mailboxid(cyrus_server, mailenv, monkeypatch):
    server = cyrus_server
    user = server.add_user()
    seed(server, user, {"INBOX.Old": [body(1)], "INBOX.Old.Kid": [body(2)]})
    dest = mailenv / "mail"
    url = imaps(server, user)
    assert mailsync("pull", url, dest, user=user).exit_code == 0
    files = {p.name for p in (dest / "Old").rglob("*") if p.is_file()}
    with connect(server, user) as client:
        client.rename_folder("INBOX.Old", "INBOX.New")
    seed(server, user, {"INBOX.New.Kid": [body(3)]})
    spy = CommandSpy(monkeypatch)
    result = mailsync("pull", url, dest, user=user, json_report=False)
    assert result.exit_code == 0, result.output
    assert "New: renamed on the remote side from 'Old'" in result.output
    assert "New: its local folder moved from 'Old'" in result.output
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == {
        "New": Counter([body(1)]),
        "New/Kid": Counter([body(2), body(3)]),
    }
    assert not (dest / "Old").exists()
    assert files <= {p.name for p in (dest / "New").rglob("*") if p.is_file()}
    bodies_fetched = [c for c in spy.commands if c.startswith("UID FETCH") and "BODY.PEEK[]" in c]
    assert len(bodies_fetched) == 1, spy.commands


def test_cyrus_mailboxids_are_kept_in_the_state(cyrus_server, mailenv):
    server = cyrus_server
    user = server.add_user()
    seed(server, user, {"INBOX.Sent": [body(1)]})
    dest = mailenv / "mail"
    assert mailsync("pull", imaps(server, user), dest, user=user).exit_code == 0
    with connect(server, user) as client:
        wanted = client.folder_status("INBOX.Sent", ["MAILBOXID"])[b"MAILBOXID"][0].decode()
    con = sqlite3.connect(next((mailenv / "state" / "mailsync").glob("*.db")))
    idents = dict(con.execute("SELECT name_a, ident_a FROM folders"))
    con.close()
    assert idents["Sent"] == wanted


# -- Courier: no CONDSTORE, no UIDNEXT in SELECT ------------------------------------------


def test_courier_reruns_list_everything_and_stay_exact(courier_server, mailenv):
    server = courier_server
    user = server.add_user()
    seed(server, user, {"INBOX": [body(1), body(2)], "INBOX.Sent": [body(3)]})
    dest = mailenv / "mail"
    url = imaps(server, user)
    assert mailsync("pull", url, dest, user=user).exit_code == 0
    for n in range(3):
        seed(server, user, {"INBOX": [body(10 + n)]})
        result = mailsync("pull", url, dest, user=user)
        assert result.exit_code == 0, result.output
        assert copied(result) == 1
    with connect(server, user) as client:
        client.select_folder("INBOX")
        client.delete_messages(client.search(["ALL"])[:1])
        client.expunge()
    result = mailsync("pull", "--mirror", url, dest, user=user)
    assert result.exit_code == 0, result.output
    assert maildir_bodies(dest)["INBOX"] == Counter([body(2), body(10), body(11), body(12)])
    assert to_lf(body(3)) in maildir_bodies(dest)["Sent"]


def test_cyrus_renames_of_a_parent_and_of_a_child_moved_out_of_it(cyrus_server, mailenv):
    """INBOX.Old.Kid becomes INBOX.Elsewhere and INBOX.Old becomes INBOX.New in one go:
    the child moves out first, then the parent, both in the same run."""
    server = cyrus_server
    user = server.add_user()
    seed(server, user, {"INBOX.Old": [body(1)], "INBOX.Old.Kid": [body(2)]})
    dest = mailenv / "mail"
    url = imaps(server, user)
    assert mailsync("pull", url, dest, user=user).exit_code == 0
    with connect(server, user) as client:
        client.rename_folder("INBOX.Old.Kid", "INBOX.Elsewhere")
        client.rename_folder("INBOX.Old", "INBOX.New")
    result = mailsync("pull", url, dest, user=user)
    assert result.exit_code == 0, result.output
    assert copied(result) == 0
    assert {k: v for k, v in maildir_bodies(dest).items() if v} == {
        "New": Counter([body(1)]),
        "Elsewhere": Counter([body(2)]),
    }
    assert not (dest / "Old").exists()


def test_a_local_store_that_cannot_rename_keeps_the_old_name(cyrus_server, dovecot_server, mailenv):
    """Pulling from Cyrus into another IMAP account (which cannot rename here): after a
    rename the old destination folder keeps receiving the mail, nothing is copied twice,
    and no folder is made under the new name."""
    source, target = cyrus_server, dovecot_server
    alice, bob = source.add_user(), target.add_user()
    seed(source, alice, {"INBOX.Old": [body(1)]})
    url_a, url_b = imaps(source, alice), imaps(target, bob)
    env = {"MAILSYNC_PASSWORD_COMMAND": ""}
    password_file = mailenv / "pw"
    password_file.write_text(f"{alice.password}\n")

    def pull():
        # Two accounts, two passwords: each gets its own password_command.
        return run(
            "pull",
            "--json",
            f"{url_a}&password_command=cat%20{password_file}",
            f"{url_b}&password_command=echo%20{bob.password}",
            env=env,
        )

    first = pull()
    assert first.exit_code == 0, first.output
    with connect(source, alice) as client:
        client.rename_folder("INBOX.Old", "INBOX.New")
    seed(source, alice, {"INBOX.New": [body(2)]})
    result = pull()
    assert result.exit_code == 0, result.output
    assert (
        "its local folder stays 'Old': the local store cannot rename folders"
        in (report(result)["New"]["notes"])
    )
    assert on_server(target, bob) == {"Old": Counter([body(1), body(2)])}
    again = pull()
    assert again.exit_code == 0 and copied(again) == 0, again.output
    assert on_server(target, bob) == {"Old": Counter([body(1), body(2)])}
