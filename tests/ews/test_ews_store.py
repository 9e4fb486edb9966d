"""The Exchange store, driving the real exchangelib against the fake EWS server: initial
pull, paging, flag changes both ways, deletions, pushed messages that are not drafts and
not copied back, folder renames, an invalid SyncState, throttling, per-item errors, the
endpoint cache, TLS with a private CA, kill -9 between pages, and calendar items and
contacts changed on the server replacing their files (kill -9 at every step of that)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fakeews import FakeEWS
from imaptools import file_flags, maildir_bodies, maildir_files, run, run_process, write_local

from mailsync.message import to_lf
from mailsync.stores import ews as ewsmod
from mailsync.stores import ews_folder, open_store

USER, PASSWORD = "alice@example.org", "ews-pw-31"
CRASHED = 137


def mime(n: int, subject: str = "", extra: str = "") -> bytes:
    subject = subject or f"message {n}"
    return (
        f"From: bob@example.org\r\nTo: {USER}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{n}.ews@example.org>\r\nDate: Mon, 4 Mar 2019 05:06:07 +0000\r\n\r\n"
        f"Body {n}.\r\n{extra}"
    ).encode()


@pytest.fixture
def fake():
    server = FakeEWS(user=USER, password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def ews(mailenv, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(mailenv / "cache"))
    monkeypatch.setattr(ewsmod, "MAX_WAIT", 30)

    def url(server: FakeEWS, **query) -> str:
        options = {"tls": "none", "auth": "basic", **query}
        base = server.url.replace("http://", "ews://alice%40example.org@").replace(
            "https://", "ews://alice%40example.org@"
        )
        return base + "?" + "&".join(f"{k}={v}" for k, v in options.items())

    return url


def pull(url: str, root: Path, *extra: str):
    return run("-v", "pull", *extra, url, root, password=PASSWORD)


def set_flags(path: Path, letters: str) -> None:
    """What a mail reader does to a message it reads or flags: into cur/, with these
    Maildir flag letters."""
    path.rename(path.parent.parent / "cur" / (path.name.split(":")[0] + ":2," + letters))


def operations(server: FakeEWS, name: str) -> list[dict]:
    return [details for op, details in server.requests if op == name]


def mime_fetches(server: FakeEWS) -> int:
    """How many items were fetched with their MIME content."""
    return sum(len(d.get("ids") or ()) for d in operations(server, "GetItem") if d.get("mime"))


def test_initial_pull_of_the_mail_folders(fake, ews, mailenv):
    received = datetime(2021, 5, 6, 7, 8, 9, tzinfo=UTC)
    fake.add_item("inbox", mime(1), is_read=True, received=received)
    fake.add_item("inbox", mime(2), flagged=True, categories=["work", "Project X"])
    fake.add_item("inbox", mime(3, extra="Grüße ✓\r\n.\r\n"), last_verb=102)
    fake.add_item("inbox", mime(4), last_verb=104, is_read=True)
    fake.add_item("sentitems", mime(5), is_read=True)
    fake.add_item("deleteditems", mime(6))
    fake.add_folder("inbox", "Projects")
    fake.add_folder("inbox/Projects", "2024")
    fake.add_item("inbox/Projects/2024", mime(7))
    fake.add_folder("msgfolderroot", "Archive")
    fake.add_item("msgfolderroot/Archive", mime(8))
    root = mailenv / "mail"
    result = pull(ews(fake), root)
    assert result.exit_code == 0, result.output
    bodies = maildir_bodies(root)
    assert {k for k, v in bodies.items() if v} == {
        "INBOX",
        "Sent",
        "Trash",
        "INBOX/Projects/2024",
        "Archive",
    }
    assert not any("Calendar" in k or "Contacts" in k or "Tasks" in k for k in bodies)
    third = mime(3, extra="Grüße ✓\r\n.\r\n")
    assert bodies["INBOX"] == Counter(to_lf(m) for m in (mime(1), mime(2), third, mime(4)))
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    assert file_flags(files[to_lf(mime(1))]) == {"\\Seen"}
    assert files[to_lf(mime(1))].stat().st_mtime == received.timestamp()
    assert file_flags(files[to_lf(mime(2))]) == {"\\Flagged"}
    # Categories are keywords: Maildir keeps the ones that are IMAP atoms (Dovecot's way).
    keywords = (root / "INBOX" / "dovecot-keywords").read_text().split()
    letter = chr(ord("a") + int(keywords[keywords.index("work") - 1]))
    assert letter in files[to_lf(mime(2))].name.split(":2,")[1]
    assert "Project" not in keywords
    assert file_flags(files[to_lf(third)]) == {"\\Answered"}
    assert file_flags(files[to_lf(mime(4))]) == {"\\Seen", "$Forwarded"}


def test_rerun_downloads_nothing_and_sees_changes(fake, ews, mailenv):
    ids = [fake.add_item("inbox", mime(n)) for n in range(4)]
    root = mailenv / "mail"
    url = ews(fake)
    assert pull(url, root).exit_code == 0
    assert mime_fetches(fake) == 4
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert mime_fetches(fake) == 4  # nothing downloaded again
    fake.update_item(ids[0], is_read=True)
    fake.update_item(ids[1], flagged=True)
    fake.delete_item(ids[2])  # to Deleted Items
    fake.add_item("inbox", mime(10))
    result = pull(url, root, "--mirror")
    assert result.exit_code == 0, result.output
    assert mime_fetches(fake) == 5 + 1  # the new one, and the moved one in Trash
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    assert set(files) == {to_lf(mime(n)) for n in (0, 1, 3, 10)}
    assert file_flags(files[to_lf(mime(0))]) == {"\\Seen"}
    assert file_flags(files[to_lf(mime(1))]) == {"\\Flagged"}
    assert maildir_bodies(root)["Trash"] == Counter([to_lf(mime(2))])


def test_paging_with_a_small_page(fake, ews, mailenv, monkeypatch):
    monkeypatch.setattr(ews_folder, "PAGE_SIZE", 3)
    for n in range(10):
        fake.add_item("inbox", mime(n))
    root = mailenv / "mail"
    assert pull(ews(fake), root).exit_code == 0
    pages = [d for d in operations(fake, "SyncFolderItems") if d.get("max_changes") == 3]
    assert len(pages) >= 4
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in range(10))


def test_two_way_flags_deletions_and_new_mail(fake, ews, mailenv):
    ids = [fake.add_item("inbox", mime(n)) for n in range(4)]
    root = mailenv / "mail"
    url = ews(fake)
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    # Local changes: read 0, flag 1, delete 2, a new local message.
    set_flags(files[to_lf(mime(0))], "S")
    set_flags(files[to_lf(mime(1))], "F")
    files[to_lf(mime(2))].unlink()
    new_local = write_local(root, "INBOX", to_lf(mime(20)), flags="S", mtime=1_600_000_000)
    assert new_local.exists()
    result = run("-v", "sync", url, root, password=PASSWORD)
    assert result.exit_code == 0, result.output
    by_subject = {i["subject"]: i for i in fake.items("inbox")}
    assert by_subject["message 0"]["is_read"] is True
    assert by_subject["message 1"]["flag"] == "Flagged"
    assert "message 2" not in by_subject
    assert any(i["subject"] == "message 2" for i in fake.items("deleteditems"))
    created = by_subject["message 20"]
    assert created["is_draft"] is False and created["is_read"] is True
    assert created["mime"].replace(b"\r\n", b"\n") == to_lf(mime(20))
    assert created["received"].timestamp() == 1_600_000_000
    # The next run recognises the created message: nothing is copied back.
    result = run("sync", url, root, password=PASSWORD)
    assert result.exit_code == 0, result.output
    assert "copied 0 to local, 0 to remote" in result.output.split("INBOX:")[1]
    assert Counter(p.read_bytes() for p in maildir_files(root)["INBOX"]) == Counter(
        to_lf(mime(n)) for n in (0, 1, 3, 20)
    )
    assert len(fake.items("inbox")) == 4
    del ids


def test_keywords_and_answered_reach_exchange(fake, ews, mailenv):
    fake.add_item("inbox", mime(1))
    root = mailenv / "mail"
    url = ews(fake)
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    write_local(root, "INBOX", to_lf(mime(2)), flags="R")
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    item = next(i for i in fake.items("inbox") if i["subject"] == "message 2")
    assert item["last_verb"] == 102


def test_answered_and_forwarded_both_stay_though_exchange_keeps_one(fake, ews, mailenv):
    """Exchange keeps \\Answered and $Forwarded in one property (the last verb): a message
    forwarded on the server and replied to locally keeps both flags locally run after run
    (the server shows the reply), and one taken away locally is taken away on the server."""
    fake.add_item("inbox", mime(1), last_verb=104)
    root = mailenv / "mail"
    url = ews(fake)
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    (path,) = maildir_files(root)["INBOX"]
    assert file_flags(path) == {"$Forwarded"}
    letters = path.name.rpartition(":2,")[2]
    set_flags(path, "".join(sorted(letters + "R")))
    for _ in range(2):
        result = run("sync", url, root, password=PASSWORD)
        assert result.exit_code == 0, result.output
        (path,) = maildir_files(root)["INBOX"]
        assert file_flags(path) == {"\\Answered", "$Forwarded"}
        (item,) = fake.items("inbox")
        assert item["last_verb"] == 102
    # The reply taken away locally: the server keeps the forward.
    letters = path.name.rpartition(":2,")[2]
    set_flags(path, letters.replace("R", ""))
    for _ in range(2):
        assert run("sync", url, root, password=PASSWORD).exit_code == 0
        (path,) = maildir_files(root)["INBOX"]
        assert file_flags(path) == {"$Forwarded"}
        (item,) = fake.items("inbox")
        assert item["last_verb"] == 104


def test_folder_renamed_on_the_server_moves_its_local_folder(fake, ews, mailenv):
    """A parent renamed with its children (each its own folder id and state): the local
    folders move along, keep their mail and files, and nothing is downloaded again."""
    fake.add_folder("inbox", "Old")
    fake.add_folder("inbox/Old", "Kid")
    fake.add_item("inbox/Old", mime(1))
    fake.add_item("inbox/Old/Kid", mime(2))
    root = mailenv / "mail"
    url = ews(fake)
    assert pull(url, root).exit_code == 0
    files = {p.name for p in (root / "INBOX/Old").rglob("*") if p.is_file()}
    fake.rename_folder("inbox/Old", "New")
    fake.add_item("inbox/New/Kid", mime(3))
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert "renamed on the remote side from 'INBOX/Old'" in result.output
    assert "its local folder moved from 'INBOX/Old'" in result.output
    bodies = maildir_bodies(root)
    assert bodies["INBOX/New"] == Counter([to_lf(mime(1))])
    assert bodies["INBOX/New/Kid"] == Counter([to_lf(mime(2)), to_lf(mime(3))])
    assert not (root / "INBOX/Old").exists()
    assert files <= {p.name for p in (root / "INBOX/New").rglob("*") if p.is_file()}
    assert mime_fetches(fake) == 3
    again = pull(url, root)
    assert again.exit_code == 0, again.output
    assert "renamed" not in again.output and "moved" not in again.output
    assert mime_fetches(fake) == 3


def test_renamed_folder_whose_new_local_name_is_taken_keeps_its_old_one(fake, ews, mailenv):
    fake.add_folder("inbox", "Old")
    fake.add_item("inbox/Old", mime(1))
    root = mailenv / "mail"
    url = ews(fake)
    assert pull(url, root).exit_code == 0
    write_local(root, "INBOX/New", to_lf(mime(50)))  # the user's own folder
    fake.rename_folder("inbox/Old", "New")
    fake.add_item("inbox/New", mime(2))
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert "its local folder stays 'INBOX/Old': a local folder 'INBOX/New' exists" in result.output
    bodies = maildir_bodies(root)
    assert bodies["INBOX/Old"] == Counter([to_lf(mime(1)), to_lf(mime(2))])
    assert bodies["INBOX/New"] == Counter([to_lf(mime(50))])
    # Once the name is free, the next run moves the folder.
    for path in maildir_files(root)["INBOX/New"]:
        path.unlink()
    for sub in ("cur", "new", "tmp"):
        (root / "INBOX/New" / sub).rmdir()
    (root / "INBOX/New").rmdir()
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert maildir_bodies(root)["INBOX/New"] == Counter([to_lf(mime(1)), to_lf(mime(2))])
    assert "INBOX/Old" not in maildir_bodies(root)
    assert mime_fetches(fake) == 2


def test_verify_checks_a_renamed_folder_in_the_local_folder_it_kept(fake, ews, mailenv):
    """verify of the two stores a pull synced pairs the renamed folder (by its folder id)
    with the local folder the pull kept for it, not with the user's folder of its new
    name."""
    fake.add_folder("inbox", "Old")
    fake.add_item("inbox/Old", mime(1))
    root = mailenv / "mail"
    url = ews(fake)
    assert pull(url, root).exit_code == 0
    write_local(root, "INBOX/New", to_lf(mime(50)))  # the user's own folder
    fake.rename_folder("inbox/Old", "New")
    assert pull(url, root).exit_code == 0
    result = run("verify", url, root, password=PASSWORD)
    assert result.exit_code == 0, result.output
    assert "INBOX/New: 1 messages, ok" in result.output


def test_two_way_sync_does_not_copy_a_renamed_folder_back_under_its_old_name(fake, ews, mailenv):
    fake.add_folder("inbox", "Old")
    fake.add_item("inbox/Old", mime(1))
    root = mailenv / "mail"
    url = ews(fake)
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    write_local(root, "INBOX/New", to_lf(mime(50)))  # in the way of the move
    fake.rename_folder("inbox/Old", "New")
    result = run("sync", url, root, password=PASSWORD)
    assert result.exit_code == 0, result.output
    assert "its local folder stays 'INBOX/Old'" in result.output
    with pytest.raises(KeyError):
        fake.folder_id("inbox/Old")  # not created again from the local folder
    assert [i["subject"] for i in fake.items("inbox/New")] == ["message 1"]


MOVE_STEPS = ("move journaled", "move folder", "move recorded")


@pytest.mark.parametrize("layout", ["verbatim", "maildir++", "mbox"])
def test_rename_with_a_kill_at_every_step(layout, ews, mailenv):
    """kill -9 at each step of the local move that follows a rename (parent and child),
    then a rerun: every message exactly once, under the new names, nothing downloaded
    again.  (The steps after the move are the ordinary sync's, crash-tested elsewhere.)"""
    steps_seen = []
    step = 1
    while not set(MOVE_STEPS) <= set(steps_seen) or steps_seen[-1] in MOVE_STEPS:
        server = FakeEWS(user=USER, password=PASSWORD).start()
        try:
            server.add_folder("inbox", "Old")
            server.add_folder("inbox/Old", "Kid")
            server.add_item("inbox/Old", mime(1))
            server.add_item("inbox/Old", mime(2))
            server.add_item("inbox/Old/Kid", mime(3))
            server.add_item("inbox", mime(4))
            work = mailenv / f"run{step}"
            root = work / "mail"
            local = {
                "verbatim": f"maildir:{root}",
                "maildir++": f"maildir:{root}?layout=maildir++",
                "mbox": f"mbox:{root}",
            }[layout]
            args = (ews(server), local, work, mailenv / "cache")
            assert _pull_process(*args).returncode == 0
            fetched = mime_fetches(server)
            server.rename_folder("inbox/Old", "New")
            crashed = _pull_process(*args, crash_at=step)
            assert crashed.returncode == CRASHED, crashed.stderr
            steps_seen.append(
                re.search(r"crash hook: exiting at step \d+ \((.*)\)", crashed.stderr)[1]
            )
            rerun = _pull_process(*args)
            assert rerun.returncode == 0, f"after a crash at {steps_seen[-1]}: {rerun.stderr}"
            want = {
                "INBOX": Counter([to_lf(mime(4))]),
                "INBOX/New": Counter([to_lf(mime(1)), to_lf(mime(2))]),
                "INBOX/New/Kid": Counter([to_lf(mime(3))]),
            }
            assert local_contents(local) == want, f"crash at {steps_seen[-1]}"
            assert mime_fetches(server) == fetched, f"crash at {steps_seen[-1]}"
            assert _pull_process(*args).returncode == 0
            assert local_contents(local) == want
        finally:
            server.stop()
        step += 1
    assert steps_seen[:3] == list(MOVE_STEPS)


@pytest.mark.parametrize("layout", ["maildir++", "mbox"])
def test_a_move_cut_short_is_finished_by_the_next_run(layout, fake, ews, mailenv):
    """Killed in the middle of a move (made by hand here: the crash hook has no step
    inside a store's rename): the journal has the move, part of it is on disk, the rest
    is not; the next run finishes it instead of taking the half-moved folder for a name
    in the way."""
    fake.add_folder("inbox", "Old")
    fake.add_folder("inbox/Old", "Kid")
    fake.add_item("inbox/Old", mime(1))
    fake.add_item("inbox/Old/Kid", mime(2))
    root = mailenv / "mail"
    local = f"maildir:{root}?layout=maildir++" if layout == "maildir++" else f"mbox:{root}"
    args = (ews(fake), local, mailenv, mailenv / "cache")
    assert _pull_process(*args).returncode == 0
    fake.rename_folder("inbox/Old", "New")
    crashed = _pull_process(*args, crash_at=1)
    assert "exiting at step 1 (move journaled)" in crashed.stderr
    if layout == "maildir++":
        (root / ".INBOX.Old.Kid").rename(root / ".INBOX.New.Kid")
    else:
        (root / "INBOX.sbd" / "Old.sbd").rename(root / "INBOX.sbd" / "New.sbd")
    result = _pull_process(*args)
    assert result.returncode == 0, result.stderr
    assert local_contents(local) == {
        "INBOX/New": Counter([to_lf(mime(1))]),
        "INBOX/New/Kid": Counter([to_lf(mime(2))]),
    }
    assert mime_fetches(fake) == 2


def test_a_renamed_calendar_moves_its_vdir(fake, ews, mailenv):
    fake.add_folder("calendar", "Team", folder_class="IPF.Appointment")
    fake.add_item("calendar/Team", ICS.format(n=1).encode())
    root = mailenv / "mail"
    url = ews(fake, items="mail,calendar")
    assert pull(url, root).exit_code == 0
    fake.rename_folder("calendar/Team", "Crew")
    fake.add_item("calendar/Crew", ICS.format(n=2).encode())
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert "Calendar/Crew: its local folder moved from 'Calendar/Team'" in result.output
    assert not (root / "Calendar" / "Team").exists()
    assert sorted(p.read_bytes() for p in (root / "Calendar" / "Crew").glob("*.ics")) == sorted(
        to_lf(ICS.format(n=n).encode()) for n in (1, 2)
    )
    assert (root / "Calendar" / "Crew" / ".mailsync-vdir").read_text() == "calendar\n"


def _pull_process(url, local, work, cache, crash_at=0):
    return run_process(
        "-vv", "pull", url, local, password=PASSWORD, state=work / "state", crash_at=crash_at,
        env={"XDG_CACHE_HOME": str(cache)},
    )  # fmt: skip


def local_contents(url: str) -> dict[str, Counter]:
    with open_store(url, read_only=True) as store:
        out = {}
        for name in store.list_folders():
            box = store.open_folder(name)
            out[name] = Counter(box.fetch(k) for k in box.list())
            box.close()
        return {name: bodies for name, bodies in out.items() if bodies}


def test_invalid_sync_state_is_a_full_listing_without_downloads(fake, ews, mailenv):
    for n in range(5):
        fake.add_item("inbox", mime(n))
    root = mailenv / "mail"
    url = ews(fake)
    assert pull(url, root).exit_code == 0
    fake.invalidate_sync_states()
    fake.add_item("inbox", mime(5))
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert "no longer knows the last sync state" in result.output
    assert mime_fetches(fake) == 6
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in range(6))


