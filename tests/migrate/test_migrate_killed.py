"""An IMAP -> IMAP migration (two users of the private Dovecot) interrupted over and
over -- kill -9 of the mailsync process at random moments, and the crash hook at random
durable steps -- into one DEST with one state, SOURCE growing between runs; then a run
to the end: every SOURCE message is in DEST exactly once (no duplicate from a copy that
was made but not recorded), and verify finds nothing missing or extra."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from imaptools import Msg, message, run, seed, server_bodies, when
from test_migrate_imap import imap_url

KILLS = 20  # at least this many kill -9 of a run still going
FOLDERS = ("INBOX", "Lists/dev", "Archive")


def add_mail(server, user, first: int, count: int) -> None:
    """`count` distinct messages from number `first` on, spread over FOLDERS, some big."""
    batch: dict[str, list[Msg]] = {folder: [] for folder in FOLDERS}
    for n in range(first, first + count):
        extra = b"a line of a longer message\n" * (2000 if n % 7 == 0 else n % 40)
        flags = frozenset({"\\Seen"} if n % 2 else {"\\Flagged", "Custom_Keyword"})
        batch[FOLDERS[n % len(FOLDERS)]].append(Msg(message(n, extra=extra), flags, when(2020)))
    seed(server, user, batch)


def in_dest(server, user) -> int:
    return sum(sum(counter.values()) for counter in server_bodies(server, user).values())


def start(state, *args, crash_at: int = 0) -> subprocess.Popen:
    env = {**os.environ, "XDG_STATE_HOME": str(state), "MAILSYNC_CRASH_AT": str(crash_at or "")}
    env.pop("MAILSYNC_PASSWORD", None)
    return subprocess.Popen(
        [sys.executable, "-m", "mailsync", *map(str, args)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_killed_at_random_moments_then_rerun_every_message_exactly_once(dovecot_server, mailenv):
    source, dest = dovecot_server.add_user(), dovecot_server.add_user()
    src, dst = imap_url(dovecot_server, source), imap_url(dovecot_server, dest)
    state = mailenv / "state"
    rng = random.Random(14)
    add_mail(dovecot_server, source, 0, 60)
    added, kills, hooks, midway, window = 60, 0, 0, 0, 2.0
    for attempt in range(120):
        if kills >= KILLS and hooks >= 5 and midway >= KILLS // 2:
            break
        if attempt % 4 == 3:  # the crash hook: killed right after a durable step
            process = start(state, "migrate", "--jobs", "1", src, dst, crash_at=rng.randint(1, 40))
            _, err = process.communicate(timeout=120)
            assert process.returncode in (0, 1, 137), err.decode(errors="replace")
            hooks += process.returncode == 137
        else:
            before = in_dest(dovecot_server, dest)
            process = start(state, "migrate", "--jobs", "2", src, dst)
            if attempt % 2:
                # Wait for the copy to begin (DEST grows), then kill a random moment into
                # it: between appends, before or after a flush or the state's commit.
                while process.poll() is None and in_dest(dovecot_server, dest) == before:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0, 0.3))
            else:  # anywhere: starting, logging in, listing, copying
                time.sleep(rng.uniform(0, window))
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
                process.communicate(timeout=120)
                midway += in_dest(dovecot_server, dest) > before
            else:
                window /= 2  # (runs end sooner than the window: narrow it)
                process.communicate(timeout=120)
        add_mail(dovecot_server, source, added, 12)  # something new to copy next time
        added += 12
    assert kills >= KILLS and hooks >= 5 and midway >= KILLS // 2, (kills, hooks, midway)

    final = run("migrate", "--json", src, dst, env={"XDG_STATE_HOME": str(state)})
    assert final.exit_code == 0, final.output
    assert json.loads(final.stdout)["complete"]
    wanted = server_bodies(dovecot_server, source)
    assert sum(sum(c.values()) for c in wanted.values()) == added
    got = server_bodies(dovecot_server, dest)
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in wanted.items() if v}
    assert all(n == 1 for counter in got.values() for n in counter.values())  # exactly once
    verified = run("verify", "--json", src, dst, env={"XDG_STATE_HOME": str(state)})
    assert verified.exit_code == 0, verified.output
    found = json.loads(verified.stdout)
    assert (found["missing"], found["extra"], found["changed_flags"]) == (0, 0, 0)
