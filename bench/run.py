"""mailsync's benchmark: mailsync against mbsync (isync) and offlineimap, pulling one
account from a private Dovecot into an empty Maildir tree, then rerunning with nothing new;
and against getmail6 over POP3.

    .venv/bin/python bench/run.py                      # 10,000 messages, 600 MiB, 3 folders
    .venv/bin/python bench/run.py --messages 2000 --megabytes 120   # a quick run
    .venv/bin/python bench/run.py --big-message         # one 50 MiB message: peak RSS
    .venv/bin/python bench/run.py --accounts big        # 100,000 messages, 50 folders: rerun
    .venv/bin/python bench/run.py --accounts pop        # POP3: 5,000 messages, vs getmail6
    .venv/bin/python bench/run.py --accounts migrate    # the standard account, IMAP to IMAP
    .venv/bin/python bench/run.py --all                 # all five, one after the other
    .venv/bin/python bench/run.py --profile             # also cProfile a mailsync pull
    .venv/bin/python bench/run.py --repeat 2 --reruns 2 # 2 passes (order reversed), 2 reruns
    .venv/bin/python bench/run.py --mailsync-args '--jobs 1'   # extra mailsync options

Needs root and Dovecot 2.3 (as the tests do); mbsync, offlineimap and getmail6 are
skipped, with the command that installs them, when missing.  What one run does:

1. generates a deterministic corpus (bench/corpus.py) and writes it straight into a
   fresh Dovecot user's Maildir (LF files, mtime = INTERNALDATE, Dovecot-style names);
2. has Dovecot index it (``doveadm index``) and reads every folder's metadata once over
   IMAP, so neither indexing nor new/ -> cur/ moves are billed to the first tool;
3. times each tool's initial pull into an empty Maildir, checks it copied every message
   (files counted per folder: a tool that did not is reported as failed, not timed),
   then the initial-pull floor (bench/floor.py imap-pull: a bare ssl+socket client
   fetching every message into a Maildir, each written durably, nothing else), then
   times each tool's rerun with nothing new, and after each round of reruns the rerun
   floor (bench/floor.py: a bare ssl+socket client asking only what a rerun must ask);
4. prints a table, stores the numbers in bench/results.json (one record per variant and
   scale, the newest wins) and rewrites bench/RESULTS.md from all records, targets
   marked met / not met.

Wall time is measured around the child; CPU (user+sys) comes from the child's rusage
(os.wait4), peak RSS from GNU time (see measure()).  Dovecot's CPU during each run is
read from /proc (its processes and their reaped children) and reported separately.
--profile adds an untimed mailsync pull and rerun under cProfile in every thread
(bench/profile_mailsync.py; profiles kept in bench/work/*.prof).  Nothing here asserts
absolute times: this is a report.  Work files live in bench/work/ (git-ignored) and are
removed at the end unless --keep.

The POP3 section (run_pop_benchmark, --accounts pop, part of --all) does the same with
a 5,000-message INBOX (corpus.plan_pop) served over pop3s, timing tools.POP_TOOLS:
``mailsync pull pop3s://...`` against getmail6, which runs as an unprivileged user
(tools.BENCH_USER; getmail6 refuses to deliver as root).  There a tool must deliver
every message and about the server's bytes (see verify()); ratios are to getmail6.

--accounts migrate (part of --all) moves the standard account from its Dovecot into an
empty account on a second private Dovecot, one-way, timing tools.MIGRATE_TOOLS: mailsync
(tools.MAILSYNC_MIGRATE: ``mailsync migrate imaps://SRC imaps://DST``, the copy and the
check after it), an mbsync channel between two IMAPStores and offlineimap with two IMAP
repositories; what each copied is counted on the destination (count_imap), every tool
getting a fresh account there.  Ratios are to mbsync; the Dovecot CPU column is the
source's.  After each round of initial migrations the migration floor (bench/floor.py
imap-migrate: a bare ssl+socket client fetching every message and appending it with
LITERAL+, pipelined, nothing else) moves the account into a fresh account too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import pstats
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))  # servers.dovecot
sys.path.insert(0, str(BENCH))

import corpus as corpusmod  # noqa: E402
import tools as toolsmod  # noqa: E402

WORK = BENCH / "work"
RESULTS_JSON = BENCH / "results.json"
RESULTS_MD = BENCH / "RESULTS.md"
USER = "bench"
PASSWORD = "bench-pw-3kq9"
MIB = 1024 * 1024
BASELINES = {
    "imap": "mbsync",
    "pop": "getmail",
    "migrate": "mbsync",
}  # the ratio columns divide by these
DEFAULT_TOOLS = ("mailsync", "mbsync", "offlineimap", "getmail")
LOAD_WARNING = 1.0  # 1-minute load average (it still counts a run that just ended)
VARIANT_ORDER = {"standard": 0, "big-message": 1, "big-accounts": 2, "pop": 3, "migrate": 4}
# A POP tool's stored bytes may differ from the server's by this share (headers a tool
# adds or rewrites) before its pull counts as failed; CRLF kept would be about +1.5 %.
POP_BYTES_TOLERANCE = 0.005
# How often an initial pull that failed with a tool's known bug (Command.retry_on, e.g.
# getmail6's fork race) is started again from an empty tree.
RETRIES = 2


def say(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# -- measuring --------------------------------------------------------------------------


@dataclass
class Measurement:
    wall: float
    user: float
    sys: float
    rss_mib: float
    server_cpu: float
    exit_code: int
    timed_out: bool

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def dovecot_cpu(master_pid: int | None) -> float:
    """CPU seconds used so far by Dovecot: every process of its session (the master ran
    in a new session) plus the children they reaped.  Deltas of this are what a run cost
    the server."""
    if not master_pid:
        return 0.0
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if int(fields[3]) != master_pid:  # session id
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / _clock_ticks()


GNU_TIME = "/usr/bin/time"


def measure(argv, env, log_path: Path, timeout: float, master_pid: int | None) -> Measurement:
    """Run argv to completion; wall time, the child's own rusage, and Dovecot's CPU.

    The child runs under GNU time, which reports its peak RSS: a child forked straight
    from this process would inherit this process's RSS as its ru_maxrss (Linux keeps the
    high-water mark of the pre-exec memory), overstating small tools by tens of MiB.  CPU
    comes from os.wait4 on time (its own CPU, about a millisecond, is included).
    What earlier runs wrote is written back first, untimed (os.sync): left dirty, it would
    be flushed during this run and slow its fsyncs, so whoever ran last (the migration
    floor, after every tool) would pay for the others."""
    os.sync()
    server_before = dovecot_cpu(master_pid)
    rss_file = log_path.with_name(log_path.name + ".rss")
    use_time = os.access(GNU_TIME, os.X_OK)
    wrapped = list(argv)
    if use_time:
        wrapped = [GNU_TIME, "-o", str(rss_file), "-f", "%M", "--", *argv]
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(
            wrapped,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            _kill_group(proc.pid)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM: take the tool down with us
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        _kill_group(proc.pid)  # leftovers of the tool, if any
    rss_mib = usage.ru_maxrss / 1024  # KiB on Linux; inflated, see above
    try:
        rss_mib = int(rss_file.read_text().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        if use_time:
            say(f"could not read {rss_file}; peak RSS from wait4 (includes the harness's)")
    return Measurement(
        wall=wall,
        user=usage.ru_utime,
        sys=usage.ru_stime,
        rss_mib=rss_mib,
        server_cpu=dovecot_cpu(master_pid) - server_before,
        exit_code=proc.returncode,
        timed_out=timed_out.is_set(),
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def last_error(tool_dir: Path) -> str:
    """'; LAST LOG LINE' of a tool's log (its error message, usually), or ''."""
    try:
        lines = (tool_dir / "log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [line.strip() for line in lines if line.strip() and not line.startswith("$ ")]
    return f"; last output: {lines[-1][:300]}" if lines else ""


# -- checking what a tool copied --------------------------------------------------------


def count_maildir(root: Path) -> dict:
    """Per folder (verbatim layout: a directory with cur/ and new/), the message files,
    their bytes and how many carry the S flag."""
    folders: dict[str, dict] = {}
    if not root.is_dir():
        return folders
    for dirpath, dirnames, _ in os.walk(root):
        if "cur" in dirnames and "new" in dirnames:
            name = os.path.relpath(dirpath, root)
            info = {"messages": 0, "bytes": 0, "seen": 0}
            for sub in ("cur", "new"):
                with os.scandir(os.path.join(dirpath, sub)) as entries:
                    for entry in entries:
                        if entry.name.startswith(".") or not entry.is_file():
                            continue
                        info["messages"] += 1
                        info["bytes"] += entry.stat().st_size
                        flags = entry.name.rpartition(":2,")[2] if ":2," in entry.name else ""
                        info["seen"] += "S" in flags
            folders[name] = info
        dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
    return folders


def verify(
    root: Path | Callable[[], dict],
    expected: dict[str, int],
    expected_seen: int | None,
    expected_bytes: int | None = None,
) -> tuple[bool, str]:
    """Message files per folder must match; with expected_bytes (POP) their total size
    must be within POP_BYTES_TOLERANCE of it; expected_seen (IMAP) is only reported.
    `root`: the Maildir root the tool filled, or what counts the folders it filled
    (count_imap: a migration's destination)."""
    found = root() if callable(root) else count_maildir(root)
    got = {name: info["messages"] for name, info in found.items() if info["messages"]}
    want = {name: n for name, n in expected.items() if n}
    total = sum(got.values())
    seen = sum(info["seen"] for info in found.values())
    nbytes = sum(info["bytes"] for info in found.values())
    detail = f"{total:,} messages, {nbytes / MIB:,.1f} MiB"
    if expected_seen is not None:
        detail += f", {seen:,} seen"
    if got != want:
        diffs = []
        for name in sorted(set(got) | set(want)):
            if got.get(name, 0) != want.get(name, 0):
                diffs.append(f"{name}: {got.get(name, 0)} of {want.get(name, 0)}")
        return False, f"{detail}; wrong counts: {', '.join(diffs[:8])}"
    if expected_bytes is not None:
        delta = nbytes - expected_bytes
        detail += f" ({delta:+,} bytes vs the server's {expected_bytes:,})"
        if abs(delta) > POP_BYTES_TOLERANCE * expected_bytes:
            return False, f"{detail}; wrong size (more than {POP_BYTES_TOLERANCE:.1%} off)"
    if expected_seen is not None and seen != expected_seen:
        detail += f" (expected {expected_seen:,} seen: flags differ)"
    return True, detail


def count_imap(server, user) -> dict:
    """count_maildir() of an account on a server: per folder its messages, their bytes
    (RFC822.SIZE) and how many are \\Seen."""
    folders: dict[str, dict] = {}
    with server.imap(user) as client:
        for flags, _delim, name in client.list_folders():
            if b"\\Noselect" in flags or "\\Noselect" in flags:
                continue
            client.select_folder(name, readonly=True)
            uids = client.search("ALL")
            info = {"messages": len(uids), "bytes": 0, "seen": 0}
            for start in range(0, len(uids), 5000):
                got = client.fetch(uids[start : start + 5000], ["FLAGS", "RFC822.SIZE"])
                for item in got.values():
                    info["bytes"] += item[b"RFC822.SIZE"]
                    info["seen"] += b"\\Seen" in item[b"FLAGS"]
            folders[name] = info
    return folders


# -- the server -------------------------------------------------------------------------


def start_server(run_dir: Path, name: str = "dovecot"):
    from servers.dovecot import DovecotServer

    if os.geteuid() != 0:
        sys.exit("bench/run.py must run as root (it starts a private Dovecot, like the tests)")
    if shutil.which("dovecot") is None:
        sys.exit("dovecot is not installed: apt-get install -y dovecot-imapd dovecot-pop3d")
    server = DovecotServer(run_dir / name)
    server.start()
    return server


def seed_account(server, corpus: corpusmod.Corpus, protocol: str = "imap"):
    """A Dovecot user whose Maildir is the corpus, written directly, then indexed.

    For POP every message is also marked \\Seen first (Dovecot's POP3 sets \\Seen on
    what a client RETRs, renaming the files at QUIT: the first tool would pay for that,
    the next not), and one POP3 session lists sizes and UIDLs, so both tools find the
    server in the same state."""
    user = server.add_user(USER, PASSWORD)
    started = time.perf_counter()
    written = corpusmod.write_maildir(corpus, user.maildir)
    server.chown_maildir(user)
    say(
        f"wrote {written.messages:,} messages, {written.bytes / MIB:,.1f} MiB into "
        f"{user.maildir} in {time.perf_counter() - started:.1f} s"
    )
    started = time.perf_counter()
    server.doveadm("index", "-u", user.name, "*")
    # One read of every folder's metadata over IMAP: moves new/ to cur/ (as any client's
    # first SELECT would) and settles Dovecot's cache, so the first tool pays for neither.
    with server.imap(user) as client:
        for _flags, _delim, name in client.list_folders():
            flags = {f.decode() if isinstance(f, bytes) else f for f in _flags}
            if "\\Noselect" in flags:
                continue
            client.select_folder(name)
            uids = client.search("ALL")
            for start in range(0, len(uids), 5000):
                chunk = uids[start : start + 5000]
                client.fetch(chunk, ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"])
                if protocol == "pop":
                    client.add_flags(chunk, [b"\\Seen"], silent=True)
    if protocol == "pop":
        pop = server.pop3(user)
        try:
            count, _size = pop.stat()
            pop.uidl()
            pop.list()
        finally:
            pop.quit()
        if count != written.messages:
            raise RuntimeError(f"POP3 offers {count} messages, {written.messages} written")
    say(f"Dovecot indexed the account in {time.perf_counter() - started:.1f} s")
    return user, written


# -- one variant ------------------------------------------------------------------------


def tool_orders(tools: list[str], repeat: int) -> list[list[str]]:
    """Pass 1 in the given order, pass 2 reversed, pass 3 rotated, ..."""
    orders = []
    for i in range(repeat):
        if i % 2 == 1:
            orders.append(list(reversed(tools)))
        else:
            k = (i // 2) % len(tools)
            orders.append(tools[k:] + tools[:k])
    return orders


def run_variant(corpus: corpusmod.Corpus, args, label: str, protocol: str = "imap") -> dict:
    """Seed one account, then time every tool of the protocol (initial pulls, reruns)."""
    tool_table = {
        "pop": toolsmod.POP_TOOLS,
        "migrate": toolsmod.MIGRATE_TOOLS,
    }.get(protocol, toolsmod.IMAP_TOOLS)
    tools = [t for t in args.tools if t in tool_table]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = WORK / f"run-{corpus.name}-{stamp}"
    run_dir.mkdir(parents=True, mode=0o755)
    say(f"{label}: {corpus.description}")
    say(f"work directory {run_dir}{' (kept)' if args.keep else ''}")
    record: dict = {
        "variant": corpus.name,
        "label": label,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "mailsync_sources": source_digest(),
        "corpus": {
            "description": corpus.description,
            "messages": len(corpus.messages),
            "folders": corpus.folders,
            "notes": corpus.notes,
            "seed": corpus.seed,
        },
        "protocol": protocol,
        "baseline": BASELINES[protocol],
        "repeat": args.repeat,
        "tools": {},
    }
    load = os.getloadavg()[0]
    record["load_before"] = round(load, 2)
    if load > LOAD_WARNING:
        say(
            f"warning: load average {load:.2f} before the run: other work on this machine "
            "competes with the tools; the numbers will be noisy (use --repeat, or a quiet box)"
        )
    server = dest_server = None
    try:
        server = start_server(run_dir)
        if protocol == "migrate":  # the destination: a second private Dovecot
            dest_server = start_server(run_dir, "dovecot-dest")
        record["machine"]["dovecot"] = server.version
        user, written = seed_account(server, corpus, protocol)
        record["corpus"]["bytes"] = written.bytes
        expected = written.per_folder
        master = server.proc.pid if server.proc else None
        # What verify() checks besides the counts: IMAP reports the \Seen flags copied,
        # POP (no flags) checks the bytes.  (A migration's bytes on the destination are
        # the server's RFC822.SIZE, CRLF: compared with nothing.)
        checks = (None, written.bytes) if protocol == "pop" else (written.seen, None)

        available = []
        for name in tools:
            entry = record["tools"][name] = {"version": "", "status": "ok"}
            why = toolsmod.missing(name)
            if why:
                entry.update(status="skipped", reason=why)
                say(f"{name}: skipped: {why}")
                continue
            entry["version"] = toolsmod.version(name)
            available.append(name)
        record["order"] = tool_orders(available, args.repeat)

        runs: dict[str, dict[str, list[Measurement]]] = {
            n: {"initial": [], "rerun": [], "later": []} for n in available
        }
        failed: dict[str, str] = {}
        floors: list[Measurement | None] = []
        initial_floors: list[Measurement | None] = []  # a pull's (the migration's: floors)
        for rep, order in enumerate(record["order"], 1):
            say(f"pass {rep}/{args.repeat}: initial pulls in the order {', '.join(order)}")
            setups = {}
            for name in order:
                if name in failed:
                    continue
                tool_dir = run_dir / "tools" / f"{name}-{rep}"
                for attempt in range(1, RETRIES + 2):
                    tool_dir.mkdir(parents=True)
                    target = None
                    if dest_server is not None:  # an empty account for each run
                        dest_user = dest_server.add_user(None, user.password)
                        target = toolsmod.Target(
                            dest_server.host,
                            dest_server.ports["imaps"],
                            dest_user.name,
                            dest_user.password,
                            dest_server.cafile,
                        )
                    setup = toolsmod.Setup(
                        host=server.host,
                        port=server.ports["pop3s" if protocol == "pop" else "imaps"],
                        user=user.name,
                        password=user.password,
                        cafile=server.cafile,
                        dest=tool_dir / "Mail",
                        workdir=tool_dir,
                        repo_root=ROOT,
                        target=target,
                    )
                    try:
                        if name == "mailsync":
                            command = tool_table[name](setup, args.mailsync_args)
                        else:
                            command = tool_table[name](setup)
                    except Exception as error:  # a config we cannot write: report, go on
                        failed[name] = f"could not set up: {type(error).__name__}: {error}"
                        say(f"  {name}: {failed[name]}")
                        break
                    if target is not None:
                        command.count = functools.partial(count_imap, dest_server, dest_user)
                    record["tools"][name]["command"] = " ".join(command.argv).replace(
                        str(tool_dir), "$DIR"
                    )
                    if command.notes:
                        record["tools"][name]["notes"] = command.notes
                    setups[name] = (setup, command)
                    log = tool_dir / "log"
                    m = measure(command.argv, command.env, log, args.timeout, master)
                    ok, detail = verify(command.count or command.dest, expected, *checks)
                    if m.timed_out:
                        ok, detail = False, f"timed out after {args.timeout:.0f} s; {detail}"
                    elif m.exit_code != 0 and ok:
                        detail += f" (exit code {m.exit_code})"
                    elif m.exit_code != 0:
                        detail = f"exit code {m.exit_code}; {detail}"
                    say(f"  {name}: initial {m.wall:.2f} s wall, {m.cpu:.2f} s CPU, "
                        f"{m.rss_mib:.0f} MiB; {'OK' if ok else 'FAILED'}: {detail}")  # fmt: skip
                    if ok:
                        break
                    why = f"{detail}{last_error(tool_dir)}"
                    if (
                        attempt <= RETRIES
                        and command.retry_on
                        and command.retry_on.search(log.read_text(errors="replace"))
                    ):
                        # A known bug of the tool, not a result: start again from scratch.
                        kept = tool_dir.with_name(f"{tool_dir.name}.attempt{attempt}.log")
                        shutil.move(log, kept)
                        shutil.rmtree(tool_dir)
                        say(f"  {name}: {command.retry_why}; retrying from an empty "
                            f"tree ({attempt}/{RETRIES}; log kept in {kept})")  # fmt: skip
                        record["tools"][name].setdefault("retries", []).append(
                            f"pass {rep}: {command.retry_why} ({why})"
                        )
                        continue
                    failed[name] = f"initial pull failed: {why}"
                    tail = log_tail(log)
                    if tail:
                        say(f"  {name} log ({log}):\n{tail}")
                    break
                if name in failed:
                    continue
                runs[name]["initial"].append(m)
                record["tools"][name]["verify"] = detail
            if setups and dest_server is not None:
                floors.append(
                    measure_migration_floor(
                        server, user, dest_server, corpus, run_dir, master, args, expected, checks
                    )
                )
            elif setups and protocol == "imap":
                floor = measure_pull_floor(
                    server, user, corpus, run_dir, master, args, expected, checks
                )
                initial_floors.append(floor)
            for k in range(1, args.reruns + 1):
                phase = "rerun" if k == 1 else "later"
                say(f"pass {rep}/{args.repeat}: rerun {k} with nothing new")
                if k == 1:
                    # mbsync's Maildir scan sleeps a second when cur/ or new/ was
                    # modified within the current second ("Maildir notice: sleeping due
                    # to recent directory modification"; its change check works in whole
                    # seconds).  A rerun started in the second its initial pull ended
                    # timed that sleep (1.04 s, then 0.04 s), which small corpora hit.
                    time.sleep(1.1)
                for name in order:
                    if name in failed:
                        continue
                    setup, command = setups[name]
                    log = setup.workdir / "log"
                    m = measure(command.argv, command.env, log, args.timeout, master)
                    ok, detail = verify(command.count or command.dest, expected, *checks)
                    if m.exit_code != 0 or m.timed_out:
                        ok = False
                        detail = f"exit code {m.exit_code}{' (timed out)' if m.timed_out else ''}"
                    say(f"  {name}: rerun {k}: {m.wall:.2f} s wall, {m.cpu:.2f} s CPU, "
                        f"{m.rss_mib:.0f} MiB; {'OK' if ok else 'FAILED'}: {detail}")  # fmt: skip
                    if not ok:
                        failed[name] = f"rerun {k} failed: {detail}{last_error(setup.workdir)}"
                        continue
                    runs[name][phase].append(m)
                if setups and protocol != "migrate":  # (a migration's floor: above)
                    floors.append(measure_floor(setups, protocol, corpus, run_dir, master, args))
            if not args.keep and rep < args.repeat:
                shutil.rmtree(run_dir / "tools", ignore_errors=True)

        for name in available:
            entry = record["tools"][name]
            if name in failed:
                entry.update(status="failed", reason=failed[name])
                continue
            for phase in ("initial", "rerun"):
                entry[phase] = summarise(runs[name][phase])
            if runs[name]["later"]:
                entry["later_reruns"] = [round(m.wall, 3) for m in runs[name]["later"]]

        good = [m for m in floors if m is not None and m.exit_code == 0 and not m.timed_out]
        if good:
            phase = "initial" if protocol == "migrate" else "rerun"
            record["floor"] = {phase: summarise(good), "what": FLOOR_WHAT[protocol]}
        good = [m for m in initial_floors if m is not None]
        if good:
            record.setdefault("floor", {"what": FLOOR_WHAT[protocol]})
            record["floor"]["initial"] = summarise(good)
            record["floor"]["what_initial"] = FLOOR_WHAT["imap-pull"]
        if source_digest() != record["mailsync_sources"]:
            record["mailsync_sources_changed"] = True
            say("warning: mailsync's sources changed during the run; its numbers mix versions")
        profiling = args.profile and protocol in ("imap", "migrate")
        if profiling and "mailsync" in available and "mailsync" not in failed:
            record["profile"] = profile_mailsync(
                server, user, run_dir, args, master, corpus.name, dest_server
            )
    finally:
        for started in (server, dest_server):
            if started is not None:
                started.stop()
        if args.keep:
            say(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return record


def summarise(ms: list[Measurement]) -> dict:
    """The median of the passes (one pass: that pass), plus every pass."""
    med = statistics.median
    return {
        "wall": med(m.wall for m in ms),
        "cpu": med(m.cpu for m in ms),
        "user": med(m.user for m in ms),
        "sys": med(m.sys for m in ms),
        "rss_mib": max(m.rss_mib for m in ms),
        "server_cpu": med(m.server_cpu for m in ms),
        "passes": [asdict(m) for m in ms],
    }


FLOOR_WHAT = {
    "pop": "bench/floor.py: a bare Python script (ssl and socket only) doing TLS, USER/PASS, "
    "UIDL and QUIT",
    "imap": "bench/floor.py: a bare Python script (ssl and socket only) doing TLS, LOGIN, "
    "STATUS of every folder and LOGOUT",
    "imap-pull": "bench/floor.py imap-pull: a bare Python script (ssl and socket only) "
    "logging in, reading each folder's messages with one UID FETCH 1:* (FLAGS BODY.PEEK[]), "
    "literals read in bulk, each made LF and written to tmp/, fsync'd and renamed into cur/ "
    "with its flags, the directory fsync'd, 4 folders at once (mailsync's default --jobs), "
    "each over a connection of its own; no state, no index",
    "migrate": "bench/floor.py imap-migrate: a bare Python script (ssl and socket only) "
    "logging in to both servers, reading each folder's messages with one UID FETCH 1:* "
    "(FLAGS INTERNALDATE BODY.PEEK[]), literals read in bulk, and APPENDing each with its "
    "flags and date, LITERAL+, 100 messages or 8 MiB a batch, the next batch sent before the "
    "last one's answers are read, 4 folders at once (mailsync's default --jobs), each over "
    "connections of its own; no state, no local files, no fsync",
}


def measure_floor(setups: dict, protocol: str, corpus, run_dir: Path, master, args):
    """One run of bench/floor.py against the account the tools just reran on, with
    mailsync's interpreter: what any Python client's rerun costs at the least."""
    setup, _ = next(iter(setups.values()))
    argv = [sys.executable, str(BENCH / "floor.py"), "pop3" if protocol == "pop" else "imap"]
    argv += [setup.host, str(setup.port), setup.user, str(setup.cafile)]
    if protocol != "pop":
        argv += corpus.folders
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MAILSYNC_PASSWORD": setup.password}
    m = measure(argv, env, run_dir / "floor.log", args.timeout, master)
    if m.exit_code != 0 or m.timed_out:
        say(f"  floor: FAILED (exit code {m.exit_code}): {log_tail(run_dir / 'floor.log')}")
    else:
        say(f"  floor: {m.wall:.2f} s wall, {m.cpu:.2f} s CPU (bench/floor.py)")
    return m


def measure_pull_floor(
    server, user, corpus, run_dir: Path, master, args, expected, checks
) -> Measurement | None:
    """One run of bench/floor.py imap-pull from the account the tools just pulled, into
    an empty tree, with mailsync's interpreter: what any Python client's durable initial
    pull costs at the least.  None if it failed or did not write every message (counted
    as the tools' are)."""
    dest = run_dir / "floor-pull"
    shutil.rmtree(dest, ignore_errors=True)
    argv = [sys.executable, str(BENCH / "floor.py"), "imap-pull"]
    argv += [server.host, str(server.ports["imaps"]), user.name, str(server.cafile), str(dest)]
    argv += corpus.folders
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MAILSYNC_PASSWORD": user.password}
    try:
        return run_copying_floor(argv, env, run_dir, args, master, dest, expected, checks)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def run_copying_floor(
    argv, env, run_dir: Path, args, master, copied, expected, checks
) -> Measurement | None:
    """Time a floor that copies the account (imap-pull, imap-migrate) and count what it
    copied (`copied`: as verify() takes it) as the tools' copies are counted; None if it
    failed or missed a message."""
    log = run_dir / "floor.log"
    m = measure(argv, env, log, args.timeout, master)
    ok, detail = verify(copied, expected, *checks)
    if m.exit_code != 0 or m.timed_out or not ok:
        say(f"  floor: FAILED (exit code {m.exit_code}; {detail}): {log_tail(log)}")
        return None
    say(f"  floor: {m.wall:.2f} s wall, {m.cpu:.2f} s CPU (bench/floor.py {argv[2]}); {detail}")
    return m


def measure_migration_floor(
    server, user, dest_server, corpus, run_dir: Path, master, args, expected, checks
) -> Measurement | None:
    """One run of bench/floor.py imap-migrate from the account the tools migrated into a
    fresh account on the destination, with mailsync's interpreter: what any Python
    client's migration costs at the least.  None if it failed or did not copy every
    message (counted as the tools' copies are)."""
    dest_user = dest_server.add_user(None, user.password)
    argv = [sys.executable, str(BENCH / "floor.py"), "imap-migrate"]
    for host, port, name, cafile in (
        (server.host, server.ports["imaps"], user.name, server.cafile),
        (dest_server.host, dest_server.ports["imaps"], dest_user.name, dest_server.cafile),
    ):
        argv += [host, str(port), name, str(cafile)]
    argv += corpus.folders
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MAILSYNC_PASSWORD": user.password,
        "MAILSYNC_DEST_PASSWORD": dest_user.password,
    }
    copied = functools.partial(count_imap, dest_server, dest_user)
    return run_copying_floor(argv, env, run_dir, args, master, copied, expected, checks)


# -- profiling mailsync -----------------------------------------------------------------


def profile_mailsync(
    server, user, run_dir: Path, args, master, corpus_name: str, dest_server=None
) -> dict:
    """An extra, untimed mailsync pull (and rerun) under cProfile; the top functions by
    own time, as a share of the profiled wall time.  With `dest_server`, a migration
    into a fresh account there."""
    out: dict = {}
    tool_dir = run_dir / "tools" / "mailsync-profile"
    tool_dir.mkdir(parents=True)
    target = None
    if dest_server is not None:
        dest_user = dest_server.add_user(None, user.password)
        target = toolsmod.Target(
            dest_server.host,
            dest_server.ports["imaps"],
            dest_user.name,
            dest_user.password,
            dest_server.cafile,
        )
    setup = toolsmod.Setup(
        host=server.host,
        port=server.ports["imaps"],
        user=user.name,
        password=user.password,
        cafile=server.cafile,
        dest=tool_dir / "Mail",
        workdir=tool_dir,
        repo_root=ROOT,
        target=target,
    )
    make = toolsmod.mailsync_migrate if target else toolsmod.mailsync_imap
    command = make(setup, args.mailsync_args)
    WORK.mkdir(exist_ok=True)
    wrapper = str(BENCH / "profile_mailsync.py")
    out["clock"] = args.profile_clock
    for phase in ("initial", "rerun"):
        prof = WORK / f"mailsync-{corpus_name}-{phase}.prof"
        argv = [command.argv[0], wrapper, "--clock", args.profile_clock, str(prof), "--"]
        argv += command.argv[3:]
        say(f"profiling mailsync ({phase}, {args.profile_clock} clock) -> {prof.relative_to(ROOT)}")
        m = measure(argv, command.env, tool_dir / "log", args.timeout, master)
        out[phase] = {"wall": m.wall, "exit_code": m.exit_code, "file": str(prof)}
        out[phase].update(top_functions(prof, args.profile_top))
    return out


# Leaf functions where a thread only waits for another thread (not for I/O): joins,
# futures, and idle pool workers waiting for work.
WAITING = (
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'acquire' of '_thread.RLock",
    "<method 'get' of '_queue.SimpleQueue' objects>",
)


def top_functions(path: Path, top: int) -> dict:
    """Top functions by own time, as shares of the busy time: the time of all threads
    added up, less what they spent waiting for each other (locks, idle pool workers)."""
    try:
        stats = pstats.Stats(str(path))
    except (OSError, TypeError, EOFError) as error:
        return {"error": str(error)}
    rows, waiting = [], 0.0
    for (filename, line, func), (_cc, calls, tt, ct, _callers) in stats.stats.items():
        if func.startswith(WAITING):
            waiting += tt
            continue
        rows.append(
            {"function": f"{_short(filename)}:{line}({func})", "calls": calls, "own_s": tt,
             "cum_s": ct}
        )  # fmt: skip
    busy = sum(r["own_s"] for r in rows) or 1e-9
    for r in rows:
        r["own_pct"] = 100 * r["own_s"] / busy
        r["cum_pct"] = 100 * r["cum_s"] / busy
    by_own = sorted(rows, key=lambda r: r["own_s"], reverse=True)[:top]
    mailsync_rows = [
        r
        for r in rows
        if r["function"].startswith("mailsync/")
        and not r["function"].startswith(("mailsync/cli.py", "mailsync/__main__.py"))
    ]
    by_cum = sorted(mailsync_rows, key=lambda r: r["cum_s"], reverse=True)[:top]
    return {
        "total_s": busy,
        "waiting_s": waiting,
        "by_own": by_own,
        "mailsync_by_cumulative": by_cum,
    }


def _short(filename: str) -> str:
    i = filename.rfind("/mailsync/")
    if i >= 0:
        return "mailsync/" + filename[i + len("/mailsync/") :]
    match = re.search(r"/(?:site|dist)-packages/|/lib/python3\.\d+/", filename)
    return filename[match.end() :] if match else filename


def source_digest() -> str:
    """A short hash of mailsync's sources, to tie numbers to a version of the code."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "mailsync").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


# -- machine ----------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "filesystem": _filesystem(WORK),
        "versions": {name: toolsmod.version(name) for name in DEFAULT_TOOLS},
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _filesystem(path: Path) -> str:
    best, fstype = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


# -- POP --------------------------------------------------------------------------------


def run_pop_benchmark(args) -> dict | None:
    """The POP3 section: a POP account (INBOX only, corpus.plan_pop) served over pop3s,
    each tool of tools.POP_TOOLS (in --tools) timed like the IMAP tools: initial pull
    into an empty Maildir, then reruns with nothing new; ratios to getmail6.  Runs with
    --accounts pop or --all; prints the table and saves the record unless --no-save."""
    if not (args.all or args.accounts == "pop"):
        return None
    if not any(t in toolsmod.POP_TOOLS for t in args.tools):
        say(f"POP3 account: no POP tool in --tools ({', '.join(toolsmod.POP_TOOLS)}); skipped")
        return None
    corpus = corpusmod.plan_pop(args.seed, args.pop_messages, args.pop_megabytes)
    label = f"POP3 account, {args.pop_messages:,} messages"
    record = run_variant(corpus, args, label, protocol="pop")
    report(record, args)
    return record


# -- reporting --------------------------------------------------------------------------


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def baseline(record: dict) -> str:
    return record.get("baseline", BASELINES["imap"])


def ratio(record: dict, tool: str, phase: str) -> float | None:
    base = record["tools"].get(baseline(record), {}).get(phase)
    mine = record["tools"].get(tool, {}).get(phase)
    if not base or not mine or not base["wall"]:
        return None
    return mine["wall"] / base["wall"]


def floor_share(record: dict | None, phase: str) -> float | None:
    """The floor's wall over the baseline tool's in `phase` ("initial": a pull's or a
    migration's first run; "rerun"), when both were measured."""
    floor = (record or {}).get("floor") or {}
    base = _phase(record, baseline(record), phase) if phase in floor else None
    return floor[phase]["wall"] / base["wall"] if base and base["wall"] else None


def floor_lines(record: dict) -> list[str]:
    """A sentence on each floor measured ("initial pull floor ...", "migration floor
    ...", "rerun floor ..."), for the table and the section."""
    floor = record.get("floor") or {}
    lines = []
    for phase in ("initial", "rerun"):
        if phase not in floor:
            continue
        share = floor_share(record, phase)
        of = f", {share:.2f}x {baseline(record)}" if share is not None else ""
        if phase == "rerun":
            what, cpu = "rerun", ""
        else:
            what = "migration" if record.get("variant") == "migrate" else "initial pull"
            cpu = f", {floor[phase]['cpu']:.2f} s CPU"
        how = floor.get(f"what_{phase}", floor.get("what"))
        lines.append(
            f"{what} floor for any Python client: {floor[phase]['wall']:.3f} s wall{cpu}{of} "
            f"({how})"
        )
    return lines


def table_rows(record: dict) -> list[list[str]]:
    rows = []
    for name, entry in record["tools"].items():
        if entry["status"] != "ok":
            rows.append([name, entry["status"].upper(), entry.get("reason", "")])
            continue
        row = [name]
        for phase in ("initial", "rerun"):
            p = entry.get(phase)
            r = ratio(record, name, phase)
            row += [
                fmt(p["wall"]),
                fmt(p["cpu"]),
                fmt(p["rss_mib"], 0),
                "-" if r is None else f"{r:.2f}x",
                fmt(p["server_cpu"]),
            ]
        rows.append(row)
    return rows


def headers(record: dict) -> list[str]:
    per_phase = ["CPU s", "peak RSS MiB", f"wall / {baseline(record)}", "Dovecot CPU s"]
    return ["tool", "initial wall s", *per_phase, "rerun wall s", *per_phase]


def print_table(record: dict) -> None:
    rows = table_rows(record)
    cols = headers(record)
    print(f"\n{record['label']}: {record['corpus']['description']}")
    widths = [len(h) for h in cols]
    for row in rows:
        if len(row) == len(cols):
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    print("  ".join(h.rjust(w) for h, w in zip(cols, widths, strict=True)))
    for row in rows:
        if len(row) == len(cols):
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        else:
            print(f"{row[0].rjust(widths[0])}  {row[1]}: {row[2]}")
    for name, entry in record["tools"].items():
        if entry.get("later_reruns"):
            walls = ", ".join(f"{w:.2f}" for w in entry["later_reruns"])
            print(f"{name}: later reruns {walls} s wall")
    for line in floor_lines(record):
        print(line)
    for target in targets_for([record]):
        if target["measured"] != "not run":  # the targets about other records
            print(f"target: {target['what']}: {target['measured']} -> {target['verdict']}")
    print()


def _phase(record: dict | None, tool: str, phase: str) -> dict | None:
    if not record:
        return None
    entry = record["tools"].get(tool, {})
    return entry.get(phase) if entry.get("status") == "ok" else None


def targets_for(records: list[dict]) -> list[dict]:
    """The targets, each judged on the record it is about (largest scale wins)."""
    by_variant: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r["corpus"]["messages"]):
        by_variant[rec["variant"]] = rec
    std, big, bigmsg, pop, migrate = (
        by_variant.get(v) for v in ("standard", "big-accounts", "big-message", "pop", "migrate")
    )
    out = []

    def add(what, record, value, limit: float, unit: str, floor: str | None = None) -> None:
        """One target; `floor`: the phase ("initial", "rerun") whose floor's ratio it
        also shows."""
        if record is None:
            measured, verdict = "not run", "NOT MEASURED"
        elif value is None:
            measured, verdict = "no valid measurement (tool failed or skipped)", "NOT MEASURED"
        else:
            measured = f"{value:.2f}{unit}"
            verdict = "met" if value <= limit else "NOT MET"
        if record is not None and record["variant"] in ("standard", "pop", "migrate"):
            measured += f" ({record['corpus']['messages']:,} messages)"
        share = floor_share(record, floor) if floor else None
        if share is not None:
            measured += f"; floor (bench/floor.py) {share:.2f}x"
        out.append({"what": what, "measured": measured, "verdict": verdict})

    for phase, what in (
        ("initial", "initial pull wall <= 0.5x mbsync"),
        ("rerun", "rerun wall <= 0.5x mbsync"),
    ):
        value = ratio(std, "mailsync", phase) if std else None
        add(what, std, value, 0.5, "x", floor=phase)
    add(
        "rerun wall <= 0.2x mbsync, 100k messages / 50 folders",
        big,
        ratio(big, "mailsync", "rerun") if big else None,
        0.2,
        "x",
        floor="rerun",
    )
    for record, what in (
        (std, "mailsync peak RSS <= 100 MiB, standard account"),
        (big, "mailsync peak RSS <= 100 MiB, 100k messages / 50 folders"),
        (bigmsg, "mailsync peak RSS <= 100 MiB, folder with one 50 MiB message"),
    ):
        phases = [_phase(record, "mailsync", p) for p in ("initial", "rerun")]
        values = [p["rss_mib"] for p in phases if p]
        add(what, record, max(values) if values else None, 100, " MiB")
    for phase, what in (
        ("initial", "POP initial pull wall <= 0.2x getmail6"),
        ("rerun", "POP rerun wall <= 0.2x getmail6"),
    ):
        value = ratio(pop, "mailsync", phase) if pop else None
        add(what, pop, value, 0.2, "x", floor=phase)
    phases = [_phase(pop, "mailsync", p) for p in ("initial", "rerun")]
    values = [p["rss_mib"] for p in phases if p]
    add("mailsync peak RSS <= 100 MiB, POP account", pop, max(values) if values else None, 100,
        " MiB")  # fmt: skip
    add(
        "IMAP-to-IMAP migration wall <= 0.5x mbsync",
        migrate,
        ratio(migrate, "mailsync", "initial") if migrate else None,
        0.5,
        "x",
        floor="initial",
    )
    phases = [_phase(migrate, "mailsync", p) for p in ("initial", "rerun")]
    values = [p["rss_mib"] for p in phases if p]
    add("mailsync peak RSS <= 100 MiB, IMAP-to-IMAP migration", migrate,
        max(values) if values else None, 100, " MiB")  # fmt: skip
    return out


def load_results() -> dict:
    try:
        data = json.loads(RESULTS_JSON.read_text())
        if isinstance(data.get("records"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"records": {}}


def save_record(record: dict) -> dict:
    data = load_results()
    key = f"{record['variant']} {record['corpus']['messages']}"
    data["records"][key] = record
    RESULTS_JSON.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def render_markdown(data: dict) -> str:
    records = sorted(
        data["records"].values(),
        key=lambda r: (VARIANT_ORDER.get(r["variant"], 9), -r["corpus"]["messages"]),
    )
    lines = ["# mailsync benchmark results", ""]
    lines += [
        "Generated by `bench/run.py` (`make bench`); the numbers below are rewritten by every",
        "run, one section per variant and scale (the newest run of each).  Wall time is",
        "measured around the process, CPU (user + sys) is the child's own (`os.wait4`",
        "rusage), peak RSS its maximum resident set (GNU time), Dovecot CPU what the",
        "server spent during the run.  The ratio column is the tool's wall time over",
        "mbsync's (IMAP sections) or getmail6's (POP3 section).  MiB = 2^20 bytes; the",
        "RSS targets are read as 100 MiB.",
        "",
        "## Targets",
        "",
        "| target | measured (mailsync) | verdict |",
        "|---|---|---|",
    ]
    for t in targets_for(records):
        lines.append(f"| {t['what']} | {t['measured']} | {t['verdict']} |")
    lines.append("")
    if records:
        m = records[0]["machine"]
        lines += [
            "## Machine",
            "",
            f"- {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, {m['os']}, Linux "
            f"{m['kernel']}, work directory on {m['filesystem']}",
            f"- Python {m['python']}, Dovecot {m.get('dovecot', '?')}",
        ]
        for name, ver in m["versions"].items():
            lines.append(f"- {name}: {ver}")
        lines.append("")
    for rec in records:
        lines += [f"## {rec['label']} ({rec['date']})", "", rec["corpus"]["description"] + "."]
        if rec.get("mailsync_sources"):
            lines[-1] += f" mailsync sources: sha256 {rec['mailsync_sources']}…"
        if rec["corpus"].get("bytes"):
            lines[-1] += f" Written: {rec['corpus']['bytes'] / MIB:,.1f} MiB."
        for note in rec["corpus"].get("notes", []):
            lines.append(f"Note: {note}.")
        if rec.get("mailsync_sources_changed"):
            lines.append("")
            lines.append(
                "Warning: mailsync's sources changed while this run was going on, so its "
                "passes may have measured different versions (see results.json, `passes`)."
            )
        if rec.get("load_before", 0) > LOAD_WARNING:
            lines.append("")
            lines.append(
                f"Warning: the 1-minute load average was {rec['load_before']:.2f} before this "
                "run: other work competed for the CPUs, so these numbers are noisy."
            )
        orders = "; ".join(", ".join(o) for o in rec.get("order", []))
        cols = headers(rec)
        lines += [
            "",
            f"Passes: {rec['repeat']} (tool order per pass: {orders}); with more than one "
            "pass each number is the median, RSS the maximum.",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        for row in table_rows(rec):
            if len(row) == len(cols):
                lines.append("| " + " | ".join(row) + " |")
            else:
                lines.append(f"| {row[0]} | {row[1]}: {row[2]} |" + " |" * (len(cols) - 2))
        if rec["repeat"] > 1:
            for phase in ("initial", "rerun"):
                per_pass = [
                    name + " " + ", ".join(f"{m['wall']:.2f}" for m in entry[phase]["passes"])
                    for name, entry in rec["tools"].items()
                    if entry.get(phase)
                ]
                lines += ["", f"Each pass, {phase} wall s: " + "; ".join(per_pass)]
        later = [
            f"{name} {', '.join(f'{w:.2f}' for w in entry['later_reruns'])}"
            for name, entry in rec["tools"].items()
            if entry.get("later_reruns")
        ]
        if later:
            lines += ["", "Later reruns, wall s (not in the table): " + "; ".join(later)]
        for floor in floor_lines(rec):
            lines += ["", f"{floor[0].upper()}{floor[1:]}."]
        checks = [
            f"{name}: {entry['verify']}"
            for name, entry in rec["tools"].items()
            if entry.get("verify")
        ]
        if checks:
            lines += ["", "Copied (files counted after the initial pull): " + "; ".join(checks)]
        retries = [
            f"{name}, {r}" for name, entry in rec["tools"].items() for r in entry.get("retries", [])
        ]
        if retries:
            lines += ["", "Initial pulls retried from an empty tree (a known bug of the tool, "
                      "not timed): " + "; ".join(retries)]  # fmt: skip
        if rec.get("profile"):
            lines += ["", *profile_markdown(rec["profile"])]
        lines.append("")
    lines += [
        "## Method",
        "",
        "- Server: a private Dovecot 2.3 on 127.0.0.1 (tests/servers/dovecot.py), imaps with",
        "  a private CA that every tool verifies.  The corpus is written straight into the",
        "  user's Maildir (LAYOUT=fs, LF files as Dovecot stores them, mtime = INTERNALDATE,",
        "  names with S= and W=, flags :2,S / :2,FS / :2,RS, the newest unread mail partly",
        "  in new/), then `doveadm index -u bench '*'` and one IMAP SELECT + FETCH (FLAGS",
        "  INTERNALDATE RFC822.SIZE) per folder, so indexing and new/ -> cur/ moves are paid",
        "  before the first tool starts.",
        "- IMAP-to-IMAP migration: the standard account is moved, one-way, into an empty",
        "  account on a second private Dovecot (a fresh one for every run): `mailsync",
        "  migrate imaps://SRC imaps://DST` (bench/tools.py MAILSYNC_MIGRATE: the copy and",
        "  its check after), an mbsync channel between two IMAPStores (`Sync Pull`, `Create Near`,",
        "  its state in a directory), offlineimap with two IMAP repositories (the source",
        "  `readonly`).  What each copied is counted on the destination over IMAP; Dovecot",
        "  CPU is the source server's.  The migration floor: after each round of initial",
        "  migrations, bench/floor.py imap-migrate (a bare ssl+socket script: one UID FETCH",
        "  1:* of each folder, literals read in bulk, APPEND with LITERAL+, 100 messages or",
        "  8 MiB a batch, the next batch sent before the answers to the last are read, 4",
        "  folders at once over connections of their own, as mailsync's default --jobs; no",
        "  state, no local files, no fsync) into a fresh account, counted like the tools.",
        "- Each tool pulls the whole account into its own empty Maildir tree (verbatim",
        "  layout: DEST/INBOX, DEST/Archive/2019) with its default concurrency: mbsync one",
        "  IMAP connection, offlineimap `maxconnections = 1` (its default), mailsync its",
        "  default `--jobs` (folders in parallel over several connections; the command",
        "  line is in results.json).  Durability is on everywhere: mailsync fsyncs every",
        "  message before recording it, mbsync runs with `FSync yes`, offlineimap with",
        "  `fsync = true`.  offlineimap's remote is `readonly`; mbsync uses `Sync Pull`,",
        "  `Create Near`, `Expunge None`.  mbsync and offlineimap connect to `localhost`",
        "  (= 127.0.0.1; they check only DNS names in the certificate), mailsync to",
        "  127.0.0.1.  The rerun is the same command again with nothing new on the server.",
        "- Before each timed run the harness calls sync(2), untimed: what earlier runs",
        "  wrote is not flushed during the next one (slowing its fsyncs).",
        "- Peak RSS is measured with GNU time (`/usr/bin/time -f %M`): a child forked",
        "  straight from the harness would report the harness's own RSS as its ru_maxrss.",
        "- Order: all initial pulls (one tool after the other), then all reruns.  The page",
        "  cache is not dropped: the corpus was just written, so every tool reads a hot",
        "  server.  With `--repeat N` pass 2 runs the tools in reverse order, pass 3",
        "  rotated, and the table shows medians.",
        "- A tool whose initial pull did not copy every message (counted per folder) is",
        "  reported as failed, not timed.  The byte counts differ a little: mbsync adds an",
        "  `X-TUID:` header line (20 bytes) to every message it stores; mailsync and",
        "  offlineimap keep the server's bytes.",
        "- POP3 section: a second account holding only INBOX (the standard size mix, 5,000",
        "  messages / 300 MiB by default), seeded the same way; every message is then",
        "  marked `\\Seen` over IMAP (Dovecot's POP3 sets `\\Seen` on RETR and renames the",
        "  files at QUIT, a cost only the first tool would pay) and one POP3 session lists",
        "  sizes and UIDLs (`pop3_uidl_format = %08Xu%08Xv`).  mailsync (`pull",
        "  pop3s://...`, as root like in the IMAP runs) and getmail6",
        "  (`SimplePOP3SSLRetriever` with `ca_certs`, Maildir destination, `read_all =",
        "  false`, `delete = false`, `delivered_to = false`, `received = false`) pull it",
        "  over pop3s into DEST/INBOX; getmail6 runs as an unprivileged user (`setpriv`; it",
        "  refuses to deliver as root) and keeps its oldmail file in its own --getmaildir.",
        "  Durability: getmail6 fsyncs each message file in tmp/ before linking it into",
        "  new/ (no directory fsync) and forks a child per delivery; mailsync fsyncs every",
        "  message.  A tool must deliver every message, and the bytes stored must be",
        "  within 0.5 % of the server's.  mailsync stores the server's bytes; getmail6",
        "  re-serialises each message with Python's email package, which refolds long",
        "  header lines (Received:, DKIM-Signature:, ...): about two thirds of its files",
        "  differ from the server's by a few bytes.",
        "- Floor: after each round of reruns, bench/floor.py runs once with mailsync's",
        "  interpreter: a bare script on ssl and socket that connects, logs in, asks what",
        "  a rerun must ask (POP3: UIDL; IMAP: STATUS of every folder) and quits, with no",
        "  state, config or local files.  No Python client's rerun can be faster; its",
        "  ratio sits next to the rerun targets.  After each round of initial pulls of the",
        "  standard account, bench/floor.py imap-pull fetches the account into an empty",
        "  Maildir tree the same way, durably (each message written to tmp/, fsync'd,",
        "  renamed into cur/; the directories fsync'd), 4 folders at once: the initial-pull",
        "  floor next to the initial target.",
        "",
    ]
    return "\n".join(lines)


def _profile_intro(profile: dict, phase: str, p: dict) -> str:
    if profile.get("clock", "wall") == "cpu":
        return (
            f"{phase}: {p['wall']:.2f} s wall under the profiler (its overhead included); "
            f"{p['total_s']:.2f} s CPU in all threads together (cProfile on each thread's "
            "CPU clock: waiting for the network, fsync or the GIL costs nothing here).  Top "
            "functions by own CPU time, as a share of the CPU time:"
        )
    return (
        f"{phase}: {p['wall']:.2f} s wall under the profiler (its overhead included); "
        f"{p['total_s']:.2f} s busy in all threads together, wall clock (plus "
        f"{p['waiting_s']:.2f} s of threads waiting for each other, left out; threads that "
        "ran at once add up).  Top functions by own time, as a share of the busy time:"
    )


def profile_markdown(profile: dict) -> list[str]:
    lines = ["### mailsync profile (cProfile in every thread, an extra untimed run)", ""]
    for phase in ("initial", "rerun"):
        p = profile.get(phase)
        if not p or "by_own" not in p:
            continue
        lines += [
            _profile_intro(profile, phase, p),
            "",
            "| function | calls | own s | own % | cumulative % |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in p["by_own"][:15]:
            lines.append(
                f"| `{r['function']}` | {r['calls']:,} | {r['own_s']:.2f} | "
                f"{r['own_pct']:.1f} | {r['cum_pct']:.1f} |"
            )
        lines += ["", "mailsync functions by cumulative time:", ""]
        lines += ["| function | calls | cumulative s | cumulative % |", "|---|---:|---:|---:|"]
        for r in p["mailsync_by_cumulative"][:12]:
            lines.append(
                f"| `{r['function']}` | {r['calls']:,} | {r['cum_s']:.2f} | {r['cum_pct']:.1f} |"
            )
        lines.append("")
    return lines


def print_profile(profile: dict) -> None:
    for phase in ("initial", "rerun"):
        p = profile.get(phase)
        if not p or "by_own" not in p:
            continue
        print("mailsync profile, " + _profile_intro(profile, phase, p))
        for r in p["by_own"][:15]:
            print(f"  {r['own_pct']:5.1f}%  {r['own_s']:7.2f} s  {r['calls']:>9,}  {r['function']}")
        print("  mailsync functions by cumulative time:")
        for r in p["mailsync_by_cumulative"][:10]:
            print(f"  {r['cum_pct']:5.1f}%  {r['cum_s']:7.2f} s  {r['calls']:>9,}  {r['function']}")
        print()


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(
        description="Benchmark mailsync against mbsync and offlineimap (IMAP) and getmail6 "
        "(POP3) on a private Dovecot.",
        epilog="Without --accounts big|pop|migrate / --big-message / --all: the standard account.",
    )
    p.add_argument("--messages", type=int, default=10_000, help="standard account size")
    p.add_argument("--megabytes", type=float, default=600, help="standard account MiB")
    p.add_argument(
        "--accounts",
        choices=("standard", "big", "pop", "migrate"),
        default="standard",
        help="big: 100,000 tiny messages in 50 folders (measures the rerun); pop: a POP3 "
        "INBOX (--pop-messages), mailsync vs getmail6; migrate: the standard account moved "
        "IMAP to IMAP between two private Dovecots (mailsync, mbsync, offlineimap)",
    )
    p.add_argument("--pop-messages", type=int, default=5000, help="POP account size")
    p.add_argument("--pop-megabytes", type=float, default=300, help="POP account MiB")
    p.add_argument("--big-accounts-messages", type=int, default=100_000, help=argparse.SUPPRESS)
    p.add_argument(
        "--big-message", action="store_true", help="a folder with one 50 MiB message (RSS)"
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="standard, big-message, big accounts, migrate, then POP",
    )
    p.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help="comma-separated, in order; each account runs those of its protocol "
        f"(IMAP: {', '.join(toolsmod.IMAP_TOOLS)}; POP3: {', '.join(toolsmod.POP_TOOLS)})",
    )
    p.add_argument("--repeat", type=int, default=1, help="passes (alternating tool order)")
    p.add_argument(
        "--reruns",
        type=int,
        default=1,
        help="reruns after each initial pull; the table shows the first, later ones are "
        "listed below it (default 1)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per tool run")
    p.add_argument("--profile", action="store_true", help="also cProfile a mailsync pull")
    p.add_argument(
        "--profile-clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: each thread's CPU time (adds up to the process's); wall: blocking calls "
        "such as fsync show, overlapping threads add up (default cpu)",
    )
    p.add_argument("--profile-top", type=int, default=25, help=argparse.SUPPRESS)
    p.add_argument(
        "--mailsync-args",
        default="",
        metavar="ARGS",
        help="extra options for mailsync pull, e.g. '--jobs 1' (shell-split)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--no-save", action="store_true", help="do not touch results.json/RESULTS.md")
    args = p.parse_args(argv)
    args.mailsync_args = shlex.split(args.mailsync_args)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    known = list(dict.fromkeys([*toolsmod.IMAP_TOOLS, *toolsmod.POP_TOOLS]))
    unknown = [t for t in args.tools if t not in known]
    if unknown:
        p.error(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.repeat < 1 or args.reruns < 1:
        p.error("--repeat and --reruns must be at least 1")
    return args


def variants(args) -> list[tuple[corpusmod.Corpus, str]]:
    out = []
    want_standard = args.all or (args.accounts == "standard" and not args.big_message)
    if want_standard:
        c = corpusmod.plan_standard(args.seed, args.messages, args.megabytes)
        label = f"Standard account, {args.messages:,} messages / {args.megabytes:g} MiB"
        out.append((c, label))
    if args.all or args.big_message:
        out.append((corpusmod.plan_big_message(args.seed), "Folder with one 50 MiB message"))
    if args.all or args.accounts == "big":
        c = corpusmod.plan_big_accounts(args.seed, args.big_accounts_messages)
        out.append((c, f"Big account, {len(c.messages):,} messages / {len(c.folders)} folders"))
    if args.all or args.accounts == "migrate":
        c = corpusmod.plan_standard(args.seed, args.messages, args.megabytes)
        c.name = "migrate"
        label = (
            f"IMAP-to-IMAP migration, standard account, {args.messages:,} messages / "
            f"{args.megabytes:g} MiB"
        )
        out.append((c, label))
    return out


def report(record: dict, args) -> None:
    """Print one record's table (and profile); save it unless --no-save."""
    print_table(record)
    if record.get("profile"):
        print_profile(record["profile"])
    if not args.no_save:
        data = save_record(record)
        RESULTS_MD.write_text(render_markdown(data))
        say(f"wrote {RESULTS_MD.relative_to(ROOT)} and {RESULTS_JSON.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    WORK.mkdir(exist_ok=True)
    random.seed(args.seed)
    # mailsync starts from compiled bytecode, as a pip install leaves it (this machine sets
    # PYTHONDONTWRITEBYTECODE, which would make every run compile changed modules again).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            str(Path(__file__).resolve().parent.parent / "mailsync"),
        ],
        check=False,
    )
    try:
        for corpus, label in variants(args):
            if not any(t in toolsmod.IMAP_TOOLS for t in args.tools):
                say(f"{label}: no IMAP tool in --tools; skipped")
                continue
            protocol = "migrate" if corpus.name == "migrate" else "imap"
            report(run_variant(corpus, args, label, protocol), args)
        run_pop_benchmark(args)
    except KeyboardInterrupt:
        say("interrupted; servers stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