def test_throttling_is_waited_out_and_reported(fake, ews, mailenv):
    fake.add_item("inbox", mime(1))
    url = ews(fake)
    root = mailenv / "mail"
    assert pull(url, root).exit_code == 0
    fake.add_item("inbox", mime(2))
    fake.busy(2, back_off_ms=300)
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert "busy" in result.output
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(1)), to_lf(mime(2))])


def test_throttling_that_never_ends_gives_up_cleanly(fake, ews, mailenv, monkeypatch):
    monkeypatch.setattr(ewsmod, "MAX_WAIT", 1)
    fake.add_item("inbox", mime(1))
    url = ews(fake)
    root = mailenv / "mail"
    fake.busy(1000, back_off_ms=5000)
    result = pull(url, root)
    assert result.exit_code == 1, result.output  # a rerun helps; the state is consistent
    assert "kept throttling" in result.output and "gave up" in result.output
    fake.busy(0)
    assert pull(url, root).exit_code == 0
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(1))])


def test_per_item_error_skips_that_item_with_a_warning(fake, ews, mailenv):
    good = [fake.add_item("inbox", mime(n)) for n in range(3)]
    bad = fake.add_item("inbox", mime(99))
    fake.fail_item(bad)
    root = mailenv / "mail"
    url = ews(fake)
    result = pull(url, root)
    assert result.exit_code == 1, result.output
    assert "ErrorMimeContentConversionFailed" in result.output
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in range(3))
    fake.fail_item(bad, None)
    assert pull(url, root).exit_code == 0
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in (0, 1, 2, 99))
    del good


