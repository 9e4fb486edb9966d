"""The floor under any Python client: the least a rerun with nothing new can do, the
least an initial pull into a Maildir can do, and the least an IMAP-to-IMAP migration can
do.

    MAILSYNC_PASSWORD=... python bench/floor.py pop3 HOST PORT USER CAFILE
    MAILSYNC_PASSWORD=... python bench/floor.py imap HOST PORT USER CAFILE FOLDER...
    MAILSYNC_PASSWORD=... python bench/floor.py imap-pull HOST PORT USER CAFILE DEST FOLDER...
    MAILSYNC_PASSWORD=... MAILSYNC_DEST_PASSWORD=... python bench/floor.py imap-migrate \\
        HOST PORT USER CAFILE DEST_HOST DEST_PORT DEST_USER DEST_CAFILE FOLDER...

A bare script on the standard library's ssl and socket (and threading), nothing else: verified
TLS connections and logins, then

* pop3, imap (a rerun): what tells a client whether anything is new (POP3: the whole
  UIDL listing; IMAP: STATUS of every folder), then QUIT/LOGOUT;
* imap-pull (an initial pull into an empty Maildir tree, DEST/FOLDER/cur as the tools'
  verbatim layout): every message of a folder fetched in one ``UID FETCH 1:* (FLAGS
  BODY.PEEK[])``, literals read in bulk, made LF, written to tmp/, fsync'd, renamed into
  cur/ with its flags in the name (durable as the tools are: mbsync FSync, mailsync), the
  directory fsync'd at the end; FOLDERS_AT_ONCE folders at once, a connection each;
* imap-migrate (a migration into an empty account): each folder created on the
  destination, every message of it fetched from the source in one ``UID FETCH 1:*
  (FLAGS INTERNALDATE BODY.PEEK[])`` whose literals are read in bulk, and appended to
  the destination with its flags and date, ``{n+}`` (LITERAL+), in batches of at most
  BATCH_MESSAGES or BATCH_BYTES, the next batch sent before the answers to the one
  before are read (the server never waits for the client, and the answers never fill
  a socket buffer), each answer checked.  The bytes go as the source sent them (CRLF).
  FOLDERS_AT_ONCE folders at once, each thread with a connection to either server of
  its own, as mailsync's default --jobs: a floor under mailsync's wall time too, where
  the destination's fsync of each message, not the client, sets the pace.

No state, no config, no index; no local files and no fsync but imap-pull's.  bench/run.py
times it next to the tools, with the same interpreter as mailsync, so the tables show how
much any Python program must spend here.  Exits 1 on any answer it does not expect.
"""

import os
import socket
import ssl
import sys
import threading

BATCH_MESSAGES = 100  # APPENDs in flight, at most (as mailsync's pipeline)
BATCH_BYTES = 8 * 1024 * 1024
FOLDERS_AT_ONCE = 4  # (mailsync's default --jobs with a network store)


