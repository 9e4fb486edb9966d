"""A hostile IMAP server (issue 10, section 4) on the scripted fake of fakeimap.py; run
mailsync against it with imaptools.run_measured (a child process whose memory is
measured and whose time is bounded).

Each misbehaviour is switched on by a keyword and, where it makes sense, aimed at one
folder, so a test can show that the folder fails alone while the others sync:

* ``greeting_literal=N``: the greeting announces an N-byte literal (before STARTTLS and
  login, so anyone on the path could send it), sends ``greeting_bytes`` of it and hangs;
* ``drip=FOLDER``: a body FETCH there announces a literal and sends it one byte every
  ``drip_interval`` seconds, for as long as the client listens; ``drip="greeting"``
  drips the greeting line instead;
* ``trickle=(FOLDER, BYTES, INTERVAL)``: a body FETCH there sends the true body BYTES at
  a time every INTERVAL seconds (a slow link, not an attack), then completes;
* ``flood=(FOLDER, LINE, COUNT)``: SELECT/EXAMINE of the folder first sends COUNT copies
  of the untagged LINE (``* OK``, ``* 1 EXISTS``), then the normal answer;
* ``search={FOLDER: "1:100000000"}``: UID SEARCH there answers that UID set, as ESEARCH
  when asked for (RETURN), else as a plain SEARCH of every UID in it;
* ``claimed_sizes={FOLDER: N}``: RFC822.SIZE says N bytes whatever the body is;
* ``invalid_uids={FOLDER: ["0", "-1"]}``: FETCH responses with these UIDs besides the
  real ones;
* ``echo_login=True``: a refused LOGIN is answered with its arguments, password included.
"""

from __future__ import annotations

import time

from fakeimap import Disconnect, FakeIMAPServer


class HostileIMAPServer(FakeIMAPServer):
    def __init__(
        self,
        mailboxes: dict[str, list] | None = None,
        *,
        greeting_literal: int | None = None,
        greeting_bytes: int = 0,
        drip: str | None = None,
        drip_interval: float = 0.05,
        trickle: tuple[str, int, float] | None = None,
        flood: tuple[str, bytes, int] | None = None,
        search: dict[str, str] | None = None,
        claimed_sizes: dict[str, int] | None = None,
        invalid_uids: dict[str, list[str]] | None = None,
        echo_login: bool = False,
        **kwargs,
    ):
        super().__init__(mailboxes, fault=self._misbehave, **kwargs)
        self.greeting_literal, self.greeting_bytes = greeting_literal, greeting_bytes
        self.drip, self.drip_interval = drip, drip_interval
        self.trickle = trickle
        self.flood = flood
        self.search = dict(search or {})
        self.claimed_sizes = dict(claimed_sizes or {})
        self.invalid_uids = dict(invalid_uids or {})
        self.echo_login = echo_login
        self.dripped = 0  # bytes sent by drips, all connections together

    def greet(self, conn) -> None:
        if self.drip == "greeting":
            conn.sendall(b"* OK ")
            self._drip(conn.sendall)
        if self.greeting_literal is None:
            return super().greet(conn)
        conn.sendall(b"* OK [ALERT] hello {%d}\r\n" % self.greeting_literal)
        chunk = b"x" * (1 << 20)
        left = self.greeting_bytes
        while left > 0:
            conn.sendall(chunk[:left])
            left -= len(chunk)
        self.stop_event.wait(30)
        raise Disconnect

    def _drip(self, send) -> None:
        while not self.stop_event.is_set():
            send(b"x")  # raises once the client has gone
            with self.lock:
                self.dripped += 1
            time.sleep(self.drip_interval)
        raise Disconnect

    def claimed_size(self, box, msg) -> int:
        return self.claimed_sizes.get(box.name, len(msg.body))

    def _misbehave(self, server, conn, command, args):
        """The fault hook: a callable (see fakeimap) for the commands to misbehave on."""

        def folder(session) -> str | None:
            box = session["selected"]
            return box.name if box is not None else None

        def act(send, tag, session):
            name = folder(session)
            if command in ("SELECT", "EXAMINE") and self.flood and args[0] == self.flood[0]:
                _, line, count = self.flood
                chunk = (line.rstrip(b"\r\n") + b"\r\n") * 10_000
                for _ in range(count // 10_000):
                    send(chunk)
                send(chunk[: (count % 10_000) * len(line.rstrip(b"\r\n") + b"\r\n")])
            elif command == "UID FETCH" and name == self.drip and "BODY.PEEK[" in str(args):
                msg = session["selected"].messages[0]
                send(f"* 1 FETCH (UID {msg.uid} BODY[] {{{len(msg.body)}}}\r\n")
                self._drip(send)
            elif self.trickle and command == "UID FETCH" and name == self.trickle[0]:
                if "BODY.PEEK[" in str(args):
                    _, size, interval = self.trickle
                    for n, msg in enumerate(session["selected"].messages, 1):
                        send(f"* {n} FETCH (UID {msg.uid} BODY[] {{{len(msg.body)}}}\r\n")
                        for start in range(0, len(msg.body), size):
                            send(msg.body[start : start + size])
                            time.sleep(interval)
                        send(b")\r\n")
                    send(f"{tag} OK fetch done\r\n")
                    return
            elif command == "UID SEARCH" and name in self.search:
                uids = self.search[name]
                if args[:1] == ["RETURN"]:
                    send(f'* ESEARCH (TAG "{tag}") UID ALL {uids}\r\n')
                else:
                    low, _, high = uids.partition(":")
                    numbers = range(int(low), int(high or low) + 1)
                    send(b"* SEARCH " + b" ".join(b"%d" % n for n in numbers) + b"\r\n")
                send(f"{tag} OK done\r\n")
                return
            elif command == "UID FETCH" and name in self.invalid_uids:
                for n, uid in enumerate(self.invalid_uids[name]):
                    send(
                        f"* {90000 + n} FETCH (UID {uid} FLAGS () RFC822.SIZE 10 "
                        f'INTERNALDATE "02-Jan-2020 03:04:05 +0000")\r\n'
                    )
            elif command == "LOGIN" and self.echo_login and args[:2] != [self.user, self.password]:
                user, password = (list(args) + ["", ""])[:2]
                send(f'{tag} NO [AUTHENTICATIONFAILED] LOGIN "{user}" "{password}" refused\r\n')
                return
            self.dispatch(send, tag, session, command, args)

        return act