def test_wrong_password_is_exit_3(fake, ews, mailenv):
    result = run("pull", ews(fake), mailenv / "mail", password="nope-nope")
    assert result.exit_code == 3, result.output
    assert "login failed" in result.output
    assert "nope-nope" not in result.output


def test_endpoint_and_version_are_cached(fake, ews, mailenv):
    fake.add_item("inbox", mime(1))
    url = ews(fake)
    assert pull(url, mailenv / "mail").exit_code == 0
    probes = len(operations(fake, "ConvertId"))
    assert probes >= 1
    cache = list((mailenv / "cache" / "mailsync").glob("ews-*.json"))
    assert len(cache) == 1 and cache[0].stat().st_mode & 0o777 == 0o600
    assert pull(url, mailenv / "mail").exit_code == 0
    assert len(operations(fake, "ConvertId")) == probes  # no second probe


def test_private_ca_over_https(mailenv, ews, tmp_path):
    import ssl

    from servers.dovecot import make_certificates

    (tmp_path / "tls").mkdir()
    cafile, certfile, keyfile = make_certificates(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    server = FakeEWS(user=USER, password=PASSWORD, ssl_context=context).start()
    try:
        server.add_item("inbox", mime(1))
        base = ews(server, tls="implicit").replace("tls=implicit&", "")
        result = run("pull", base, mailenv / "a", password=PASSWORD)
        assert result.exit_code == 3, result.output
        assert "not trusted" in result.output
        result = run("pull", f"{base}&cafile={cafile}", mailenv / "b", password=PASSWORD)
        assert result.exit_code == 0, result.output
        assert maildir_bodies(mailenv / "b")["INBOX"] == Counter([to_lf(mime(1))])
    finally:
        server.stop()


def inbox_cursor(state_home: Path) -> dict:
    import json
    import sqlite3

    for db in (state_home / "mailsync").glob("*.db"):
        con = sqlite3.connect(db)
        try:
            row = con.execute("SELECT cursor_a FROM folders WHERE name_a = 'INBOX'").fetchone()
        finally:
            con.close()
        if row:
            return json.loads(row[0])
    return {}


def test_kill_between_pages_then_rerun(fake, ews, mailenv):
    """The crash hook at every step of a paged pull (pages of 2), then a rerun: every
    message exactly once, nothing fetched twice after it was recorded."""
    for n in range(9):
        fake.add_item("inbox", mime(n))
    root = mailenv / "mail"
    url = ews(fake)
    env_state = mailenv / "state"
    log = []
    partial_cursors = 0
    for crash_at in range(1, 100):
        done = run_process(
            "-v", "pull", url, root, password=PASSWORD, state=env_state, crash_at=crash_at,
            env={"MAILSYNC_EWS_PAGE_SIZE": "2", "XDG_CACHE_HOME": str(mailenv / "cache")},
        )  # fmt: skip
        log.append(f"step {crash_at}: {done.returncode}\n{done.stderr}")
        assert done.returncode in (0, CRASHED), done.stderr
        got = maildir_bodies(root).get("INBOX", Counter())
        assert max(got.values(), default=0) <= 1, log[-1]
        if sum(got.values()) < 9 and inbox_cursor(env_state):
            partial_cursors += 1  # a page's SyncState was committed with its messages
        if done.returncode == 0:
            break
    assert crash_at > 5
    assert partial_cursors > 0
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in range(9))


