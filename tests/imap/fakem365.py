"""A scripted Microsoft 365 (Exchange Online, outlook.office365.com) IMAP server on the
machinery of fakeimap.py, for the faults mailsync's Microsoft 365 support must live with.
No Exchange Online can be reached from the tests; this one answers as Exchange Online is
reported to answer where it matters (sources in [brackets], listed at the end):

* the greeting ``* OK The Microsoft Exchange IMAP4 service is ready. [<base64 of the
  server's name in UTF-16LE>]`` and its capabilities before and after login [CAPS]: no
  LOGINDISABLED, ``AUTH=PLAIN`` is announced but refused (basic authentication is off in
  Exchange Online): ``NO LOGIN failed.`` / ``NO AUTHENTICATE failed.`` [IMAPSYNC-O365,
  imapsync#395]; only ``AUTHENTICATE XOAUTH2`` logs in, with an initial response (SASL-IR)
  or after ``+ `` [MS-OAUTH, MailKit#178]; a refused token is ``NO AUTHENTICATE failed.``
  at once, with no error challenge [office-developer-exchange-docs#87]; the OK carries no
  CAPABILITY code (MOVE appears only in the CAPABILITY asked for after login);
* throttling [IMAPSYNC-O365, imapsync#198, imap_tools#135, email-oauth2-proxy#191]:
  ``NO`` or ``BAD Request is throttled. Suggested Backoff Time: N milliseconds``, N the
  time left (consecutive answers count down: 299609, 299187 ms in imapsync#198), for an
  APPEND instead of the continuation (imapsync#198: "Error sending ... APPEND ... NO
  Request is throttled"), optionally followed by ``* BYE Connection closed. 14`` and a
  hang-up (email-oauth2-proxy#191).  Once the backoff has passed the command works again.
  Each ``Throttle`` rule is one such window; ``Throttle.early`` counts the commands that
  came back before it had passed (a client that does not wait);
* ``BAD User is authenticated but not connected.`` after a successful login, for every
  command but CAPABILITY, NOOP, ID and LOGOUT, until ``* BYE Connection closed. 14`` at
  the second one; a new connection works [email-oauth2-proxy#74, node-imap#523, imapsync
  FAQ].  ``not_connected=N`` makes the first N logins so; ``max_sessions`` makes a login
  beyond that many open sessions so (the 20-connection limit blamed in check-mail#183);
* an APPEND over ``max_message_size`` (35 MB by default in Exchange Online [LIMITS]):
  ``NO Maximum size of appendable message has been exceeded.`` [IMAPSYNC-O365]
  (``too_big="BAD Command Argument Error. 11"`` gives the other answer imapsync's FAQ
  reports).  Exchange Online announces no APPENDLIMIT [CAPS]; ``announce_appendlimit``
  adds ``APPENDLIMIT=max_message_size`` to test a client's use of RFC 7889 anyway;
* an access token that expires while a session is open: ``* BYE Session invalidated -
  AccessTokenExpired`` at its next command, and a hang-up [aioimaplib#83]
  (``expire_token``).

A test knob that is no behaviour of Exchange Online: ``allow_login=True`` makes ``LOGIN
user TOKEN`` log in as ``AUTHENTICATE XOAUTH2`` with that token would (a valid token as
the password; throttling, "not connected" and ``expire_token`` apply alike), for tests of
the other behaviour by a client whose OAuth2 login is not wired yet.

Also NAMESPACE, ID, UNSELECT, IDLE, UID COPY/MOVE; the rest is fakeimap.py's (folders as
``FakeMailbox``es, ``fault`` hooks, ``log``/``commands()``).  ``logins`` lists
(connection, user, token) of each successful login.

Sources:
[CAPS] protocol logs of outlook.office365.com: "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN
  AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+" before login,
  "... SASL-IR UIDPLUS MOVE ID UNSELECT CLIENTACCESSRULES CLIENTNETWORKPRESENCELOCATION
  BACKENDAUTHENTICATE CHILDREN IDLE NAMESPACE LITERAL+" after (jstedfast/MailKit#849,
  #1494, simonrob/email-oauth2-proxy#74, mscdex/node-imap#523).
[MS-OAUTH] https://learn.microsoft.com/exchange/client-developer/legacy-protocols/
  how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth (XOAUTH2 only).
[IMAPSYNC-O365] imapsync's FAQ.d/FAQ.Office365.txt.
[LIMITS] Exchange Online limits: message size 35 MB by default, up to 150 MB.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass

from fakegmail import sasl_bearer
from fakeimap import Disconnect, FakeIMAPServer, parse_set

CAPABILITIES_BEFORE_LOGIN = (
    "IMAP4", "IMAP4rev1", "AUTH=PLAIN", "AUTH=XOAUTH2", "SASL-IR", "UIDPLUS", "ID",
    "UNSELECT", "CHILDREN", "IDLE", "NAMESPACE", "LITERAL+",
)  # fmt: skip
CAPABILITIES = (
    "IMAP4", "IMAP4rev1", "AUTH=PLAIN", "AUTH=XOAUTH2", "SASL-IR", "UIDPLUS", "MOVE", "ID",
    "UNSELECT", "CLIENTACCESSRULES", "CLIENTNETWORKPRESENCELOCATION", "BACKENDAUTHENTICATE",
    "CHILDREN", "IDLE", "NAMESPACE", "LITERAL+",
)  # fmt: skip
SERVER_NAME = "FAKE0001.namprd01.prod.outlook.com"
GREETING = "* OK The Microsoft Exchange IMAP4 service is ready. [{}]".format(
    base64.b64encode(SERVER_NAME.encode("utf-16-le")).decode()
)
NOT_CONNECTED = "BAD User is authenticated but not connected."
CONNECTION_CLOSED = "* BYE Connection closed. 14"
TOKEN_EXPIRED = "* BYE Session invalidated - AccessTokenExpired"
TOO_BIG = "NO Maximum size of appendable message has been exceeded."
_BEFORE_LOGIN = {"CAPABILITY", "NOOP", "ID", "LOGOUT", "LOGIN", "AUTHENTICATE", "STARTTLS"}
# What a session that is "authenticated but not connected" still answers.
_HARMLESS = {"CAPABILITY", "NOOP", "ID", "LOGOUT"}


@dataclass
class Throttle:
    """One throttling window of Exchange Online.  The (skip + 1)-th ``command`` after
    login (any connection; "*" for every command) opens it; until ``backoff_ms`` have
    passed, every matching command is answered ``status Request is throttled. Suggested
    Backoff Time: <time left> milliseconds`` (and ``* BYE Connection closed. 14`` and a
    hang-up when ``bye``); after that the rule is spent."""

    command: str
    skip: int = 0
    backoff_ms: int = 200
    status: str = "NO"
    bye: bool = False
    seen: int = 0  # matching commands so far
    answered: int = 0  # throttled answers given
    early: int = 0  # matching commands that came before the backoff had passed
    until: float | None = None  # time.monotonic() when the window closes

    def answer(self, command: str, now: float) -> str | None:
        """The throttled answer (without the tag) for a command arriving now, or None."""
        if self.command not in ("*", command):
            return None
        if self.until is None:
            self.seen += 1
            if self.seen <= self.skip:
                return None
            self.until = now + self.backoff_ms / 1000
        elif now < self.until:
            self.early += 1
        else:
            return None
        self.answered += 1
        left = max(1, math.ceil(round((self.until - now) * 1000, 3)))  # (float noise: 150.0000001)
        return f"{self.status} Request is throttled. Suggested Backoff Time: {left} milliseconds"


class FakeM365(FakeIMAPServer):
    continuation = b"+ Ready for additional command text.\r\n"

    def __init__(
        self,
        mailboxes: dict[str, list] | None = None,
        *,
        user: str = "alice@corp.example",
        tokens: tuple[str, ...] | set[str] = ("eyJ0eXAiOiJKV1Qi.fake.token",),
        throttles: list[Throttle] | tuple[Throttle, ...] = (),
        not_connected: int = 0,
        max_sessions: int | None = None,
        max_message_size: int = 35 * 1024 * 1024,
        too_big: str = TOO_BIG,
        announce_appendlimit: bool = False,
        allow_login: bool = False,
        fault=None,
        tls_context=None,
    ):
        super().__init__(
            mailboxes,
            user=user,
            password="",
            capabilities=CAPABILITIES,  # fakeimap reads UIDPLUS from here
            greeting=GREETING,
            fault=self._exchange,
            tls_context=tls_context,
        )
        self.tokens = set(tokens)
        self.expired_tokens: set[str] = set()
        self.throttles = list(throttles)
        self.not_connected = not_connected
        self.max_sessions = max_sessions
        self.max_message_size = max_message_size
        self.too_big = too_big
        self.announce_appendlimit = announce_appendlimit
        self.allow_login = allow_login  # a test knob: LOGIN user TOKEN (module docstring)
        self.user_fault = fault
        self.logins: list[tuple[int, str, str]] = []  # (connection, user, token)
        self._token_of: dict[int, str] = {}  # connection -> the token it logged in with
        self._stranded: dict[int, int] = {}  # "not connected" connection -> its BADs so far
        self._open: set[int] = set()  # connections logged in and not closed

    # -- for tests --------------------------------------------------------------------------
    def expire_token(self, token: str) -> None:
        """The token expires: refused from now on, and every session logged in with it is
        ended at its next command [aioimaplib#83]."""
        with self.lock:
            self.tokens.discard(token)
            self.expired_tokens.add(token)

    def throttled(self) -> list[tuple[str, int]]:
        """(command, answers) of every rule that has throttled something."""
        return [(rule.command, rule.answered) for rule in self.throttles if rule.answered]

    # -- the protocol --------------------------------------------------------------------------
    def _caps(self, session) -> str:
        if not session["auth"]:
            return " ".join(CAPABILITIES_BEFORE_LOGIN)
        extra = (f"APPENDLIMIT={self.max_message_size}",) if self.announce_appendlimit else ()
        return " ".join(CAPABILITIES + extra)

    def _serve(self, conn, number: int) -> None:
        try:
            super()._serve(conn, number)
        finally:
            with self.lock:
                self._open.discard(number)

    def refuse_literal(self, command: bytes, size: int) -> bytes | None:
        """A throttled APPEND is answered instead of its literal's continuation, as
        Exchange does (imapsync#198: "Error sending ... APPEND ... NO Request is
        throttled"); the client then sends nothing more of it."""
        parts = command.split(b" ", 2)
        if len(parts) < 2 or parts[1].upper() != b"APPEND":
            return None
        with self.lock:
            answer = self._throttle_answer("APPEND")
        if answer is None:
            return None
        refusal = f"{parts[0].decode()} {answer[0]}\r\n".encode()
        return refusal + (CONNECTION_CLOSED.encode() + b"\r\n" if answer[1] else b"")

    def _throttle_answer(self, command: str) -> tuple[str, bool] | None:
        now = time.monotonic()
        for rule in self.throttles:
            text = rule.answer(command, now)
            if text is not None:
                return text, rule.bye
        return None

    def _exchange(self, server, number: int, command: str, args):
        """The fault hook: Exchange Online's answers before the normal one."""
        if self.user_fault is not None:
            action = self.user_fault(server, number, command, args)
            if action is not None:
                return action
        if command == "AUTHENTICATE":
            return self._authenticate(args)  # it waits for the client: no lock
        with self.lock:
            token = self._token_of.get(number)
            if token is None and command not in _BEFORE_LOGIN:
                return self._answer("BAD Command received in Invalid state.", None)
            if token is not None and token in self.expired_tokens:
                return self._bye(TOKEN_EXPIRED)
            if number in self._stranded and command not in _HARMLESS:
                self._stranded[number] += 1
                closing = self._stranded[number] >= 2
                return self._answer(NOT_CONNECTED, CONNECTION_CLOSED if closing else None)
            if token is not None:
                answer = self._throttle_answer(command)
                if answer is not None:
                    return self._answer(answer[0], CONNECTION_CLOSED if answer[1] else None)
        if command == "IDLE":
            return self._idle(args)  # it waits for DONE: no lock
        return None

    @staticmethod
    def _answer(text: str, bye: str | None):
        def act(send, tag, session):
            send(f"{tag} {text}\r\n")
            if bye is not None:
                send(bye + "\r\n")
                raise Disconnect

        return act

    @staticmethod
    def _bye(text: str):
        def act(send, tag, session):
            send(text + "\r\n")
            raise Disconnect

        return act

    def _authenticate(self, args):
        def act(send, tag, session):
            mechanism = str(args[0]).upper() if args else ""
            if mechanism != "XOAUTH2":
                send(f"{tag} NO AUTHENTICATE failed.\r\n")  # PLAIN: basic auth is off
                return
            if len(args) > 1:
                response = str(args[1])
            else:
                send("+ \r\n")
                response = session["reader"].readline().rstrip(b"\r\n").decode("ascii", "replace")
            try:
                decoded = base64.b64decode(response, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                send(f"{tag} BAD Command Argument Error. 12\r\n")
                return
            user, token = sasl_bearer(decoded, "XOAUTH2")
            with self.lock:
                valid = user is not None and user.lower() == self.user.lower()
                valid = valid and token in self.tokens
                if not valid:
                    send(f"{tag} NO AUTHENTICATE failed.\r\n")
                    return
                self._logged_in(session, user, token)
            send(f"{tag} OK AUTHENTICATE completed.\r\n")

        return act

    def _logged_in(self, session, user: str, token: str) -> None:
        """Bookkeeping of a successful login (under the lock)."""
        number = session["n"]
        session["auth"] = True
        self._token_of[number] = token
        self.logins.append((number, user, token))
        crowded = self.max_sessions is not None and len(self._open) >= self.max_sessions
        if len(self.logins) <= self.not_connected or crowded:
            self._stranded[number] = 0
        self._open.add(number)

    def _idle(self, args):
        def act(send, tag, session):
            send("+ IDLE accepted, awaiting DONE command.\r\n")
            line = session["reader"].readline()
            if not line:
                raise Disconnect
            send(f"{tag} OK IDLE completed.\r\n")

        return act

    def _cmd_login(self, send, tag, session, args, action):
        user, token = (args + ["", ""])[:2]
        valid = self.allow_login and str(user).lower() == self.user.lower()
        if not valid or token not in self.tokens:
            send(f"{tag} NO LOGIN failed.\r\n")  # Exchange Online: basic authentication is off
            return
        self._logged_in(session, str(user), str(token))  # the test knob (module docstring)
        send(f"{tag} OK LOGIN completed.\r\n")

    def _cmd_namespace(self, send, tag, session, args, action):
        send(f'* NAMESPACE (("" "/")) NIL NIL\r\n{tag} OK NAMESPACE completed.\r\n')

    def _cmd_id(self, send, tag, session, args, action):
        send(f"* ID NIL\r\n{tag} OK ID completed.\r\n")

    def _cmd_unselect(self, send, tag, session, args, action):
        session["selected"] = None
        send(f"{tag} OK UNSELECT completed.\r\n")

    def _cmd_append(self, send, tag, session, args, action):
        if isinstance(args[-1], bytes) and len(args[-1]) > self.max_message_size:
            send(f"{tag} {self.too_big}\r\n")
            return
        super()._cmd_append(send, tag, session, args, action)

    def _cmd_uid_copy(self, send, tag, session, args, action, move: bool = False):
        source = self._selected(send, tag, session)
        if source is None:
            return
        target = self._box(args[1])
        if target is None:
            send(f"{tag} NO [TRYCREATE] The requested item could not be found.\r\n")
            return
        wanted = parse_set(str(args[0]), [m.uid for m in source.messages])
        pairs = []
        for msg in [m for m in source.messages if m.uid in wanted]:
            copy = target.add(msg.body, set(msg.flags), msg.date)
            pairs.append((msg.uid, copy.uid))
        code = ""
        if pairs:
            olds, news = (",".join(str(p[i]) for p in pairs) for i in (0, 1))
            code = f"[COPYUID {target.uidvalidity} {olds} {news}] "
        if not move:
            send(f"{tag} OK {code}COPY completed.\r\n")
            return
        send(f"* OK {code}\r\n")
        for n in range(len(source.messages), 0, -1):
            if source.messages[n - 1].uid in wanted:
                del source.messages[n - 1]
                send(f"* {n} EXPUNGE\r\n")
        send(f"{tag} OK MOVE completed.\r\n")

    def _cmd_uid_move(self, send, tag, session, args, action):
        self._cmd_uid_copy(send, tag, session, args, action, move=True)
