"""A tiny scripted POP3 server on 127.0.0.1 for the faults Dovecot cannot produce: no UIDL,
duplicate UIDLs, a connection dropped in mid-RETR, a RETR without its terminating ".", a
garbage status line, LIST sizes that lie, a hostile greeting; and a hostile server's
tricks (issue 10): a RETR dripping a byte at a time, an endless CAPA before login, a
refused PASS echoed back with the password.

It is faithful where a client can tell: RFC 1939 (AUTHORIZATION, TRANSACTION and UPDATE
states; USER/PASS, APOP, STAT, LIST, UIDL, TOP, RETR, DELE, NOOP, RSET, QUIT), RFC 2449
CAPA, RFC 5034 AUTH PLAIN (initial response or "+ " continuation) and RFC 2595 STLS.

* Messages are kept as given (LF or CRLF); on the wire every line ends CRLF, lines
  starting with "." are dot-stuffed and a body without a final newline gets CRLF added
  before the terminating ".".  LIST/RETR sizes count the CRLF form of the message as
  stored, without that added CRLF (as Dovecot does), plus ``Behaviour.list_size_lie``
  for LIST.
* Message numbers are assigned per session when it enters the TRANSACTION state, over
  the live messages at that moment (the maildrop is "locked": a concurrent QUIT or
  ``add`` does not change what this session sees).
* DELE marks; the deletions are applied only by QUIT in the TRANSACTION state (UPDATE).
  A connection that ends any other way deletes nothing.
* ``Behaviour.drop_in_retr`` / ``malformed_retr`` name a message by its position in
  ``FakePOP3.messages`` (1-based), not by the session's number for it, so that "message
  2 is cut" stays true when another session has deleted message 1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from servers.dovecot import make_certificates

HOST = "127.0.0.1"
AUTH_FAILED = "-ERR [AUTH] Authentication failed."
NO_SUCH_MESSAGE = "-ERR no such message"
UNKNOWN = "-ERR unknown command"
SECRET_COMMANDS = ("PASS", "APOP", "AUTH")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


@dataclass
class Behaviour:
    uidl: bool = True  # UIDL command supported (else "-ERR unknown command")
    top: bool = True  # TOP supported
    capa: bool = True  # CAPA supported
    sasl_plain: bool = False  # AUTH PLAIN (RFC 5034)
    apop: bool = False  # greeting carries <pid.clock@fakepop>; APOP checks md5(stamp+password)
    stls: bool = False  # offer STLS (needs tls_context)
    pipelining: bool = True  # listed in CAPA (commands are always read one line at a time)
    uidls: list[str] | None = None  # per message (index = position in messages); None: uid-<n>
    drop_in_retr: int | None = None  # message whose RETR is cut after drop_after body bytes
    drop_after: int = 100
    drop_times: int = 1  # how many sessions the drop happens in (then RETR works); -1 = always
    malformed_retr: int | None = None  # message whose RETR lacks the "." line (then closed)
    garbage_status: bool = False  # every RETR status line is "?? garbage" instead of +OK
    list_size_lie: int = 0  # added to every LIST size
    greeting: str | None = None  # the whole greeting line; "-ERR ..." closes the connection
    drip_retr: int | None = None  # message whose RETR sends one byte per drip_interval, forever
    drip_interval: float = 0.05
    capa_lines: int = 0  # extra lines in every CAPA response (before login too)
    echo_pass: bool = False  # a refused PASS: "-ERR [AUTH] PASS <the password given> refused"


class Disconnect(Exception):
    """End this session (the server hangs up)."""


def crlf(data: bytes) -> bytes:
    """The message with every line ending CRLF (lone CRs are left alone)."""
    return _BARE_LF.sub(b"\r\n", data)


def wire(data: bytes) -> bytes:
    """The body of a multi-line response for `data` (already CRLF), without the "." line."""
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data)


def top_part(data: bytes, lines: int) -> bytes:
    """Headers, the blank line and the first `lines` body lines of `data` (CRLF form)."""
    parts = data.splitlines(keepends=True)
    for index, line in enumerate(parts):
        if line == b"\r\n":
            return b"".join(parts[: index + 1 + lines])
    return data  # no blank line: all header


def make_tls_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1 (made with the
    openssl command, see servers/dovecot.py) -> (server context, path of the CA cert)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cafile, certfile, keyfile = make_certificates(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context, cafile


class _Session:
    def __init__(self, conn: socket.socket, number: int):
        self.conn = conn
        self.reader = conn.makefile("rb")
        self.number = number
        self.tls = False
        self.authenticated = False
        self.pending_user: str | None = None
        self.timestamp: str | None = None
        self.maildrop: list[tuple[int, bytes, str]] = []  # (index in messages, CRLF, uidl)
        self.deleted: set[int] = set()  # session message numbers

    def send(self, data: bytes | str) -> None:
        self.conn.sendall(data if isinstance(data, bytes) else data.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r\n")

    def multi(self, status: str, body: bytes) -> None:
        self.send(status.encode() + b"\r\n" + body + b".\r\n")

    def live(self) -> list[tuple[int, bytes, str]]:
        """(session number, CRLF data, uidl) of the messages not marked deleted."""
        return [
            (n, data, uidl)
            for n, (_, data, uidl) in enumerate(self.maildrop, 1)
            if n not in self.deleted
        ]


class FakePOP3:
    def __init__(
        self,
        messages: list[bytes],
        user: str = "alice",
        password: str = "secret",
        behaviour: Behaviour | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ):
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        self.user, self.password = user, password
        self.behaviour = behaviour or Behaviour()
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.host = HOST
        self.port = 0
        self.messages: list[bytes | None] = list(messages)
        self.commands: list[str] = []
        self.sessions = 0
        self.quits = 0
        self.drops = 0  # RETRs cut by drop_in_retr so far
        self.lock = threading.RLock()
        self._uidl_of: dict[int, str] = {}  # index in messages -> uidl given to add()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: list[_Session] = []

    # lifecycle ---------------------------------------------------------------------
    def start(self) -> FakePOP3:
        self._stop.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen(16)
        listener.settimeout(0.05)  # closing a listening socket does not wake accept()
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads = [thread]
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads[:1]:
            thread.join(2)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self.lock:
            sessions = list(self._open)
        for session in sessions:
            try:
                session.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads[1:]:
            thread.join(2)

    def __enter__(self) -> FakePOP3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the maildrop ------------------------------------------------------------------
    def add(self, data: bytes, uidl: str | None = None) -> None:
        """Deliver a new message (seen by sessions that authenticate from now on)."""
        with self.lock:
            self.messages.append(data)
            if uidl is not None:
                self._uidl_of[len(self.messages) - 1] = uidl

    def uidl(self, index: int) -> str:
        """The UIDL of ``messages[index]``."""
        with self.lock:
            if index in self._uidl_of:
                return self._uidl_of[index]
        uidls = self.behaviour.uidls
        if uidls is not None and index < len(uidls):
            return uidls[index]
        return f"uid-{index + 1}"

    def url(self, scheme: str = "pop3") -> str:
        """The store URL; plain text gets ?tls=none, with TLS the caller adds ?cafile=."""
        base = f"{scheme}://{quote(self.user, safe='')}@{self.host}:{self.port}"
        return base if self.tls_context is not None else base + "?tls=none"

    # connections -------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self.lock:
                self.sessions += 1
                number = self.sessions
            thread = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        session: _Session | None = None
        try:
            if self.implicit_tls:
                assert self.tls_context is not None
                conn = self.tls_context.wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                )
            session = _Session(conn, number)
            session.tls = self.implicit_tls
            with self.lock:
                self._open.append(session)
            if self._stop.is_set():
                return
            if self.implicit_tls:
                conn.do_handshake()
            self._greet(session)
            while not self._stop.is_set():
                raw = session.reader.readline(65536)
                if not raw.endswith(b"\n"):
                    return  # the client went away (no QUIT: nothing is deleted)
                self._dispatch(session, raw)
        except Disconnect:
            if session is not None:
                self._hang_up(session)
        except (OSError, ValueError):
            pass
        finally:
            if session is not None:
                with self.lock:
                    if session in self._open:
                        self._open.remove(session)
                for closable in (session.reader, session.conn):
                    try:
                        closable.close()
                    except OSError:
                        pass
            else:
                conn.close()

    def _hang_up(self, session: _Session) -> None:
        """Close our side after what was sent, and read what the client had already
        pipelined so that the close sends FIN, not RST (which may discard our data)."""
        conn = session.conn  # TLS: no close_notify, an abrupt cut as a crashing server's
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.2)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and not self._stop.is_set():
                if not conn.recv(65536):
                    break
        except (OSError, ValueError):
            pass

    def _greet(self, session: _Session) -> None:
        greeting = self.behaviour.greeting
        if greeting is not None:
            stamp = re.search(r"<[^<>]*>", greeting)
            session.timestamp = stamp.group(0) if stamp else None
            session.line(greeting)
            if not greeting.startswith("+OK"):
                raise Disconnect
            return
        if self.behaviour.apop:
            session.timestamp = f"<{os.getpid()}.{time.time_ns()}.{session.number}@fakepop>"
            session.line(f"+OK fakepop ready {session.timestamp}")
        else:
            session.line("+OK fakepop ready")

    def _dispatch(self, session: _Session, raw: bytes) -> None:
        text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        keyword, _, arg = text.partition(" ")
        command = keyword.upper()
        shown = f"{keyword} ***" if command in SECRET_COMMANDS and arg else text
        with self.lock:
            self.commands.append(shown)
        state = "transaction" if session.authenticated else "authorization"
        method = getattr(self, f"_{state}_{command.lower()}", None)
        if not command.isalpha() or method is None:
            session.line(UNKNOWN)
            return
        method(session, arg.strip())

    # AUTHORIZATION -----------------------------------------------------------------
    def _capabilities(self, session: _Session) -> list[str]:
        b = self.behaviour
        caps = ["USER"]
        if b.uidl:
            caps.append("UIDL")
        if b.top:
            caps.append("TOP")
        if b.sasl_plain:
            caps.append("SASL PLAIN")
        if b.stls and self.tls_context and not session.tls and not session.authenticated:
            caps.append("STLS")
        if b.pipelining:
            caps.append("PIPELINING")
        caps += ["RESP-CODES", "AUTH-RESP-CODE"]
        return caps

    def _authorization_capa(self, session: _Session, arg: str) -> None:
        if not self.behaviour.capa:
            session.line(UNKNOWN)
            return
        body = "".join(f"{cap}\r\n" for cap in self._capabilities(session)).encode()
        if self.behaviour.capa_lines:
            lines = self.behaviour.capa_lines
            session.send(b"+OK Capability list follows\r\n" + body)
            for start in range(0, lines, 10_000):
                session.send(b"X-FILLER for a hostile CAPA\r\n" * min(10_000, lines - start))
            session.send(b".\r\n")
            return
        session.multi("+OK Capability list follows", body)

    _transaction_capa = _authorization_capa

    def _authorization_quit(self, session: _Session, arg: str) -> None:
        with self.lock:
            self.quits += 1
        session.line("+OK bye")
        raise Disconnect

    def _authorization_stls(self, session: _Session, arg: str) -> None:
        if not (self.behaviour.stls and self.tls_context):
            session.line(UNKNOWN)
            return
        if session.tls:
            session.line("-ERR TLS already active")
            return
        session.line("+OK Begin TLS")
        session.reader.close()  # anything pipelined after STLS is dropped (RFC 2595)
        conn = self.tls_context.wrap_socket(
            session.conn, server_side=True, do_handshake_on_connect=False
        )
        session.conn, session.reader, session.tls = conn, conn.makefile("rb"), True
        conn.do_handshake()

    def _authorization_user(self, session: _Session, arg: str) -> None:
        if not arg:
            session.line("-ERR USER needs a name")
            return
        session.pending_user = arg
        session.line("+OK")

    def _authorization_pass(self, session: _Session, arg: str) -> None:
        user, session.pending_user = session.pending_user, None
        if user is None:
            session.line("-ERR no USER given")
        elif user == self.user and arg == self.password:
            self._logged_in(session)
        elif self.behaviour.echo_pass:
            session.line(f"-ERR [AUTH] PASS {arg} refused")
        else:
            session.line(AUTH_FAILED)

    def _authorization_apop(self, session: _Session, arg: str) -> None:
        if not self.behaviour.apop:
            session.line(UNKNOWN)
            return
        if session.timestamp is None:
            session.line("-ERR [AUTH] APOP not available: no timestamp in the greeting")
            return
        name, _, digest = arg.partition(" ")
        expected = hashlib.md5((session.timestamp + self.password).encode()).hexdigest()
        if name == self.user and digest.strip() == expected:
            self._logged_in(session)
        else:
            session.line(AUTH_FAILED)

    def _authorization_auth(self, session: _Session, arg: str) -> None:
        if not self.behaviour.sasl_plain:
            session.line(UNKNOWN)
            return
        mechanism, _, initial = arg.partition(" ")
        if not mechanism:
            session.multi("+OK", b"PLAIN\r\n")
            return
        if mechanism.upper() != "PLAIN":
            session.line("-ERR [AUTH] Unsupported authentication mechanism.")
            return
        response = initial.strip()
        if not response:
            session.line("+ ")
            raw = session.reader.readline(65536)
            if not raw.endswith(b"\n"):
                raise ConnectionError("client went away during AUTH")
            with self.lock:
                self.commands.append("***")
            response = raw.rstrip(b"\r\n").decode("utf-8", "replace").strip()
            if response == "*":
                session.line("-ERR authentication cancelled")
                return
        try:
            decoded = b"" if response == "=" else base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            session.line("-ERR invalid base64 data")
            return
        parts = decoded.split(b"\0")
        user, password = self.user.encode(), self.password.encode()
        if len(parts) == 3 and parts[1:] == [user, password] and parts[0] in (b"", user):
            self._logged_in(session)
        else:
            session.line(AUTH_FAILED)

    def _logged_in(self, session: _Session) -> None:
        with self.lock:
            session.maildrop = [
                (index, crlf(data), self.uidl(index))
                for index, data in enumerate(self.messages)
                if data is not None
            ]
        session.authenticated = True
        session.line(f"+OK Logged in, {len(session.maildrop)} messages.")

    # TRANSACTION -------------------------------------------------------------------
    def _message(self, session: _Session, arg: str) -> tuple[int, int, bytes, str] | None:
        """(session number, index in messages, CRLF data, uidl) for `arg`, or None after
        answering -ERR."""
        words = arg.split()
        number = int(words[0]) if words and words[0].isdigit() else 0
        if not 1 <= number <= len(session.maildrop) or number in session.deleted:
            session.line(NO_SUCH_MESSAGE)
            return None
        index, data, uidl = session.maildrop[number - 1]
        return number, index, data, uidl

    def _transaction_stat(self, session: _Session, arg: str) -> None:
        live = session.live()
        session.line(f"+OK {len(live)} {sum(len(data) for _, data, _ in live)}")

    def _transaction_list(self, session: _Session, arg: str) -> None:
        lie = self.behaviour.list_size_lie
        if arg:
            found = self._message(session, arg)
            if found:
                session.line(f"+OK {found[0]} {len(found[2]) + lie}")
            return
        live = session.live()
        total = sum(len(data) for _, data, _ in live)
        body = "".join(f"{n} {len(data) + lie}\r\n" for n, data, _ in live).encode()
        session.multi(f"+OK {len(live)} messages ({total} octets)", body)

    def _transaction_uidl(self, session: _Session, arg: str) -> None:
        if not self.behaviour.uidl:
            session.line(UNKNOWN)
            return
        if arg:
            found = self._message(session, arg)
            if found:
                session.line(f"+OK {found[0]} {found[3]}")
            return
        body = "".join(f"{n} {uidl}\r\n" for n, _, uidl in session.live()).encode()
        session.multi("+OK", body)

    def _transaction_top(self, session: _Session, arg: str) -> None:
        if not self.behaviour.top:
            session.line(UNKNOWN)
            return
        words = arg.split()
        if len(words) != 2 or not words[1].isdigit():
            session.line("-ERR TOP needs a message number and a line count")
            return
        found = self._message(session, words[0])
        if found:
            session.multi("+OK", wire(top_part(found[2], int(words[1]))))

    def _transaction_retr(self, session: _Session, arg: str) -> None:
        found = self._message(session, arg)
        if not found:
            return
        b = self.behaviour
        _, index, data, _ = found
        status = "?? garbage" if b.garbage_status else f"+OK {len(data)} octets"
        body = wire(data)
        if b.drop_in_retr == index + 1 and self._take_drop():
            session.send(status.encode() + b"\r\n" + body[: max(b.drop_after, 0)])
            raise Disconnect
        if b.malformed_retr == index + 1:
            session.send(status.encode() + b"\r\n" + body)
            raise Disconnect
        if b.drip_retr == index + 1:
            session.send(status.encode() + b"\r\n")
            while not self._stop.is_set():
                session.send(b"x")  # raises once the client has gone
                time.sleep(b.drip_interval)
            raise Disconnect
        session.multi(status, body)

    def _take_drop(self) -> bool:
        with self.lock:
            if self.behaviour.drop_times == -1 or self.drops < self.behaviour.drop_times:
                self.drops += 1
                return True
            return False

    def _transaction_dele(self, session: _Session, arg: str) -> None:
        found = self._message(session, arg)
        if found:
            session.deleted.add(found[0])
            session.line(f"+OK message {found[0]} deleted")

    def _transaction_noop(self, session: _Session, arg: str) -> None:
        session.line("+OK")

    def _transaction_rset(self, session: _Session, arg: str) -> None:
        session.deleted.clear()
        live = session.live()
        size = sum(len(data) for _, data, _ in live)
        session.line(f"+OK maildrop has {len(live)} messages ({size} octets)")

    def _transaction_quit(self, session: _Session, arg: str) -> None:
        with self.lock:  # UPDATE: the deletions take effect before the client hears +OK
            for number in session.deleted:
                self.messages[session.maildrop[number - 1][0]] = None
            self.quits += 1
        session.line(f"+OK bye ({len(session.deleted)} messages deleted)")
        raise Disconnect
