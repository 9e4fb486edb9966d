"""`mailsync migrate` between local stores (Maildir, mbox): the report, the verdict and
exit codes, reruns, --dry-run, --delete-source, the accounts file (validation, shards
run as processes at once) and the rate limits with an injected clock."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from imaptools import maildir_bodies, maildir_files, message, run, write_local

from mailsync.channel import RunOptions, migrate_job
from mailsync.channel import run as run_job
from mailsync.config import Config
from mailsync.errors import ConfigError
from mailsync.ratelimit import RateLimit, parse_bytes_rate


def seed_maildir(root: Path, folders: dict[str, int], first: int = 0) -> None:
    n = first
    for folder, count in folders.items():
        for _ in range(count):
            write_local(root, folder, message(n), flags="S" if n % 2 else "", mtime=1.6e9 + n)
            n += 1


def snapshot(root: Path) -> dict[str, tuple[bytes, float]]:
    """Every file under `root`: its bytes and mtime (what "untouched" means)."""
    return {
        str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mtime)
        for path in root.rglob("*")
        if path.is_file()
    }


def files_under(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*")) if root.exists() else []


def state_dump(state_home: Path) -> dict[str, list[str]]:
    """Each state file's content as SQL (reading it may add SQLite's -wal and -shm)."""
    out = {}
    for db in sorted((state_home / "mailsync").glob("*.db")):
        con = sqlite3.connect(db)
        try:
            out[db.name] = list(con.iterdump())
        finally:
            con.close()
    return out


def state_rows(state_home: Path) -> dict[str, int]:
    """Rows of the state files' folders, pairs and runs tables, summed."""
    counts = Counter({"folders": 0, "pairs": 0, "runs": 0})
    for db in (state_home / "mailsync").glob("*.db"):
        con = sqlite3.connect(db)
        try:
            for table in counts:
                counts[table] += con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            con.close()
    return dict(counts)


def test_migrate_copies_reports_each_folder_and_a_rerun_copies_nothing(mailenv):
    src, dst = mailenv / "src", mailenv / "dst"
    seed_maildir(src, {"INBOX": 3, "Archive/2019": 2})
    before = snapshot(src)
    result = run("migrate", src, dst)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    inbox_bytes = sum(len(message(n)) for n in range(3))
    assert (
        f"INBOX: 3 messages ({inbox_bytes} B), copied 3, adopted 0, skipped 0, failed 0, missing 0"
        in lines
    )
    assert any(line.startswith("Archive/2019: 2 messages") and "copied 2" in line for line in lines)
    assert lines[-1] == "complete: every selected SOURCE message (5 in 2 folders) is in DEST"
    assert maildir_bodies(dst) == maildir_bodies(src)
    assert snapshot(src) == before  # SOURCE untouched: same files, bytes and mtimes

    again = run("migrate", "--json", src, dst)
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["copied"], report["adopted"], report["messages"]) == (0, 0, 5)
    assert report["complete"] is True and report["missing"] == 0
    assert report["bytes"] == sum(len(message(n)) for n in range(5))
    assert {f["folder"]: f["copied"] for f in report["folders"]} == {"INBOX": 0, "Archive/2019": 0}
    assert sum(len(files) for files in maildir_files(dst).values()) == 5
    assert snapshot(src) == before


def test_dry_run_writes_nothing_and_says_what_is_missing(mailenv):
    src, dst = mailenv / "src", mailenv / "dst"
    seed_maildir(src, {"INBOX": 2, "Sent": 1})
    result = run("migrate", "--dry-run", src, dst)
    assert result.exit_code == 0, result.output
    assert "INBOX: 2 messages" in result.output and "would copy 2" in result.output
    assert result.output.splitlines()[-1].startswith(
        "dry run: 3 of the 3 selected SOURCE messages in 2 folders are not in DEST yet"
    )
    assert not dst.exists()
    assert files_under(mailenv / "state") == []  # no state either

    # Against a DEST that exists, with part of the mail: still nothing written.
    assert run("migrate", "--folders", "INBOX", src, dst).exit_code == 0
    seed_maildir(src, {"INBOX": 1}, first=10)
    dst_before, state_before = snapshot(dst), state_dump(mailenv / "state")
    dry = run("migrate", "--dry-run", "--json", src, dst)
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert {f["folder"]: f["planned"] for f in report["folders"]} == {"INBOX": 1, "Sent": 1}
    assert report["missing"] == 2 and report["complete"] is False
    assert snapshot(dst) == dst_before and state_dump(mailenv / "state") == state_before


