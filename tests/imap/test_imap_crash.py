"""kill -9 during a pull and during a two-way sync against Dovecot, at random points (a
seeded random: real SIGKILLs after a random delay, and the MAILSYNC_CRASH_AT hook at a
random step), then a rerun: every message exactly once on both sides."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

from imaptools import (
    Msg,
    connect,
    maildir_bodies,
    maildir_files,
    message,
    run_process,
    seed,
    server_bodies,
    server_messages,
    when,
    write_local,
)

ROUNDS = 20
CRASHED = 137


def imaps(server, user) -> str:
    return f"{server.url('imaps', user)}?cafile={server.cafile}"


def killed_run(
    args, password, state, rng: random.Random, typical: float, max_step: int, finished=(0,)
):
    """One run of mailsync that is killed: half the time with a real SIGKILL after a random
    delay, half the time by the crash hook at a random step (a run that ends before it
    must exit with one of `finished`).  Returns how it ended."""
    if rng.random() < 0.5:
        crash_at = rng.randint(1, max_step)
        done = run_process("-v", *args, password=password, state=state, crash_at=crash_at)
        assert done.returncode in (*finished, CRASHED), done.stderr
        return f"step {crash_at}: exit {done.returncode}\n{done.stderr}"
    env = {**os.environ, "XDG_STATE_HOME": str(state), "MAILSYNC_PASSWORD": password}
    env.pop("MAILSYNC_CRASH_AT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailsync", "-v", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    delay = rng.uniform(0.0, typical)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    return f"SIGKILL after {delay:.3f} s: exit {proc.returncode}\n{stderr}"


def timed(args, password, state, finished=(0,)) -> float:
    started = time.monotonic()
    done = run_process(*args, password=password, state=state)
    assert done.returncode in finished, done.stderr
    return time.monotonic() - started


def pull_corpus() -> dict[str, list[Msg]]:
    big = b"".join(b"line %d of a longer message\n" % i for i in range(3000))
    return {
        "INBOX": [
            Msg(message(i, extra=big if i % 4 == 0 else b""), frozenset(), when(2020))
            for i in range(10)
        ]
        + [Msg(message(3), frozenset({"\\Seen"}), when(2021))],  # a duplicate
        "Archive/2019": [Msg(message(20 + i), frozenset({"\\Seen"}), when(2019)) for i in range(6)],
        "Entwürfe": [Msg(message(30 + i), frozenset({"\\Draft"}), when(2022)) for i in range(4)],
    }


def test_kill_during_pull(dovecot_server, tmp_path):
    server = dovecot_server
    user = server.add_user()
    seed(server, user, pull_corpus())
    want = server_bodies(server, user)
    rng = random.Random(20240607)
    typical = timed(
        ["pull", imaps(server, user), f"maildir:{tmp_path / 'ref'}"],
        user.password,
        tmp_path / "ref-state",
    )
    history = []
    for n in range(ROUNDS):
        dest, state = tmp_path / f"r{n}" / "mail", tmp_path / f"r{n}" / "state"
        args = ["pull", imaps(server, user), f"maildir:{dest}"]
        history.append(killed_run(args, user.password, state, rng, typical, max_step=45))
        rerun = run_process(*args, password=user.password, state=state)
        assert rerun.returncode == 0, f"{history[-1]}: {rerun.stderr}"
        got = maildir_bodies(dest)
        assert got == want, f"round {n} ({history[-1]})"
        again = run_process(*args, password=user.password, state=state)
        assert again.returncode == 0 and maildir_bodies(dest) == want, history[-1]
    assert server_bodies(server, user) == want  # a pull never changes the server
    assert any("SIGKILL" in h for h in history) and any("exit 137" in h for h in history)


def test_kill_during_two_way_sync(dovecot_server, tmp_path):
    server = dovecot_server
    rng = random.Random(4242)
    typical = None
    history = []
    for n in range(ROUNDS):
        user = server.add_user()
        seed(
            server,
            user,
            {
                "INBOX": [Msg(message(i), frozenset(), when(2020, 1, i + 1)) for i in range(6)]
                + [Msg(message(2), frozenset(), when(2020))],  # a duplicate on the server
                "Work": [Msg(message(10 + i), frozenset(), when(2021)) for i in range(3)],
            },
        )
        local, state = tmp_path / f"r{n}" / "mail", tmp_path / f"r{n}" / "state"
        write_local(local, "INBOX", message(50), flags="S")
        write_local(local, "Local", message(60))
        args = ["sync", imaps(server, user), f"maildir:{local}"]
        first = run_process(*args, password=user.password, state=state)
        assert first.returncode == 0, first.stderr
        want = {
            "INBOX": Counter([message(i) for i in range(6)] + [message(2), message(50)]),
            "Work": Counter(message(10 + i) for i in range(3)),
            "Local": Counter([message(60)]),
        }
        assert server_bodies(server, user) == want == maildir_bodies(local)

        # Changes on both sides, then a killed sync and a rerun.
        files = {p.read_bytes(): p for p in maildir_files(local)["INBOX"]}
        files[message(0)].unlink()
        path = files[message(1)]
        path.rename(path.parent.parent / "cur" / (path.name.split(":2,")[0] + ":2,F"))
        write_local(local, "INBOX", message(70))
        write_local(local, "Work", message(71), flags="S")
        with connect(server, user) as client:
            doomed = next(
                u for u, m in server_messages(client, "INBOX").items() if m.body == message(4)
            )
            client.select_folder("INBOX")
            client.add_flags([doomed], [b"\\Deleted"])
            client.uid_expunge([doomed])
            client.append("INBOX", message(80).replace(b"\n", b"\r\n"))
            client.append("Local", message(81).replace(b"\n", b"\r\n"))
        want["INBOX"] += Counter([message(70), message(80)])
        want["INBOX"] -= Counter([message(0), message(4)])
        want["Work"] += Counter([message(71)])
        want["Local"] += Counter([message(81)])

        if typical is None:  # the first round calibrates the delay (and is not killed)
            typical = timed(args, user.password, state)
            history.append("calibration")
        else:
            history.append(killed_run(args, user.password, state, rng, typical, max_step=30))
        rerun = run_process("-v", *args, password=user.password, state=state)
        assert rerun.returncode == 0, f"{history[-1]}: {rerun.stderr}"
        why = f"round {n}: {history[-1]}\nrerun:\n{rerun.stderr}"
        on_server, on_disk = server_bodies(server, user), maildir_bodies(local)
        assert on_server == on_disk, why  # both sides agree, message by message
        assert on_server == want, why  # and exactly the expected messages
    assert any("SIGKILL" in h for h in history) and any("exit 137" in h for h in history)