@pytest.mark.parametrize("status", [429, 503])
def test_http_throttling_with_retry_after_is_waited_out(fake, ews, mailenv, status):
    fake.add_item("inbox", mime(1))
    url = ews(fake)
    root = mailenv / "mail"
    assert pull(url, root).exit_code == 0
    fake.add_item("inbox", mime(2))
    fake.busy(1, back_off_ms=1000, http=status)
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert "busy" in result.output or "throttl" in result.output or status == 503
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(1)), to_lf(mime(2))])
    assert any(d.get("http_status") == status for _, d in fake.requests)


def test_hard_delete_when_asked(fake, ews, mailenv):
    for n in range(10):
        fake.add_item("inbox", mime(n))
    root = mailenv / "mail"
    url = ews(fake, hard_delete="true")
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    files[to_lf(mime(3))].unlink()
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    assert len(fake.items("inbox")) == 9 and fake.items("deleteditems") == []


def test_oauth2_with_a_token_command(fake, ews, mailenv):
    fake.bearer_token = "tok-123.abc"
    fake.add_item("inbox", mime(1))
    conf = mailenv / "config.toml"
    url = ews(fake).split("?")[0]
    conf.write_text(
        f'[store.work]\nurl = "{url}"\ntls = "none"\nauth = "oauth2"\n'
        'token_command = "echo tok-123.abc"\n\n'
        f'[store.backup]\nurl = "maildir:{mailenv / "mail"}"\n\n'
        '[channel.work]\nremote = "work"\nlocal = "backup"\n'
    )
    result = run("--config", conf, "pull", "work")
    assert result.exit_code == 0, result.output
    assert maildir_bodies(mailenv / "mail")["INBOX"] == Counter([to_lf(mime(1))])
    fake.bearer_token = "another"
    result = run("--config", conf, "pull", "work")
    assert result.exit_code == 3, result.output