def test_mail_already_in_dest_is_adopted_not_copied_again(mailenv):
    src, dst = mailenv / "src", mailenv / "dst"
    seed_maildir(src, {"INBOX": 3})
    write_local(dst, "INBOX", message(1))  # an earlier migration by another tool
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["copied"], report["adopted"]) == (2, 1)
    assert maildir_bodies(dst)["INBOX"] == Counter(message(n) for n in range(3))


def test_incomplete_exits_1_names_what_is_missing_and_a_rerun_completes(mailenv):
    src, dst = mailenv / "src", mailenv / "dst"
    seed_maildir(src, {"INBOX": 2, "Archive": 2})
    dst.mkdir()
    (dst / "Archive").write_text("a file where the folder should go\n")
    result = run("migrate", src, dst)
    assert result.exit_code == 1, result.output
    assert "Archive: 2 messages" in result.output and "missing 2" in result.output
    assert result.output.count("  missing: ") == 2
    assert (
        "incomplete: 2 of the 4 selected SOURCE messages are not in DEST; rerun mailsync "
        "migrate to copy what is missing"
    ) in result.output
    (dst / "Archive").unlink()
    again = run("migrate", "--json", src, dst)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["copied"] == 2
    assert maildir_bodies(dst) == maildir_bodies(src)


def test_delete_source_deletes_only_what_the_check_found_in_dest(mailenv):
    src, dst = mailenv / "src", mailenv / "dst"
    seed_maildir(src, {"INBOX": 3, "Archive": 2})
    dst.mkdir()
    (dst / "Archive").write_text("blocks the folder: its messages cannot be copied\n")
    inbox = maildir_bodies(src)["INBOX"]
    result = run("migrate", "--delete-source", "--json", src, dst)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    deleted = {f["folder"]: f["deleted_from_source"] for f in report["folders"]}
    assert deleted == {"INBOX": 3, "Archive": 0}
    left = maildir_bodies(src)
    assert left.get("INBOX", Counter()) == Counter() and sum(left["Archive"].values()) == 2
    assert maildir_bodies(dst)["INBOX"] == inbox  # what was deleted is in DEST


@pytest.mark.parametrize(
    "args, words",
    [
        (["migrate", "only-one"], "give SOURCE DEST"),
        (["migrate", "a", "b", "--shard", "0/2"], "--shard goes with --accounts"),
        (["migrate", "a", "b", "--max-rate", "fast"], "--max-rate 'fast'"),
        (["migrate", "a", "b", "--max-messages-per-second", "0"], "--max-messages-per-second"),
    ],
)
def test_usage_errors_exit_2(mailenv, args, words):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert words in result.output


# -- the accounts file -------------------------------------------------------------------


def write_accounts(path: Path, rows: list[str], header: str = "") -> Path:
    header = header or "source,dest,source_password_command,dest_password_command"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_accounts_file_is_checked_whole_with_line_numbers_before_anything_runs(mailenv):
    seed_maildir(mailenv / "a", {"INBOX": 1})
    accounts = write_accounts(
        mailenv / "accounts.csv",
        [
            f"{mailenv / 'a'},{mailenv / 'out-a'},,",
            f"{mailenv / 'a'},,,",  # line 3: no dest
            f"{mailenv / 'a'},imaps://bob@127.0.0.1:1,,",  # line 4: no password command
            f"{mailenv / 'a'},{mailenv / 'out-b'},cat /dev/null,",  # line 5: local + command
            f"{mailenv / 'a'},{mailenv / 'out-a'},,",  # line 6: line 2 again
            "x,y,z",  # line 7: too few fields
        ],
    )
    result = run("migrate", "--accounts", accounts)
    assert result.exit_code == 2, result.output
    out = result.output
    assert "5 bad line(s), nothing was run" in out
    assert "line 3: dest is empty" in out
    assert "line 4: dest imaps://bob@127.0.0.1:1 needs a dest_password_command" in out
    assert "line 5: source" in out and "is local: it takes no password command" in out
    assert "line 6: the same SOURCE and DEST as line 2" in out
    assert "line 7: 3 fields, the header has 4" in out
    assert not (mailenv / "out-a").exists()  # line 2 is fine, but nothing ran

    bad_header = write_accounts(mailenv / "h.csv", ["a,b"], header="source,destination")
    result = run("migrate", "--accounts", bad_header)
    assert result.exit_code == 2
    assert "line 1: the header lacks the column(s) dest, source_password_command" in result.output


