"""The core pull against a second server implementation: pymap's in-memory backend (no
CONDSTORE, no keywords kept, STARTTLS on its plain port).  Skipped without pymap."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imaptools import Msg, maildir_contents, maildir_files, message, run, when
from servers.dovecot import make_certificates

from mailsync.message import STANDARD_FLAGS, to_lf

pytest.importorskip("pymap")

USER, PASSWORD = "pymapuser", "pymap-Secret"


class Pymap:
    def __init__(self, workdir: Path):
        self.ca, cert, key = make_certificates(workdir)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        exe = Path(sys.executable).parent / "pymap"
        command = [str(exe) if exe.exists() else shutil.which("pymap") or "pymap"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--cert", str(cert), "--key", str(key)]
        command += ["dict", "--demo-user", USER, "--demo-password", PASSWORD]
        self.log = workdir / "pymap.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pymap exited: {self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"pymap did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"imap://{USER}@127.0.0.1:{self.port}?cafile={self.ca}"

    def client(self) -> IMAPClient:
        import ssl

        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=20)
        client.starttls(ssl.create_default_context(cafile=str(self.ca)))
        client.login(USER, PASSWORD)
        client.normalise_times = False
        return client

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pymap_server(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed for pymap's certificate")
    server = Pymap(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def contents(client: IMAPClient) -> dict[str, Counter]:
    out = {}
    for flags, _, name in client.list_folders():
        if b"\\Noselect" in flags:
            continue
        client.select_folder(name, readonly=True)
        uids = client.search(["ALL"])
        data = client.fetch(uids, ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"]) if uids else {}
        out[name] = Counter(
            (
                to_lf(item[b"BODY[]"]),
                frozenset(f.decode() for f in item[b"FLAGS"]) & STANDARD_FLAGS,
                int(item[b"INTERNALDATE"].timestamp()),
            )
            for item in data.values()
        )
    return out


CORPUS = {
    "INBOX": [
        Msg(message(1), frozenset({"\\Seen"}), when(2019, 3, 4, 5, 6, 7)),
        Msg(message(2, extra=b"From here\n>From there\n"), frozenset({"\\Flagged"}), when(2020)),
        Msg("Subject: Grüße\n\nÄpfel\n".encode(), frozenset({"\\Answered", "\\Seen"}), when(2001)),
        Msg(b"Subject: no final newline\n\nlast", frozenset(), when(2015, offset_hours=-5)),
        Msg(message(1), frozenset(), when(2019, 3, 5)),
    ],
    "Archive/2019": [Msg(message(10 + i), frozenset({"\\Seen"}), when(2019)) for i in range(3)],
    "Entwürfe": [Msg(message(20), frozenset({"\\Draft"}), when(2023))],
}


def test_pull_from_pymap(pymap_server, mailenv):
    with pymap_server.client() as client:
        for folder, messages in CORPUS.items():
            if folder != "INBOX":
                client.create_folder(folder)
            for msg in messages:
                client.append(folder, msg.wire, flags=sorted(msg.flags), msg_time=msg.date)
        on_server = contents(client)
    dest = mailenv / "mail"
    result = run("pull", pymap_server.url, f"maildir:{dest}", password=PASSWORD)
    assert result.exit_code == 0, result.output
    local = maildir_contents(dest)
    assert set(local) == set(on_server)
    for folder in on_server:
        assert local[folder] == on_server[folder], folder
    assert sum(len(c) for c in on_server.values()) == sum(len(m) for m in CORPUS.values())

    # No CONDSTORE: a rerun lists everything again, copies nothing.
    names = {p.name for files in maildir_files(dest).values() for p in files}
    again = run("pull", "--json", pymap_server.url, f"maildir:{dest}", password=PASSWORD)
    assert again.exit_code == 0, again.output
    assert '"copied_a_to_b": 1' not in again.stdout
    assert {p.name for files in maildir_files(dest).values() for p in files} == names

    # A flag changed and a message added on the server reach the Maildir.
    with pymap_server.client() as client:
        client.select_folder("INBOX")
        uid = next(
            u
            for u, d in client.fetch(client.search(["ALL"]), ["BODY.PEEK[]"]).items()
            if to_lf(d[b"BODY[]"]) == CORPUS["INBOX"][1].body
        )
        client.add_flags([uid], [b"\\Seen"])
        client.append("INBOX", message(3).replace(b"\n", b"\r\n"), msg_time=when(2024))
        on_server = contents(client)
    third = run("pull", pymap_server.url, f"maildir:{dest}", password=PASSWORD)
    assert third.exit_code == 0, third.output
    assert maildir_contents(dest)["INBOX"] == on_server["INBOX"]


def test_push_to_pymap_uses_appenduid(pymap_server, mailenv):
    local = mailenv / "mail"
    for n in range(3):
        path = local / "INBOX" / "cur" / f"{n}.test:2,S"
        path.parent.mkdir(parents=True, exist_ok=True)
        (local / "INBOX" / "new").mkdir(exist_ok=True)
        path.write_bytes(message(n))
        os.utime(path, (when(2020).timestamp(),) * 2)
    result = run("-v", "push", f"maildir:{local}", pymap_server.url, password=PASSWORD)
    assert result.exit_code == 0, result.output
    with pymap_server.client() as client:
        got = contents(client)["INBOX"]
    assert got == Counter(
        (message(n), frozenset({"\\Seen"}), int(when(2020).timestamp())) for n in range(3)
    )
    again = run("push", "--json", f"maildir:{local}", pymap_server.url, password=PASSWORD)
    assert again.exit_code == 0 and '"copied_b_to_a": 0' in again.stdout