def test_bad_options_are_config_errors(mailenv):
    for query, text in (
        ("auth=kerberos", "auth must be one of"),
        ("auth=oauth2", "needs client_id"),
        ("items=mail,tasks", "items must be a list"),
        ("colour=blue", "unknown option"),
    ):
        result = run("pull", f"ews://a%40b.c@example.org/EWS/Exchange.asmx?{query}", mailenv / "m")
        assert result.exit_code == 2, (query, result.output)
        assert text in result.output, (query, result.output)


def test_item_ids_and_change_keys_are_recorded(fake, ews, mailenv):
    import sqlite3

    ids = [fake.add_item("inbox", mime(n)) for n in range(3)]
    root = mailenv / "mail"
    url = ews(fake)
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    set_flags(files[to_lf(mime(0))], "S")
    assert run("sync", url, root, password=PASSWORD).exit_code == 0
    (db,) = (mailenv / "state" / "mailsync").glob("*.db")
    con = sqlite3.connect(db)
    recorded = dict(con.execute("SELECT key_a, version_a FROM pairs"))
    con.close()
    current = {i["id"]: i["change_key"] for i in fake.items("inbox")}
    assert set(recorded) == set(ids) and recorded == current


ICS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\n"
    "UID:{n}@example.org\r\nDTSTAMP:20240101T000000Z\r\nDTSTART:20240102T100000Z\r\n"
    "SUMMARY:meeting {n}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)