def test_password_in_a_url_of_the_accounts_file_is_refused(mailenv):
    seed_maildir(mailenv / "a", {"INBOX": 1})
    accounts = write_accounts(
        mailenv / "accounts.csv",
        [f"{mailenv / 'a'},imaps://bob:hunter2@127.0.0.1:1,,cat /dev/null"],
    )
    result = run("migrate", "--accounts", accounts)
    assert result.exit_code == 2, result.output
    assert "line 2:" in result.output and "hunter2" not in result.output


@pytest.mark.parametrize(
    "text, environ, expected",
    [("0/4", {}, (0, 4)), ("3/4", {}, (3, 4)), ("4", {"JOB_COMPLETION_INDEX": "2"}, (2, 4))],
)
def test_shard_k_counts_from_0_and_falls_back_to_job_completion_index(text, environ, expected):
    from mailsync.batch import parse_shard

    assert parse_shard(text, environ) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "a/b", "4"])
def test_bad_shards_are_usage_errors(text):
    from mailsync.batch import parse_shard

    with pytest.raises(ConfigError):
        parse_shard(text, {})


ACCOUNTS = 50
SHARDS = 4


def test_fifty_accounts_in_four_shards_at_once_migrate_each_account_exactly_once(mailenv):
    rows = []
    for i in range(ACCOUNTS):
        seed_maildir(mailenv / f"src{i}", {"INBOX": 1 + i % 3}, first=100 * i)
        rows.append(f"{mailenv / f'src{i}'},{mailenv / f'dst{i}'},,")
    accounts = write_accounts(mailenv / "accounts.csv", rows)
    env = {**os.environ, "XDG_STATE_HOME": str(mailenv / "state")}
    env.pop("MAILSYNC_CRASH_AT", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailsync",
                "migrate",
                "--accounts",
                str(accounts),
                "--shard",
                f"{k}/{SHARDS}",
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for k in range(SHARDS)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    lines = Counter(row["line"] for out, _ in outputs for row in json.loads(out)["accounts"])
    assert lines == Counter(range(2, ACCOUNTS + 2))  # every account in exactly one shard
    for out, _ in outputs:
        for row in json.loads(out)["accounts"]:
            assert row["result"] == "complete" and row["copied"] == row["messages"]
    for i in range(ACCOUNTS):
        assert maildir_bodies(mailenv / f"dst{i}") == maildir_bodies(mailenv / f"src{i}")
    # One state per account.
    assert len(list((mailenv / "state" / "mailsync").glob("*.db"))) == ACCOUNTS


def test_parallel_accounts_in_processes_summary_table(mailenv):
    rows = []
    for i in range(3):
        seed_maildir(mailenv / f"src{i}", {"INBOX": 2}, first=10 * i)
        rows.append(f"{mailenv / f'src{i}'},{mailenv / f'dst{i}'},,")
    rows.append(f"{mailenv / 'nowhere'},{mailenv / 'dst9'},,")  # line 5: fails
    accounts = write_accounts(mailenv / "accounts.csv", rows)
    result = run("migrate", "--accounts", accounts, "--parallel", "2")
    assert result.exit_code != 0, result.output
    table = result.output.splitlines()
    assert table[0].split()[:8] == [
        "account", "folders", "messages", "copied", "adopted", "skipped", "failed", "result"
    ]  # fmt: skip
    for line_number in (2, 3, 4):
        row = next(r for r in table if r.startswith(f"line {line_number}:"))
        assert row.split()[-7:] == ["1", "2", "2", "0", "0", "0", "complete"]
    failed = next(r for r in table if r.startswith("line 5:"))
    assert "error: " in failed and "nowhere" in failed
    assert "3 of 4 accounts complete" in result.output
    for i in range(3):
        assert maildir_bodies(mailenv / f"dst{i}") == maildir_bodies(mailenv / f"src{i}")


# -- rate limits ---------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_message_rate_lets_one_message_through_then_one_a_second():
    clock = FakeClock()
    limit = RateLimit(messages_per_second=2, clock=clock, sleep=clock.sleep)
    for _ in range(7):
        limit(100)
    # A burst of 2 (one second's worth), then 5 more at 2 a second.
    assert sum(clock.slept) == pytest.approx(2.5)
    assert limit.waited == pytest.approx(2.5)


def test_byte_rate_lends_to_a_big_message_and_the_next_ones_pay_it_back():
    clock = FakeClock()
    limit = RateLimit(bytes_per_second=1000, clock=clock, sleep=clock.sleep)
    limit(5000)  # five seconds' worth at once
    assert sum(clock.slept) == pytest.approx(4.0)
    clock.now += 10  # idle: the bucket refills to one second's worth, no more
    clock.slept.clear()
    limit(1000)
    limit(1000)
    assert sum(clock.slept) == pytest.approx(1.0)


def test_both_rates_the_slower_one_wins():
    clock = FakeClock()
    limit = RateLimit(
        bytes_per_second=10_000, messages_per_second=1, clock=clock, sleep=clock.sleep
    )
    for _ in range(4):
        limit(10)
    assert sum(clock.slept) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "text, rate",
    [("500000", 500000), ("500k", 512000), ("2M", 2 * 1024**2), ("2MB/s", 2 * 1024**2)],
)
def test_max_rate_values(text, rate):
    assert parse_bytes_rate(text) == rate


