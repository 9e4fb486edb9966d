"""kill -9 during a POP3 download-and-delete session (delete = "after-download"), at
every step in turn and at random moments, then a rerun: every message is in the local
Maildir (or mbox) exactly once and gone from the server; nothing lost, nothing
duplicated."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from imaptools import message, run_process
from test_pop3_dovecot import deliver, local_bodies, on_server

CRASHED = 137
ROUNDS = 24


def _config(tmp_path, server, user, kind):
    path = tmp_path / "config.toml"
    path.write_text(
        f'[store.pop]\nurl = "{server.url("pop3s", user)}"\ncafile = "{server.cafile}"\n'
        'delete = "after-download"\n\n'
        f'[store.backup]\nurl = "{kind}:{tmp_path / "mail"}"\n\n'
        '[channel.mail]\nremote = "pop"\nlocal = "backup"\n'
    )
    return path


def _check(server, user, root, kind, want: Counter, log: list[str]) -> None:
    assert local_bodies(root, kind) == want, "\n".join(log[-6:])
    assert on_server(server, user) == Counter(), "\n".join(log[-6:])


DESTINATIONS = pytest.mark.parametrize("kind", ["maildir", "mbox"])


@DESTINATIONS
def test_kill_at_every_step_then_rerun(dovecot_server, tmp_path, kind):
    """The crash hook at step 1, 2, ... of the same session until a run completes."""
    user = dovecot_server.add_user()
    bodies = [message(n, extra=b"." * n + b"\n") for n in range(12)]
    deliver(dovecot_server, user, *bodies)
    conf = _config(tmp_path, dovecot_server, user, kind)
    state = tmp_path / "state"
    log = []
    for crash_at in range(1, 200):
        done = run_process(
            "--config", conf, "-v", "pull", "mail",
            password=user.password, state=state, crash_at=crash_at,
        )  # fmt: skip
        log.append(f"step {crash_at}: exit {done.returncode}\n{done.stderr}")
        assert done.returncode in (0, CRASHED), done.stderr
        # After every crash: nothing lost (each message on the server or local, or both).
        local = local_bodies(tmp_path / "mail", kind)
        assert max(local.values(), default=0) <= 1, log[-1]
        assert set(local) | set(on_server(dovecot_server, user)) == set(bodies), log[-1]
        if done.returncode == 0:
            break
    else:
        raise AssertionError("never completed")
    # The crashes hit every phase: downloads (appends, flush, commit) and deletions (DELEs
    # sent, QUIT done but not recorded).  How many runs that takes depends on how many
    # appends a killed run had made durable (writer threads), so it is not a fixed number.
    assert crash_at > 3
    assert any("exit 137" in entry and "deleting" in entry for entry in log)
    rerun = run_process("--config", conf, "pull", "mail", password=user.password, state=state)
    assert rerun.returncode == 0, rerun.stderr
    _check(dovecot_server, user, tmp_path / "mail", kind, Counter(bodies), log)


@DESTINATIONS
def test_random_kills_during_download_and_delete(dovecot_server, tmp_path, kind):
    """Real SIGKILLs at random moments and the crash hook at random steps, with new mail
    arriving between runs; after a final clean run every message is local exactly once
    and the server is empty."""
    rng = random.Random(20261127)
    user = dovecot_server.add_user()
    conf = _config(tmp_path, dovecot_server, user, kind)
    state = tmp_path / "state"
    delivered: list[bytes] = []
    log: list[str] = []
    env = {**os.environ, "XDG_STATE_HOME": str(state), "MAILSYNC_PASSWORD": user.password}
    env.pop("MAILSYNC_CRASH_AT", None)
    for round_ in range(ROUNDS):
        new = [
            message(
                1000 * round_ + i, extra=os.urandom(rng.randint(0, 3000)).hex().encode() + b"\n"
            )
            for i in range(rng.randint(3, 12))
        ]
        deliver(dovecot_server, user, *new)
        delivered += new
        if rng.random() < 0.5:
            done = run_process(
                "--config", conf, "-v", "pull", "mail",
                password=user.password, state=state, crash_at=rng.randint(1, 40),
            )  # fmt: skip
            assert done.returncode in (0, CRASHED), done.stderr
            log.append(f"round {round_}: hook, exit {done.returncode}\n{done.stderr}")
        else:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mailsync", "--config", str(conf), "-v", "pull", "mail"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            delay = rng.uniform(0.05, 0.6)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            _, stderr = proc.communicate()
            assert proc.returncode in (0, -signal.SIGKILL), stderr
            log.append(f"round {round_}: SIGKILL after {delay:.2f} s ({proc.returncode})\n{stderr}")
        local = local_bodies(tmp_path / "mail", kind)
        assert max(local.values(), default=0) <= 1, log[-1]
        assert set(local) | set(on_server(dovecot_server, user)) == set(delivered), log[-1]
    final = run_process("--config", conf, "pull", "mail", password=user.password, state=state)
    assert final.returncode == 0, final.stderr
    _check(dovecot_server, user, tmp_path / "mail", kind, Counter(delivered), log)