VCF = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{n}@example.org\r\nFN:Person {n}\r\nEND:VCARD\r\n"


def test_calendar_and_contacts_are_backed_up_as_vdirs(fake, ews, mailenv):
    fake.add_item("inbox", mime(1))
    events = [fake.add_item("calendar", ICS.format(n=n).encode()) for n in range(3)]
    fake.add_item("contacts", VCF.format(n=1).encode())
    fake.add_folder("calendar", "Team", folder_class="IPF.Appointment")
    fake.add_item("calendar/Team", ICS.format(n=9).encode())
    fake.add_folder("calendar", "Notes")  # a mail folder below a calendar
    fake.add_item("calendar/Notes", mime(2))
    root = mailenv / "mail"
    url = ews(fake, items="mail,calendar,contacts")
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    ics = sorted(p.read_bytes() for p in (root / "Calendar").glob("*.ics"))
    assert ics == sorted(to_lf(ICS.format(n=n).encode()) for n in range(3))
    assert [p.read_bytes() for p in (root / "Calendar" / "Team").glob("*.ics")] == [
        to_lf(ICS.format(n=9).encode())
    ]
    assert [p.read_bytes() for p in (root / "Contacts").glob("*.vcf")] == [
        to_lf(VCF.format(n=1).encode())
    ]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (root / "Calendar").glob("*.ics"))
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(1))])
    assert maildir_bodies(root)["Calendar/Notes"] == Counter([to_lf(mime(2))])
    # Incremental: nothing again, then one new event and one deleted (with --mirror).
    fetched = mime_fetches(fake)
    assert pull(url, root).exit_code == 0
    assert mime_fetches(fake) == fetched
    fake.add_item("calendar", ICS.format(n=5).encode())
    fake.delete_item(events[0], hard=True)
    result = pull(url, root, "--mirror")
    assert result.exit_code == 0, result.output
    assert mime_fetches(fake) == fetched + 1
    ics = sorted(p.read_bytes() for p in (root / "Calendar").glob("*.ics"))
    assert ics == sorted(to_lf(ICS.format(n=n).encode()) for n in (1, 2, 5))