def test_the_engine_paces_every_message_it_copies(mailenv):
    """Through the real copy path (channel.run, Maildir -> Maildir): each copied message
    passes the limit once, with its size."""
    src, dst = mailenv / "src", mailenv / "dst"
    seed_maildir(src, {"INBOX": 4, "Archive": 2})
    clock = FakeClock()
    limit = RateLimit(messages_per_second=1, clock=clock, sleep=clock.sleep)
    seen = []

    def pace(size: int) -> None:
        seen.append(size)
        limit(size)

    job = migrate_job(Config(), str(src), str(dst))
    _, code = run_job(job, "migrate", str(mailenv / "state"), RunOptions(pace=pace))
    assert code == 0
    assert sorted(seen) == sorted(len(message(n)) for n in range(6))
    assert sum(clock.slept) == pytest.approx(5.0)  # 6 messages at 1 a second, burst 1
    # A rerun copies nothing, so waits for nothing.
    seen.clear()
    run_job(job, "migrate", str(mailenv / "state"), RunOptions(pace=pace))
    assert seen == []


def test_max_rate_on_the_command_line_reaches_the_copies(mailenv, monkeypatch):
    from mailsync import ratelimit

    calls = []
    monkeypatch.setattr(ratelimit.RateLimit, "__call__", lambda self, size: calls.append(
        (size, [bucket.rate for bucket, _ in self.buckets])
    ))  # fmt: skip
    seed_maildir(mailenv / "src", {"INBOX": 2})
    result = run("migrate", "--max-rate", "1k", "--max-messages-per-second", "3",
                 mailenv / "src", mailenv / "dst")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(calls) == sorted((len(message(n)), [1024.0, 3.0]) for n in range(2))


def test_a_pop3_source_that_deletes_after_download_is_refused(mailenv):
    url = "pop3s://bob@127.0.0.1:1?delete=after-download&password_command=true"
    result = run("migrate", url, mailenv / "dst")
    assert result.exit_code == 2, result.output
    assert "delete would delete in SOURCE, which a migration never does" in result.output
    assert not (mailenv / "dst").exists()