class Connection:
    """One verified TLS connection, logged in (IMAP: LOGIN) or greeted (POP3)."""

    def __init__(self, host: str, port: str, cafile: str):
        context = ssl.create_default_context(cafile=cafile)
        raw = socket.create_connection((host, int(port)), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.reader = self.sock.makefile("rb")

    def expect(self, prefix: bytes) -> bytes:
        line = self.reader.readline()
        if not line.startswith(prefix):
            raise SystemExit(f"floor: unexpected answer {line[:80]!r}")
        return line

    def tagged(self, tag: bytes) -> bytes:
        """The lines up to the tagged answer; that answer (exit 1 unless OK)."""
        while not (line := self.reader.readline()).startswith(tag + b" "):
            if not line:
                raise SystemExit(f"floor: connection closed before {tag.decode()}'s answer")
        if not line.startswith(tag + b" OK"):
            raise SystemExit(f"floor: {tag.decode()}: {line[:80]!r}")
        return line

    def login(self, user: str, password: str) -> None:
        self.expect(b"* OK")
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        self.sock.sendall(f'a LOGIN {user} "{quoted}"\r\n'.encode())
        self.tagged(b"a")

    def close(self) -> None:
        self.sock.sendall(b"z LOGOUT\r\n")
        while not self.reader.readline().startswith(b"z "):
            pass
        self.sock.close()


def _item(text: bytes, name: bytes, end: bytes) -> bytes | None:
    """The value of FETCH item `name` in `text`, up to `end` (exclusive); None if absent."""
    at = text.find(name)
    if at < 0:
        return None
    at += len(name)
    stop = text.find(end, at)
    return text[at:stop] if stop >= 0 else None


def migrate(source: Connection, dest: Connection, folders: list[str]) -> None:
    """Every message of `folders`, source -> dest (see the module docstring)."""
    for n, folder in enumerate(folders):  # (before any APPEND: no answers to sort out)
        if folder != "INBOX":
            dest.sock.sendall(f'c{n} CREATE "{folder}"\r\n'.encode())
            while not dest.reader.readline().startswith(f"c{n} ".encode()):
                pass  # (a NO: it exists)
    sent = 0  # APPEND tags so far
    unanswered: list[bytes] = []  # the tags of the batch sent before

    def send(batch: list[bytes], tags: list[bytes]) -> None:
        nonlocal unanswered
        dest.sock.sendall(b"".join(batch))
        for tag in unanswered:
            dest.tagged(tag)
        unanswered = tags

    for n, folder in enumerate(folders):
        source.sock.sendall(f'e{n} EXAMINE "{folder}"\r\n'.encode())
        source.tagged(f"e{n}".encode())
        source.sock.sendall(f"f{n} UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])\r\n".encode())
        batch: list[bytes] = []
        tags: list[bytes] = []
        size = 0
        done = f"f{n} ".encode()
        while not (line := source.reader.readline()).startswith(done):
            if not line.startswith(b"* ") or not line.endswith(b"}\r\n"):
                if not line:
                    raise SystemExit("floor: the source closed the connection")
                continue  # (an untagged answer without a body)
            length = int(line[line.rfind(b"{") + 1 : -3])
            body = source.reader.read(length)
            rest = source.reader.readline()  # ")\r\n", or the items after the body
            flags = _item(line, b"FLAGS (", b")")
            flags = _item(rest, b"FLAGS (", b")") if flags is None else flags
            date = _item(line, b'INTERNALDATE "', b'"')
            date = _item(rest, b'INTERNALDATE "', b'"') if date is None else date
            if flags is None or date is None or len(body) != length:
                raise SystemExit(f"floor: unexpected FETCH response {line[:80]!r}")
            kept = b" ".join(f for f in flags.split() if f != b"\\Recent")
            sent += 1
            tags.append(b"p%d" % sent)
            batch += [
                b'p%d APPEND "%s" (%s) "%s" {%d+}\r\n'
                % (sent, folder.encode(), kept, date, length),
                body,
                b"\r\n",
            ]
            size += length
            if len(tags) >= BATCH_MESSAGES or size >= BATCH_BYTES:
                send(batch, tags)
                batch, tags, size = [], [], 0
        if not line.startswith(done + b"OK"):
            raise SystemExit(f"floor: UID FETCH {folder}: {line[:80]!r}")
        send(batch, tags)  # (its answers are read after the next batch is sent)
    send([], [])


FLAG_LETTERS = {b"\\Draft": "D", b"\\Flagged": "F", b"\\Answered": "R", b"\\Seen": "S"}


def pull(source: Connection, root: str, folder: str) -> None:
    """Every message of `folder` into the Maildir ROOT/FOLDER (the module docstring)."""
    path = os.path.join(root, folder)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    source.sock.sendall(f'e EXAMINE "{folder}"\r\n'.encode())
    source.tagged(b"e")
    source.sock.sendall(b"f UID FETCH 1:* (FLAGS BODY.PEEK[])\r\n")
    count = 0
    while not (line := source.reader.readline()).startswith(b"f "):
        if not line.startswith(b"* ") or not line.endswith(b"}\r\n"):
            if not line:
                raise SystemExit("floor: the source closed the connection")
            continue
        length = int(line[line.rfind(b"{") + 1 : -3])
        body = source.reader.read(length)
        rest = source.reader.readline()
        flags = _item(line, b"FLAGS (", b")")
        flags = _item(rest, b"FLAGS (", b")") if flags is None else flags
        if flags is None or len(body) != length:
            raise SystemExit(f"floor: unexpected FETCH response {line[:80]!r}")
        letters = "".join(sorted(FLAG_LETTERS.get(f, "") for f in flags.split()))
        count += 1
        name = f"{count}.P{os.getpid()}T{threading.get_ident()}.floor"
        tmp = os.path.join(path, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body.replace(b"\r\n", b"\n"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(path, "cur", f"{name}:2,{letters}"))
    if not line.startswith(b"f OK"):
        raise SystemExit(f"floor: UID FETCH {folder}: {line[:80]!r}")
    fd = os.open(os.path.join(path, "cur"), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def in_threads(job, folders: list[str]) -> int:
    """job(take) in FOLDERS_AT_ONCE threads, each with connections of its own; take()
    gives the next folder not taken yet, or None.  1 if any failed (said on stderr)."""
    left, failures = list(folders), []
    lock = threading.Lock()

    def take() -> str | None:
        with lock:
            return left.pop(0) if left else None

    def worker() -> None:
        try:
            job(take)
        except BaseException as error:  # (SystemExit too: a thread would swallow it)
            failures.append(error)

    threads = [threading.Thread(target=worker) for _ in folders[:FOLDERS_AT_ONCE]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in failures:
        print(f"floor: {error}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    protocol, host, port, user, cafile, *folders = argv
    password = os.environ["MAILSYNC_PASSWORD"]
    if protocol == "imap-pull":
        root, *folders = folders

        def pull_job(take) -> None:
            source = Connection(host, port, cafile)
            source.login(user, password)
            while (folder := take()) is not None:
                pull(source, root, folder)
            source.close()

        return in_threads(pull_job, folders)
    if protocol == "imap-migrate":
        dest_host, dest_port, dest_user, dest_cafile, *folders = folders
        dest_password = os.environ["MAILSYNC_DEST_PASSWORD"]

        def migrate_job(take) -> None:
            source = Connection(host, port, cafile)
            source.login(user, password)
            dest = Connection(dest_host, dest_port, dest_cafile)
            dest.login(dest_user, dest_password)
            while (folder := take()) is not None:
                migrate(source, dest, [folder])
            source.close()
            dest.close()

        return in_threads(migrate_job, folders)
    server = Connection(host, port, cafile)
    if protocol == "pop3":
        server.expect(b"+OK")
        server.sock.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
        server.expect(b"+OK")
        server.expect(b"+OK")
        server.sock.sendall(b"UIDL\r\n")
        server.expect(b"+OK")
        while server.reader.readline() not in (b".\r\n", b""):
            pass
        server.sock.sendall(b"QUIT\r\n")
        server.expect(b"+OK")
        server.sock.close()
        return 0
    server.login(user, password)
    for n, folder in enumerate(folders):
        server.sock.sendall(f'b{n} STATUS "{folder}" (MESSAGES UIDNEXT UIDVALIDITY)\r\n'.encode())
        server.tagged(f"b{n}".encode())
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