def test_mail_only_by_default(fake, ews, mailenv):
    fake.add_item("calendar", ICS.format(n=1).encode())
    fake.add_item("inbox", mime(1))
    root = mailenv / "mail"
    assert pull(ews(fake), root).exit_code == 0
    assert not (root / "Calendar").exists() and not (root / "Contacts").exists()


SERIES = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\n"
    "UID:series@example.org\r\nDTSTAMP:20240101T000000Z\r\nDTSTART:20240102T090000Z\r\n"
    "RRULE:FREQ=DAILY;COUNT=5\r\nSUMMARY:standup\r\nEND:VEVENT\r\n{exception}END:VCALENDAR\r\n"
)
EXCEPTION = (
    "BEGIN:VEVENT\r\nUID:series@example.org\r\nDTSTAMP:20240101T000000Z\r\n"
    "RECURRENCE-ID:20240103T090000Z\r\nDTSTART:20240103T110000Z\r\n"
    "SUMMARY:standup (moved)\r\nEND:VEVENT\r\n"
)


def _vdir_files(root: Path) -> dict[str, bytes]:
    """Every item file of the vdirs under `root`: path relative to it -> bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for pattern in ("Calendar/**/*.ics", "Contacts/**/*.vcf")
        for path in root.glob(pattern)
    }


def _changing_items(fake: FakeEWS) -> dict[str, str]:
    """A message, an event, a series and a contact; their ItemIds."""
    return {
        "message": fake.add_item("inbox", mime(1)),
        "event": fake.add_item("calendar", ICS.format(n=1).encode()),
        "series": fake.add_item("calendar", SERIES.format(exception="").encode()),
        "contact": fake.add_item("contacts", VCF.format(n=1).encode()),
    }


def _changed(n: int) -> dict[str, bytes]:
    """The items as changed on the server (n-th time): the event moved and renamed, an
    exception in the series, the contact renamed."""
    moved = ICS.format(n=1).replace("T100000Z", f"T1{n}3000Z").replace("meeting 1", f"lunch {n}")
    return {
        "event": moved.encode(),
        "series": SERIES.format(exception=EXCEPTION.replace("(moved)", f"(moved {n})")).encode(),
        "contact": VCF.format(n=1).replace("Person 1", f"Person 1 ({n})").encode(),
    }


def _assert_current(root: Path, current: dict[str, bytes]) -> None:
    """One file per item, each with the server's current content."""
    assert sorted(p.read_bytes() for p in (root / "Calendar").glob("*.ics")) == sorted(
        to_lf(current[k]) for k in ("event", "series")
    )
    assert [p.read_bytes() for p in (root / "Contacts").glob("*.vcf")] == [
        to_lf(current["contact"])
    ]


@pytest.mark.parametrize("mirror", [False, True], ids=["paged", "mirror"])
def test_items_changed_on_the_server_replace_their_files(fake, ews, mailenv, mirror):
    """An event moved and renamed, a series given an exception, a contact changed (new
    ChangeKeys): each local file is replaced by the new version, one file per item, by a
    keep-pull (page by page) and by a --mirror pull (the whole folder at once); reruns
    with nothing new download and rewrite nothing; a message whose flags change (its
    ChangeKey too) is not downloaded again."""
    ids = _changing_items(fake)
    root = mailenv / "mail"
    url = ews(fake, items="mail,calendar,contacts")
    extra = ("--mirror",) if mirror else ()
    assert pull(url, root, *extra).exit_code == 0
    before = _vdir_files(root)
    for n in (1, 2):  # (a second change: the version recorded by the first is current)
        current = _changed(n)
        for what, data in current.items():
            fake.update_item(ids[what], mime=data)
        fake.update_item(ids["message"], is_read=True, flagged=n == 1)
        fetched = mime_fetches(fake)
        if n == 1:  # a dry run says which files would be replaced, and changes none
            result = pull(url, root, "--dry-run", *extra)
            assert result.exit_code == 0, result.output
            assert result.output.count("(changed: replaces ") == 3, result.output
            assert _vdir_files(root) == before and mime_fetches(fake) == fetched
        result = pull(url, root, *extra)
        assert result.exit_code == 0, result.output
        assert mime_fetches(fake) == fetched + 3  # the three items, not the message
        _assert_current(root, current)
        after = _vdir_files(root)
        assert not set(after) & set(before)  # replaced, not rewritten in place
        (message,) = maildir_files(root)["INBOX"]
        assert file_flags(message) == ({"\\Seen", "\\Flagged"} if n == 1 else {"\\Seen"})
        for _ in range(2):
            result = pull(url, root, *extra)
            assert result.exit_code == 0, result.output
            assert _vdir_files(root) == after
        assert mime_fetches(fake) == fetched + 3
        before = after


