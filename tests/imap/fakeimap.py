"""A tiny scripted IMAP server on 127.0.0.1 for the faults Dovecot cannot produce: no
STARTTLS offered, a PREAUTH greeting, a connection dropped or stalled in mid-FETCH, a
greeting that never comes, hostile folder names, malformed responses, no UIDPLUS.

It speaks just enough IMAP4rev1 for mailsync's IMAP store, in plain text or, given a
``tls_context`` (see ``make_tls_context``), with implicit TLS (imaps): CAPABILITY,
LOGIN, LOGOUT, NOOP, LIST, SELECT, EXAMINE, STATUS, UID FETCH/SEARCH/STORE/EXPUNGE,
EXPUNGE, APPEND, CREATE, SUBSCRIBE.  ``fault(server, conn, command, args)`` may return
an action for a command: "drop" (half a response, then close), "hang" (never answer),
"garbage" (an unparseable FETCH), "huge" (announce a 100 GB literal), raw bytes to
send instead of the normal answer, or a callable ``action(send, tag, session)`` run
instead of the command (outside the server's lock; ``server.dispatch`` runs the normal
answer).  hostile.py builds a hostile server on these hooks.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

SYSTEM = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


@dataclass
class FakeMessage:
    uid: int
    body: bytes  # as stored: CRLF
    flags: set[str] = field(default_factory=set)
    date: datetime = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class FakeMailbox:
    name: str  # as on the wire (modified UTF-7, unquoted)
    uidvalidity: int = 1000
    uidnext: int = 1
    messages: list[FakeMessage] = field(default_factory=list)

    def add(self, body: bytes, flags=(), date: datetime | None = None) -> FakeMessage:
        msg = FakeMessage(self.uidnext, body, set(flags), date or datetime.now(UTC))
        self.uidnext += 1
        self.messages.append(msg)
        return msg


class Disconnect(Exception):
    pass


_TOKEN = re.compile(rb'\s*(?:"((?:[^"\\]|\\.)*)"|(\()|(\))|([^\s()"]+))')


def tokens(data: bytes, literals: list[bytes]) -> list:
    """Arguments of a command line -> nested lists of str/bytes (literals are bytes)."""
    stack: list[list] = [[]]
    pos = 0
    while pos < len(data):
        match = _TOKEN.match(data, pos)
        if not match or match.end() == pos:
            break
        pos = match.end()
        quoted, opening, closing, atom = match.groups()
        if opening:
            stack.append([])
        elif closing:
            done = stack.pop()
            stack[-1].append(done)
        elif quoted is not None:
            stack[-1].append(re.sub(rb"\\(.)", rb"\1", quoted).decode("utf-8", "replace"))
        elif atom == b"\x00LITERAL":
            stack[-1].append(literals.pop(0))
        else:
            stack[-1].append(atom.decode("utf-8", "replace"))
    return stack[0]


def parse_set(text: str, uids: list[int]) -> set[int]:
    out: set[int] = set()
    top = max(uids, default=0)
    for part in text.split(","):
        low, _, high = part.partition(":")
        a = top if low == "*" else int(low)
        b = a if not high else (top if high == "*" else int(high))
        lo, hi = min(a, b), max(a, b)
        out |= {u for u in uids if lo <= u <= hi}
    return out


def internaldate(when: datetime) -> str:
    return when.strftime("%d-%b-%Y %H:%M:%S %z")


def make_tls_context(directory) -> tuple[ssl.SSLContext, str]:
    """A throwaway CA and a certificate for localhost/127.0.0.1 (servers/dovecot.py makes
    them with the openssl command) -> (server context, path of the CA certificate).
    pop3/fakepop.py has the same for the POP3 fake."""
    import sys
    from pathlib import Path

    tests_dir = str(Path(__file__).resolve().parent.parent)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from servers.dovecot import make_certificates

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cafile, certfile, keyfile = make_certificates(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context, str(cafile)


class FakeIMAPServer:
    # What the server says when a client announces a synchronizing literal.
    continuation = b"+ go ahead\r\n"

    def __init__(
        self,
        mailboxes: dict[str, list] | None = None,
        *,
        user: str = "fake",
        password: str = "secret",
        capabilities: tuple[str, ...] = ("IMAP4rev1", "AUTH=PLAIN", "UIDPLUS"),
        greeting: str | None = "* OK fake IMAP ready",
        fault=None,
        list_extra: list[bytes] = (),
        tls_context: ssl.SSLContext | None = None,
    ):
        self.user, self.password = user, password
        self.tls_context = tls_context  # implicit TLS: the handshake comes before the greeting
        self.capabilities = capabilities
        self.greeting = greeting
        self.fault = fault
        self.list_extra = list(list_extra)
        self.mailboxes: dict[str, FakeMailbox] = {"INBOX": FakeMailbox("INBOX")}
        for name, messages in (mailboxes or {}).items():
            box = self.mailboxes.setdefault(
                name, FakeMailbox(name, uidvalidity=1000 + len(self.mailboxes))
            )
            for item in messages:
                if isinstance(item, tuple):
                    box.add(*item)
                else:
                    box.add(item)
        self.log: list[tuple[int, str]] = []  # (connection number, command line)
        self.connections = 0
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host, self.port = self.sock.getsockname()
        self.threads: list[threading.Thread] = []
        self.clients: list[socket.socket] = []

    # lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> FakeIMAPServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self.threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.threads[0].join(5)
        self.sock.close()
        for client in list(self.clients):
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()
        for thread in self.threads:
            thread.join(5)

    def url(self, scheme: str = "imap", query: str = "tls=none") -> str:
        return f"{scheme}://{self.user}@{self.host}:{self.port}" + (f"?{query}" if query else "")

    def commands(self, connection: int | None = None) -> list[str]:
        return [line for conn, line in self.log if connection in (None, conn)]

    def _accept(self) -> None:
        self.sock.settimeout(0.05)  # closing a listening socket does not wake accept()
        while not self.stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self.lock:
                self.connections += 1
                number = self.connections
            self.clients.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            thread.start()
            self.threads.append(thread)

    # one connection ------------------------------------------------------------------
    def _serve(self, conn: socket.socket, number: int) -> None:
        session = {"selected": None, "readonly": False, "auth": False, "n": number}
        try:
            if self.tls_context is not None:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
                self.clients.append(conn)
            reader = conn.makefile("rb")
            session["conn"], session["reader"] = conn, reader
            if self.greeting is None:
                self.stop_event.wait(30)
                return
            self.greet(conn)
            session["auth"] = self.greeting.startswith("* PREAUTH")
            while not self.stop_event.is_set():
                line, literals = self._read_command(conn, reader)
                if line is None:
                    return
                if line:  # b"": answered while it was read (refuse_literal)
                    self._handle(conn, session, line, literals)
        except (Disconnect, OSError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def greet(self, conn: socket.socket) -> None:
        conn.sendall(self.greeting.encode() + b"\r\n")

    def _read_command(self, conn, reader):
        data = b""
        literals: list[bytes] = []
        while True:
            line = reader.readline()
            if not line:
                return None, []
            line = line.rstrip(b"\r\n")
            match = re.search(rb"\{(\d+)(\+?)\}$", line)
            if not match:
                return data + line, literals
            if not match.group(2):
                refusal = self.refuse_literal(data + line, int(match.group(1)))
                if refusal is not None:  # instead of the continuation: the client sends no more
                    conn.sendall(refusal)
                    return b"", []
                conn.sendall(self.continuation)
            literals.append(reader.read(int(match.group(1))))
            data += line[: match.start()] + b"\x00LITERAL"

    def refuse_literal(self, command: bytes, size: int) -> bytes | None:
        """The answer to send instead of the continuation for a synchronizing literal of
        ``size`` bytes announced at the end of ``command`` (tag included), or None."""
        return None

    def _handle(self, conn, session, line: bytes, literals: list[bytes]) -> None:
        parts = line.split(b" ", 2)
        tag = parts[0].decode()
        command = parts[1].decode().upper() if len(parts) > 1 else ""
        rest = parts[2] if len(parts) > 2 else b""
        if command == "UID":
            sub, _, rest = rest.partition(b" ")
            command = "UID " + sub.decode().upper()
        shown = line.decode("utf-8", "replace").replace("\x00LITERAL", "{literal}")
        with self.lock:
            self.log.append((session["n"], shown[len(tag) + 1 :]))
        args = tokens(rest, literals)
        action = self.fault(self, session["n"], command, args) if self.fault else None
        if isinstance(action, bytes):
            conn.sendall(action)
            return
        if action == "hang":
            self.stop_event.wait(30)
            raise Disconnect
        send = lambda text: conn.sendall(text if isinstance(text, bytes) else text.encode())  # noqa: E731
        if callable(action):
            action(send, tag, session)
            return
        self.dispatch(send, tag, session, command, args, action)

    def dispatch(self, send, tag, session, command: str, args, action=None) -> None:
        """The normal answer to a command."""
        method = getattr(self, "_cmd_" + command.replace(" ", "_").lower(), None)
        if method is None:
            send(f"{tag} BAD unknown command\r\n")
            return
        with self.lock:
            method(send, tag, session, args, action)

    # commands --------------------------------------------------------------------------
    def _caps(self, session) -> str:
        return " ".join(self.capabilities)

    def _cmd_capability(self, send, tag, session, args, action):
        send(f"* CAPABILITY {self._caps(session)}\r\n{tag} OK done\r\n")

    def _cmd_noop(self, send, tag, session, args, action):
        box = session["selected"]
        if box is not None:
            send(f"* {len(box.messages)} EXISTS\r\n")
        send(f"{tag} OK noop\r\n")

    def _cmd_logout(self, send, tag, session, args, action):
        send(f"* BYE bye\r\n{tag} OK logout\r\n")
        raise Disconnect

    def _cmd_login(self, send, tag, session, args, action):
        if args[:2] == [self.user, self.password]:
            session["auth"] = True
            send(f"{tag} OK [CAPABILITY {self._caps(session)}] logged in\r\n")
        else:
            send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def _cmd_enable(self, send, tag, session, args, action):
        send(f"{tag} OK nothing enabled\r\n")

    def _cmd_list(self, send, tag, session, args, action):
        for name in self.mailboxes:
            send(f'* LIST (\\HasNoChildren) "/" "{name}"\r\n')
        for raw in self.list_extra:
            send(raw + b"\r\n")
        send(f"{tag} OK list done\r\n")

    def _box(self, name) -> FakeMailbox | None:
        name = name.decode() if isinstance(name, bytes) else name
        return self.mailboxes.get("INBOX" if name.upper() == "INBOX" else name)

    def _cmd_select(self, send, tag, session, args, action, readonly=False):
        box = self._box(args[0])
        if box is None:
            send(f"{tag} NO no such mailbox\r\n")
            return
        session["selected"], session["readonly"] = box, readonly
        permanent = "" if readonly else " ".join(SYSTEM) + " \\*"
        send(
            f"* FLAGS ({' '.join(SYSTEM)})\r\n* {len(box.messages)} EXISTS\r\n* 0 RECENT\r\n"
            f"* OK [UIDVALIDITY {box.uidvalidity}] ok\r\n* OK [UIDNEXT {box.uidnext}] ok\r\n"
            f"* OK [PERMANENTFLAGS ({permanent})] ok\r\n"
            f"{tag} OK [{'READ-ONLY' if readonly else 'READ-WRITE'}] selected\r\n"
        )

    def _cmd_examine(self, send, tag, session, args, action):
        self._cmd_select(send, tag, session, args, action, readonly=True)

    def _cmd_status(self, send, tag, session, args, action):
        box = self._box(args[0])
        if box is None:
            send(f"{tag} NO no such mailbox\r\n")
            return
        values = {"MESSAGES": len(box.messages), "UIDNEXT": box.uidnext}
        values["UIDVALIDITY"] = box.uidvalidity
        items = " ".join(f"{k} {values[k]}" for k in args[1] if k in values)
        send(f'* STATUS "{box.name}" ({items})\r\n{tag} OK status\r\n')

    def _cmd_create(self, send, tag, session, args, action):
        name = args[0]
        if name in self.mailboxes:
            send(f"{tag} NO [ALREADYEXISTS] exists\r\n")
            return
        self.mailboxes[name] = FakeMailbox(name, uidvalidity=2000 + len(self.mailboxes))
        send(f"{tag} OK created\r\n")

    def _cmd_subscribe(self, send, tag, session, args, action):
        send(f"{tag} OK subscribed\r\n")

    def _cmd_append(self, send, tag, session, args, action):
        box = self._box(args[0])
        if box is None:
            send(f"{tag} NO [TRYCREATE] no such mailbox\r\n")
            return
        flags, date, body = set(), None, args[-1]
        for arg in args[1:-1]:
            if isinstance(arg, list):
                flags = set(arg)
            else:
                date = datetime.strptime(arg, "%d-%b-%Y %H:%M:%S %z")
        msg = box.add(body, flags, date)
        code = f"[APPENDUID {box.uidvalidity} {msg.uid}] " if "UIDPLUS" in self.capabilities else ""
        send(f"{tag} OK {code}appended\r\n")

    def _selected(self, send, tag, session) -> FakeMailbox | None:
        if session["selected"] is None:
            send(f"{tag} BAD no mailbox selected\r\n")
        return session["selected"]

    def _cmd_uid_fetch(self, send, tag, session, args, action):
        box = self._selected(send, tag, session)
        if box is None:
            return
        uids = [m.uid for m in box.messages]
        wanted = parse_set(args[0], uids)
        items = args[1] if isinstance(args[1], list) else [args[1]]
        items = [i.upper() for i in items]
        seq = {m.uid: n for n, m in enumerate(box.messages, 1)}
        for msg in box.messages:
            if msg.uid not in wanted:
                continue
            if action == "garbage":
                send(f"* {seq[msg.uid]} FETCH (UID banana FLAGS (\r\n{tag} OK done\r\n")
                return
            out = [f"UID {msg.uid}".encode()]
            for item in items:
                if item == "FLAGS":
                    out.append(f"FLAGS ({' '.join(sorted(msg.flags))})".encode())
                elif item == "RFC822.SIZE":
                    out.append(f"RFC822.SIZE {self.claimed_size(box, msg)}".encode())
                elif item == "INTERNALDATE":
                    out.append(f'INTERNALDATE "{internaldate(msg.date)}"'.encode())
                elif item.startswith("BODY.PEEK["):
                    section, _, partial = item[len("BODY.PEEK[") :].partition("]")
                    data = msg.body
                    if section == "HEADER":
                        end = data.find(b"\r\n\r\n")
                        data = data[: end + 4] if end >= 0 else data
                    origin = ""
                    if partial:  # <offset.length>
                        offset, length = map(int, partial.strip("<>").split("."))
                        data, origin = data[offset : offset + length], f"<{offset}>"
                    if action == "huge":
                        send(f"* {seq[msg.uid]} FETCH (UID {msg.uid} BODY[] {{{10**11}}}\r\n")
                        send(b"x" * 100)
                        raise Disconnect
                    if action == "drop":
                        send(f"* {seq[msg.uid]} FETCH (UID {msg.uid} BODY[] {{{len(data)}}}\r\n")
                        send(data[: len(data) // 2])
                        raise Disconnect
                    out.append(f"BODY[{section}]{origin} {{{len(data)}}}\r\n".encode() + data)
            send(f"* {seq[msg.uid]} FETCH (".encode() + b" ".join(out) + b")\r\n")
        send(f"{tag} OK fetch done\r\n")

    def claimed_size(self, box: FakeMailbox, msg: FakeMessage) -> int:
        """The RFC822.SIZE the server reports for a message."""
        return len(msg.body)

    def _cmd_uid_search(self, send, tag, session, args, action):
        box = self._selected(send, tag, session)
        if box is None:
            return
        uids = [m.uid for m in box.messages]
        found = set(uids)
        esearch = args[:1] == ["RETURN"]  # RETURN (ALL): RFC 4731
        if esearch:
            args = args[2:]
        words = [str(a).upper() for a in args]
        if "DELETED" in words:
            found &= {m.uid for m in box.messages if "\\Deleted" in m.flags}
        if "UID" in words:
            found &= parse_set(args[words.index("UID") + 1], uids)
        if esearch:
            result = f" ALL {','.join(map(str, sorted(found)))}" if found else ""
            send(f'* ESEARCH (TAG "{tag}") UID{result}\r\n{tag} OK search\r\n')
            return
        send(f"* SEARCH {' '.join(map(str, sorted(found)))}\r\n{tag} OK search\r\n")

    def _cmd_uid_store(self, send, tag, session, args, action):
        box = self._selected(send, tag, session)
        if box is None:
            return
        wanted = parse_set(args[0], [m.uid for m in box.messages])
        mode, flags = args[1].upper(), set(args[2] if isinstance(args[2], list) else [args[2]])
        for msg in box.messages:
            if msg.uid in wanted:
                if mode.startswith("+"):
                    msg.flags |= flags
                elif mode.startswith("-"):
                    msg.flags -= flags
                else:
                    msg.flags = set(flags)
        send(f"{tag} OK store\r\n")

    def _expunge(self, send, box: FakeMailbox, only: set[int] | None) -> None:
        for n in range(len(box.messages), 0, -1):
            msg = box.messages[n - 1]
            if "\\Deleted" in msg.flags and (only is None or msg.uid in only):
                del box.messages[n - 1]
                send(f"* {n} EXPUNGE\r\n")

    def _cmd_uid_expunge(self, send, tag, session, args, action):
        box = self._selected(send, tag, session)
        if box is None:
            return
        if "UIDPLUS" not in self.capabilities:
            send(f"{tag} BAD no UIDPLUS here\r\n")
            return
        self._expunge(send, box, parse_set(args[0], [m.uid for m in box.messages]))
        send(f"{tag} OK expunged\r\n")

    def _cmd_expunge(self, send, tag, session, args, action):
        box = self._selected(send, tag, session)
        if box is None:
            return
        self._expunge(send, box, None)
        send(f"{tag} OK expunged\r\n")