def test_a_dest_that_cannot_be_reached_exits_3_with_one_line(mailenv):
    seed_maildir(mailenv / "src", {"INBOX": 1})
    result = run(
        "migrate", "--json", mailenv / "src", "imaps://bob@127.0.0.1:1?password_command=true"
    )
    assert result.exit_code == 3, result.output
    assert result.stderr.count("mailsync: error:") == 1
    assert "cannot connect to 127.0.0.1:1" in result.stderr
    report = json.loads(result.stdout)
    assert report["complete"] is False and report["verdict"].startswith("not checked")


def test_shard_n_alone_takes_k_from_job_completion_index(mailenv, monkeypatch):
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)  # (a CI inside Kubernetes)
    rows = []
    for i in range(4):
        seed_maildir(mailenv / f"src{i}", {"INBOX": 1}, first=i)
        rows.append(f"{mailenv / f'src{i}'},{mailenv / f'dst{i}'},,")
    accounts = write_accounts(mailenv / "accounts.csv", rows)
    result = run(
        "migrate", "--accounts", accounts, "--shard", "2", "--json",
        env={"JOB_COMPLETION_INDEX": "1"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [row["line"] for row in json.loads(result.stdout)["accounts"]] == [3, 5]
    assert [i for i in range(4) if (mailenv / f"dst{i}").exists()] == [1, 3]
    unset = run("migrate", "--accounts", accounts, "--shard", "2")
    assert unset.exit_code == 2 and "set JOB_COMPLETION_INDEX" in unset.output


def test_a_message_deleted_in_dest_is_copied_again_by_migrate_not_by_pull(mailenv):
    """DEST must hold every SOURCE message: one deleted there since the last migrate is
    copied again (its pair's tombstone does not keep it away, as it does for a pull)."""
    src, dst = mailenv / "src", mailenv / "dst"
    seed_maildir(src, {"INBOX": 3})
    assert run("migrate", src, dst).exit_code == 0
    victim = next(p for p in maildir_files(dst)["INBOX"] if p.read_bytes() == message(1))
    victim.unlink()
    pulled = run("pull", src, dst)  # pull keeps a deletion on the local side
    assert pulled.exit_code == 0, pulled.output
    assert message(1) not in maildir_bodies(dst)["INBOX"]
    result = run("migrate", src, dst)
    assert result.exit_code == 0, result.output
    assert "copied 1, adopted 0" in result.output
    assert maildir_bodies(dst)["INBOX"] == Counter(message(n) for n in range(3))
    again = run("migrate", src, dst)
    assert again.exit_code == 0 and "copied 0, adopted 0" in again.output, again.output


def test_migrate_takes_map_and_the_selection_and_checks_only_what_it_selects(mailenv):
    """--map renames a folder on the way, --max-size leaves a message out: the migration
    is complete (exit 0) without it, names it as left out, and the check does not call
    it missing; without --max-size a rerun copies it."""
    src, dst = mailenv / "src", mailenv / "dst"
    seed_maildir(src, {"INBOX": 2, "Old": 1})
    big = message(9) + b"x" * 5000 + b"\n"
    write_local(src, "INBOX", big, mtime=1.6e9)
    result = run("migrate", "--map", "Old=New", "--max-size", "2K", src, dst)
    assert result.exit_code == 0, result.output
    assert "complete: every selected SOURCE message (3 in 2 folders) is in DEST" in result.output
    assert "Old -> New (--map Old=New): 1 messages" in result.output
    assert "INBOX: 2 messages" in result.output and "skipped 1," in result.output
    assert "  skipped: 1 over --max-size" in result.output
    assert maildir_bodies(dst)["New"] == Counter([message(2)])
    assert big not in maildir_bodies(dst)["INBOX"]
    check = run("verify", "--map", "Old=New", src, dst)
    assert check.exit_code == 1, check.output  # (verify checks every message)
    rest = run("migrate", src, dst)  # the pairing Old -> New is kept by the state
    assert rest.exit_code == 0, rest.output
    assert "Old -> New: 1 messages" in rest.output
    assert big in maildir_bodies(dst)["INBOX"]
    assert "New" in maildir_bodies(dst) and "Old" not in maildir_bodies(dst)