@pytest.mark.parametrize("mirror", [False, True], ids=["paged", "mirror"])
def test_kill_at_every_step_of_replacing_changed_items(fake, ews, mailenv, mirror):
    """The crash hook at each step of a run that replaces changed items, then a rerun:
    every time one file per item with the newest content, a run after that rewrites
    nothing, and one after a further change replaces each file again (the state knows
    the new files).  Each crash starts from the same backup (taken before the changes)."""
    import shutil

    ids = _changing_items(fake)
    work, base = mailenv / "work", mailenv / "base"
    root = work / "mail"  # (the state knows the local root's path)
    url = ews(fake, items="calendar,contacts")
    extra = ("--mirror",) if mirror else ()
    done = _pull_process(url, root, work, mailenv / "cache")
    assert done.returncode == 0, done.stderr
    shutil.copytree(work, base, symlinks=True)
    current = _changed(1)
    for what, data in current.items():
        fake.update_item(ids[what], mime=data)
    replaced = 0
    for crash_at in range(1, 100):
        shutil.rmtree(work)
        shutil.copytree(base, work, symlinks=True)
        crashed = run_process(
            "-v", "pull", *extra, url, root, password=PASSWORD, state=work / "state",
            crash_at=crash_at, env={"XDG_CACHE_HOME": str(mailenv / "cache")},
        )  # fmt: skip
        assert crashed.returncode in (0, CRASHED), crashed.stderr
        replaced += "replaced" in crashed.stderr
        for _ in range(2):  # the rerun mends, the next one rewrites nothing
            done = _pull_process(url, root, work, mailenv / "cache")
            assert done.returncode == 0, f"after a crash at step {crash_at}: {done.stderr}"
            _assert_current(root, current)
            if _ == 0:
                after = _vdir_files(root)
            assert _vdir_files(root) == after
        # The state is right too: a later change replaces each file again.
        for what, data in _changed(2).items():
            fake.update_item(ids[what], mime=data)
        done = _pull_process(url, root, work, mailenv / "cache")
        assert done.returncode == 0, done.stderr
        _assert_current(root, _changed(2))
        for what, data in current.items():  # (for the next crash, from the backup)
            fake.update_item(ids[what], mime=data)
        if crashed.returncode == 0:
            break
    assert crash_at > 4 and replaced > 0


def test_a_new_change_key_with_the_same_content_rewrites_nothing(fake, ews, mailenv):
    """A change Exchange gives a new ChangeKey but that leaves the item's MIME as it was
    (a category): the item is downloaded to be compared, its file stays; then it is
    current (not downloaded again)."""
    ids = _changing_items(fake)
    root = mailenv / "mail"
    url = ews(fake, items="calendar,contacts")
    assert pull(url, root).exit_code == 0
    before = _vdir_files(root)
    fake.update_item(ids["event"], categories=["Work"])
    fetched = mime_fetches(fake)
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert mime_fetches(fake) == fetched + 1
    assert _vdir_files(root) == before
    assert pull(url, root).exit_code == 0
    assert mime_fetches(fake) == fetched + 1


def test_two_way_sync_replaces_changed_items_too(fake, ews, mailenv):
    """A two-way run copies a changed event and contact remote -> local over their old
    files as a pull does, and sends nothing back (items are pulled only)."""
    ids = _changing_items(fake)
    root = mailenv / "mail"
    url = ews(fake, items="calendar,contacts")
    result = run("-v", "sync", url, root, password=PASSWORD)
    assert result.exit_code == 0, result.output
    before = _vdir_files(root)
    current = _changed(1)
    for what, data in current.items():
        fake.update_item(ids[what], mime=data)
    result = run("-v", "sync", url, root, password=PASSWORD)
    assert result.exit_code == 0, result.output
    _assert_current(root, current)
    after = _vdir_files(root)
    assert not set(after) & set(before)
    assert not operations(fake, "CreateItem") and not operations(fake, "DeleteItem")
    result = run("-v", "sync", url, root, password=PASSWORD)
    assert result.exit_code == 0, result.output
    assert _vdir_files(root) == after


def test_items_in_a_channel(fake, ews, mailenv):
    """`items` in a channel takes the calendars of its Exchange store, which another
    channel on the same store leaves out; on an IMAP remote it is a config error."""
    fake.add_item("inbox", mime(1))
    fake.add_item("calendar", ICS.format(n=1).encode())
    conf = mailenv / "config.toml"
    url = ews(fake)
    conf.write_text(
        f'[store.work]\nurl = "{url}"\n\n'
        '[channel.all]\nremote = "work"\n'
        f'local = "maildir:{mailenv / "all"}"\nitems = ["mail", "calendar"]\n\n'
        '[channel.mail]\nremote = "work"\n'
        f'local = "maildir:{mailenv / "mail"}"\n'
    )
    for channel in ("all", "mail"):
        result = run("--config", conf, "pull", channel, password=PASSWORD)
        assert result.exit_code == 0, result.output
    assert [p.read_bytes() for p in (mailenv / "all" / "Calendar").glob("*.ics")] == [
        to_lf(ICS.format(n=1).encode())
    ]
    assert not (mailenv / "mail" / "Calendar").exists()
    assert maildir_bodies(mailenv / "mail")["INBOX"] == Counter([to_lf(mime(1))])
    conf.write_text(
        '[channel.imap]\nremote = "imaps://a@example.org"\n'
        f'local = "maildir:{mailenv / "x"}"\nitems = ["mail"]\n'
    )
    result = run("--config", conf, "pull", "imap")
    assert result.exit_code == 2 and "items applies to an ews:// or graph://" in result.output
