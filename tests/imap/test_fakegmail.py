"""The fake Gmail of fakegmail.py, tested with plain imapclient and a raw socket: what
mailsync's Gmail tests will stand on.  Each test names the Gmail behaviour it checks; the
sources are in fakegmail.py's docstring."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import ssl
import zlib

import pytest
from fakegmail import (
    CAPABILITIES,
    CAPABILITIES_BEFORE_LOGIN,
    DRAFT,
    IMPORTANT,
    INBOX,
    SENT,
    STARRED,
    TRASH,
    FakeGmail,
)
from fakeimap import make_tls_context
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

TOKEN = "ya29.fake-access-token"


def mail(n: int, subject: str = "", extra: str = "") -> bytes:
    return (
        f"From: a{n}@example.org\r\nTo: alice@gmail.com\r\nMessage-ID: <m{n}@example.org>\r\n"
        f"Subject: {subject or f'message {n}'}\r\n{extra}\r\nbody of message {n}\r\n"
    ).encode()


def client(gmail: FakeGmail, login: bool = True) -> IMAPClient:
    imap = IMAPClient(gmail.host, port=gmail.port, ssl=False, timeout=10)
    if login:
        imap.oauth2_login(gmail.user, TOKEN)
    return imap


class Wire:
    """A raw IMAP client: exact lines, literals read whole."""

    def __init__(self, gmail: FakeGmail):
        self.sock = socket.create_connection((gmail.host, gmail.port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()
        self.count = 0

    def line(self) -> bytes:
        line = self.file.readline()
        while (match := re.search(rb"\{(\d+)\}\r\n$", line)) is not None:
            line += self.file.read(int(match.group(1)))
            line += self.file.readline()
        return line

    def command(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        self.count += 1
        tag = f"t{self.count}".encode()
        self.sock.sendall(tag + b" " + (text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.until(tag)

    def until(self, tag: bytes) -> tuple[list[bytes], bytes]:
        untagged = []
        while True:
            line = self.line()
            if not line:
                raise EOFError("the server hung up")
            if line.startswith(tag + b" "):
                return untagged, line.rstrip(b"\r\n")
            untagged.append(line.rstrip(b"\r\n"))

    def login(self, gmail: FakeGmail) -> None:
        assert self.command(f'LOGIN "{gmail.user}" "{gmail.password}"')[1].startswith(b"t1 OK")


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


# -- the session ----------------------------------------------------------------------------


def test_capabilities_before_and_after_login_are_gmails():
    with FakeGmail() as gmail:
        wire = Wire(gmail)
        assert wire.greeting.startswith(b"* OK Gimap ready for requests from")
        untagged, _ = wire.command("CAPABILITY")
        assert untagged == [b"* CAPABILITY " + CAPABILITIES_BEFORE_LOGIN.encode()]
        untagged, done = wire.command(f'LOGIN "{gmail.user}" "{gmail.password}"')
        assert done == f"t2 OK {gmail.user} authenticated (Success)".encode()
        after = CAPABILITIES.format(limit=35651584).encode()
        assert untagged == [b"* CAPABILITY " + after]
    assert after.endswith(b"LITERAL- SPECIAL-USE APPENDLIMIT=35651584")
    assert b"X-GM-EXT-1" in after and b"AUTH=" not in after


def test_app_password_login_and_refusals():
    with FakeGmail(account_password="the-account-password") as gmail:
        for password, answer in [
            ("wrong", "[AUTHENTICATIONFAILED] Invalid credentials (Failure)"),
            ("the-account-password", "Application-specific password required"),
        ]:
            with pytest.raises(LoginError, match=re.escape(answer)):
                IMAPClient(gmail.host, port=gmail.port, ssl=False).login(gmail.user, password)
        imap = IMAPClient(gmail.host, port=gmail.port, ssl=False)
        imap.login(gmail.user, gmail.password)
        imap.logout()
        assert [(m, u, s) for _, m, u, s in gmail.logins] == [("LOGIN", gmail.user, gmail.password)]


def test_xoauth2_and_oauthbearer_accept_the_configured_token_only():
    with FakeGmail() as gmail:
        imap = IMAPClient(gmail.host, port=gmail.port, ssl=False)
        imap.oauth2_login(gmail.user, TOKEN)  # no initial response: "+ " first
        imap.logout()
        imap = IMAPClient(gmail.host, port=gmail.port, ssl=False)
        imap.oauthbearer_login(gmail.user, TOKEN)
        imap.logout()
        for login in ("oauth2_login", "oauthbearer_login"):
            with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
                getattr(IMAPClient(gmail.host, port=gmail.port, ssl=False), login)(
                    gmail.user, "ya29.wrong"
                )
        with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
            IMAPClient(gmail.host, port=gmail.port, ssl=False).oauth2_login("bob@gmail.com", TOKEN)
        gmail.revoke_token(TOKEN)
        with pytest.raises(LoginError):
            IMAPClient(gmail.host, port=gmail.port, ssl=False).oauth2_login(gmail.user, TOKEN)
    assert [m for _, m, _, _ in gmail.logins] == ["XOAUTH2", "OAUTHBEARER"]
    assert {s for _, _, _, s in gmail.logins} == {TOKEN}


def test_a_refused_token_gets_googles_error_challenge_then_no():
    """[XOAUTH2]: SASL-IR initial response; the error as a base64 JSON challenge; the
    client's empty answer; then the failure."""
    with FakeGmail() as gmail:
        wire = Wire(gmail)
        wire.sock.sendall(f"a AUTHENTICATE XOAUTH2 {xoauth2(gmail.user, 'bad')}\r\n".encode())
        challenge = wire.line()
        assert challenge.startswith(b"+ ")
        error = base64.b64decode(challenge[2:])
        assert b'"status":"401"' in error and b"https://mail.google.com/" in error
        wire.sock.sendall(b"\r\n")
        assert wire.until(b"a")[1] == b"a NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"
        wire.sock.sendall(f"b AUTHENTICATE XOAUTH2 {xoauth2(gmail.user, TOKEN)}\r\n".encode())
        untagged, done = wire.until(b"b")
        assert done == b"b OK Success"  # [XOAUTH2]
        assert untagged[0].startswith(b"* CAPABILITY IMAP4rev1") and b"UIDPLUS" in untagged[0]
    with FakeGmail(xoauth2_error_challenge=False) as gmail:  # what some clients report
        wire = Wire(gmail)
        wire.sock.sendall(f"a AUTHENTICATE XOAUTH2 {xoauth2(gmail.user, 'bad')}\r\n".encode())
        assert wire.until(b"a")[1].startswith(b"a NO [AUTHENTICATIONFAILED]")


def test_commands_need_a_login():
    with FakeGmail() as gmail:
        wire = Wire(gmail)
        assert (
            wire.command("SELECT INBOX")[1] == b"t1 BAD Command not valid in this state (Failure)"
        )
        assert wire.command('LIST "" "*"')[1].startswith(b"t2 BAD")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_implicit_tls(tmp_path):
    context, cafile = make_tls_context(tmp_path)
    with FakeGmail(tls_context=context) as gmail:
        client_context = ssl.create_default_context(cafile=cafile)
        imap = IMAPClient("localhost", port=gmail.port, ssl=True, ssl_context=client_context)
        imap.oauth2_login(gmail.user, TOKEN)
        assert imap.select_folder("INBOX")[b"EXISTS"] == 0
        imap.logout()
        assert gmail.url("imaps", f"cafile={cafile}").startswith("imaps://alice%40gmail.com@")


def test_compress_deflate_both_ways():
    with FakeGmail() as gmail:
        gmail.deliver(mail(1))
        wire = Wire(gmail)
        wire.login(gmail)
        assert wire.command("COMPRESS DEFLATE")[1] == b"t2 OK Success"
        deflate, inflate = zlib.compressobj(wbits=-15), zlib.decompressobj(-15)
        wire.sock.sendall(
            deflate.compress(b"t3 SELECT INBOX\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH)
        )
        received = b""
        while b"t3 OK" not in received:
            received += inflate.decompress(wire.sock.recv(65536))
        assert b"* 1 EXISTS\r\n" in received
        assert b"t3 OK [READ-WRITE] INBOX selected. (Success)" in received


# -- folders and labels ---------------------------------------------------------------------


def test_gmails_folders_with_their_special_use_attributes():
    with FakeGmail(labels=("Work", "Work/2024")) as gmail:
        imap = client(gmail)
        listed = {name: set(flags) for flags, _, name in imap.list_folders()}
        assert listed == {
            "INBOX": {b"\\HasNoChildren"},
            "[Gmail]": {b"\\HasChildren", b"\\Noselect"},
            "[Gmail]/All Mail": {b"\\HasNoChildren", b"\\All"},
            "[Gmail]/Drafts": {b"\\HasNoChildren", b"\\Drafts"},
            "[Gmail]/Important": {b"\\HasNoChildren", b"\\Important"},
            "[Gmail]/Sent Mail": {b"\\HasNoChildren", b"\\Sent"},
            "[Gmail]/Spam": {b"\\HasNoChildren", b"\\Junk"},
            "[Gmail]/Starred": {b"\\HasNoChildren", b"\\Flagged"},
            "[Gmail]/Trash": {b"\\HasNoChildren", b"\\Trash"},
            "Work": {b"\\HasChildren"},
            "Work/2024": {b"\\HasNoChildren"},
        }
        assert imap.find_special_folder(b"\\All") == "[Gmail]/All Mail"
        with pytest.raises(IMAPClientError, match=r"NONEXISTENT\] Unknown Mailbox: \[Gmail\]"):
            imap.select_folder("[Gmail]")
        xlisted = {name: set(flags) for flags, _, name in imap.xlist_folders()}
        assert b"\\AllMail" in xlisted["[Gmail]/All Mail"] and b"\\Inbox" in xlisted["INBOX"]
        imap.logout()


def test_list_status_and_special_use_selection():
    """LIST-EXTENDED / LIST-STATUS as mailsync asks for them: one STATUS per folder."""
    with FakeGmail() as gmail:
        gmail.deliver(mail(1), labels=[INBOX, "Work"])
        wire = Wire(gmail)
        wire.login(gmail)
        untagged, done = wire.command(
            'LIST "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ))'
        )
        assert done == b"t2 OK Success"
        statuses = [line for line in untagged if line.startswith(b"* STATUS")]
        assert len(statuses) == len(untagged) - len(statuses) - 1  # all but [Gmail]
        work = gmail.folder("Work")
        assert (
            f'* STATUS "Work" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY {work.uidvalidity} '
            f"HIGHESTMODSEQ {work.highestmodseq})".encode()
            in statuses
        )
        untagged, _ = wire.command('LIST (SPECIAL-USE) "" "*"')
        assert len(untagged) == 7 and all(b"[Gmail]/" in line for line in untagged)


def test_localized_and_google_mail_names_keep_their_attributes():
    with FakeGmail(
        prefix="[Google Mail]", names={"trash": "Bin", "all": "Alle Nachrichten"}
    ) as gmail:
        imap = client(gmail)
        assert imap.find_special_folder(b"\\Trash") == "[Google Mail]/Bin"
        assert imap.find_special_folder(b"\\All") == "[Google Mail]/Alle Nachrichten"
        imap.logout()


def test_one_message_in_many_folders_one_msgid_same_bytes_own_uids():
    with FakeGmail() as gmail:
        gmail.deliver(mail(0), labels=["Work"])
        msg = gmail.deliver(mail(1), labels=[INBOX, "Work", "Muy Importante"], flags=["\\Flagged"])
        imap = client(gmail)
        seen = {}
        for folder in ("INBOX", "Work", "Muy Importante", "[Gmail]/Starred", "[Gmail]/All Mail"):
            info = imap.select_folder(folder, readonly=True)
            uid = imap.search(["X-GM-MSGID", str(msg.msgid)])
            assert len(uid) == 1, folder
            data = imap.fetch(uid, ["X-GM-MSGID", "X-GM-THRID", "BODY.PEEK[]", "RFC822.SIZE"])
            item = data[uid[0]]
            assert item[b"X-GM-MSGID"] == item[b"X-GM-THRID"] == msg.msgid
            assert item[b"BODY[]"] == mail(1) and item[b"RFC822.SIZE"] == len(mail(1))
            seen[folder] = (info[b"UIDVALIDITY"], uid[0])
        assert len({validity for validity, _ in seen.values()}) == 5  # each folder its own
        assert seen["Work"][1] == 2 and seen["INBOX"][1] == 1
        imap.select_folder("[Gmail]/Sent Mail")
        assert imap.search() == []
        imap.logout()
        assert gmail.body_downloads[msg.msgid] == 5  # counted per message, every download
        assert gmail.body_bytes[msg.msgid] == 5 * len(mail(1))
        assert [m.msgid for m in gmail.folder_messages("Work")] == [
            msg.msgid - 4294967311,
            msg.msgid,
        ]


def test_x_gm_labels_system_quoted_utf7_and_not_the_selected_folders():
    with FakeGmail() as gmail:
        msg = gmail.deliver(
            mail(1), labels=[INBOX, SENT, IMPORTANT, "Muy Importante", "Été", "foo"],
            flags=["\\Flagged"],
        )  # fmt: skip
        wire = Wire(gmail)
        wire.login(gmail)
        wire.command('EXAMINE "[Gmail]/All Mail"')
        untagged, done = wire.command("FETCH 1 (X-GM-LABELS)")
        assert untagged == [
            b'* 1 FETCH (X-GM-LABELS (\\Inbox \\Sent \\Important \\Starred "Muy Importante" '
            b"foo &AMk-t&AOk-))"
        ]
        assert done == b"t3 OK Success"
        wire.command("EXAMINE INBOX")  # [GMB]: the selected folder's label is left out
        assert wire.command("UID FETCH 1 (X-GM-LABELS)")[0] == [
            b'* 1 FETCH (UID 1 X-GM-LABELS (\\Sent \\Important \\Starred "Muy Importante" '
            b"foo &AMk-t&AOk-))"
        ]
        assert wire.command("ENABLE UTF8=ACCEPT")[0] == [b"* ENABLED UTF8=ACCEPT"]
        fetched = wire.command("UID FETCH 1 (X-GM-LABELS)")[0][0]
        assert '"Été"'.encode() in fetched
        assert gmail.labels_of(msg.msgid) == {
            INBOX, SENT, IMPORTANT, STARRED, "Muy Importante", "Été", "foo"
        }  # fmt: skip
    with FakeGmail(omit_selected_label=False) as gmail:
        gmail.deliver(mail(1))
        imap = client(gmail)
        imap.select_folder("INBOX")
        assert imap.get_gmail_labels([1]) == {1: ["\\Inbox"]}


def test_store_x_gm_labels_moves_the_message_between_folders():
    with FakeGmail() as gmail:
        msg = gmail.deliver(mail(1), labels=[INBOX, "Work"])
        imap = client(gmail)
        imap.select_folder("[Gmail]/All Mail")
        assert imap.add_gmail_labels([1], ["foo bar", "\\Starred"]) == {
            1: ["\\Inbox", "\\Starred", "Work", "foo bar"]
        }
        assert "foo bar" in [name for _, _, name in imap.list_folders()]  # created
        assert gmail.message(msg.msgid).flags == {"\\Flagged"}  # a star is the flag
        imap.remove_gmail_labels([1], ["Work"])
        assert gmail.folder_messages("Work") == []
        imap.add_gmail_labels([1], ["work"])  # labels are case-insensitive
        assert gmail.uid("Work", msg.msgid) == 2  # back in the folder, with a new UID
        imap.set_gmail_labels([1], ["\\Important"])
        assert gmail.labels_of(msg.msgid) == {IMPORTANT, STARRED}
        wire = Wire(gmail)
        wire.login(gmail)
        wire.command('SELECT "[Gmail]/All Mail"')
        assert wire.command("UID STORE 1 +X-GM-LABELS.SILENT (\\Inbox)") == (
            [], b"t3 OK STORE (Success)"
        )  # fmt: skip
        assert INBOX in gmail.labels_of(msg.msgid)
        imap.logout()


def test_create_rename_delete_labels():
    with FakeGmail() as gmail:
        msg = gmail.deliver(mail(1), labels=["Old/Child"])
        imap = client(gmail)
        with pytest.raises(IMAPClientError, match=r"\[ALREADYEXISTS\]"):
            imap.create_folder("old/child")
        with pytest.raises(IMAPClientError, match=r"\[CANNOT\] Folder contains excess whitespace"):
            imap.create_folder(" padded")
        imap.create_folder("A/B")
        assert {"A", "A/B"} <= {name for _, _, name in imap.list_folders()}
        imap.rename_folder("Old", "New")
        assert gmail.labels_of(msg.msgid) == {"New/Child"}
        imap.delete_folder("New/Child")
        assert gmail.labels_of(msg.msgid) == set()
        assert [m.msgid for m in gmail.folder_messages("[Gmail]/All Mail")] == [msg.msgid]
        with pytest.raises(IMAPClientError, match="CANNOT"):
            imap.delete_folder("[Gmail]/Trash")
        imap.logout()


# -- deleting, copying, moving ------------------------------------------------------------


def test_deleting_in_inbox_archives_and_the_expunge_comes_later():
    """[SYNC] "Delete a message in inbox: remove the message from inbox"; with Gmail's
    Auto-Expunge the label goes at once, and RFC 3501 keeps the EXPUNGE out of STORE."""
    with FakeGmail() as gmail:
        msg = gmail.deliver(mail(1), labels=[INBOX, "Work"])
        wire = Wire(gmail)
        wire.login(gmail)
        wire.command("SELECT INBOX")
        untagged, _ = wire.command("UID STORE 1 +FLAGS (\\Deleted)")
        assert untagged == [b"* 1 FETCH (UID 1 FLAGS (\\Deleted))"]
        assert gmail.labels_of(msg.msgid) == {"Work"}
        assert wire.command("UID FETCH 1:* (FLAGS)")[0] == []  # still known, not sent
        assert wire.command("NOOP")[0] == [b"* 1 EXPUNGE"]
        assert gmail.uid("[Gmail]/All Mail", msg.msgid) == 1  # not deleted


def test_without_auto_expunge_the_label_goes_at_expunge():
    with FakeGmail(auto_expunge=False) as gmail:
        msg = gmail.deliver(mail(1), labels=[INBOX])
        imap = client(gmail)
        imap.select_folder("INBOX")
        imap.add_flags([1], ["\\Deleted"])
        assert gmail.labels_of(msg.msgid) == {INBOX}
        imap.select_folder("[Gmail]/All Mail")
        assert imap.get_flags([1]) == {1: ()}  # \Deleted is INBOX's, not the message's
        imap.select_folder("INBOX")
        assert imap.get_flags([1]) == {1: (b"\\Deleted",)}
        assert imap.expunge()[1] == [(1, b"EXPUNGE")]
        assert gmail.labels_of(msg.msgid) == set()


@pytest.mark.parametrize(
    "behavior, labels, in_trash, exists",
    [("archive", {"Work"}, False, True), ("trash", {TRASH}, True, True),
     ("delete_forever", None, False, False)],
)  # fmt: skip
def test_expunge_in_all_mail_does_what_the_setting_says(behavior, labels, in_trash, exists):
    """[SETTINGS]: "Archive the message" is Gmail's default: an expunge in All Mail does
    not delete (imapsync's FAQ, sweetrb/apple-mail-mcp#88)."""
    with FakeGmail(expunge_behavior=behavior) as gmail:
        msg = gmail.deliver(mail(1), labels=[INBOX, "Work"])
        imap = client(gmail)
        imap.select_folder("[Gmail]/All Mail")
        imap.delete_messages([1])
        imap.noop()
        assert (msg.msgid in gmail.messages) == exists
        if exists:
            assert gmail.labels_of(msg.msgid) == labels
        assert bool(gmail.folder_messages("[Gmail]/Trash")) == in_trash
        imap.logout()


def test_with_all_mail_hidden_the_last_label_decides():
    with FakeGmail(show_all_mail=False, expunge_behavior="trash") as gmail:
        msg = gmail.deliver(mail(1), labels=[INBOX, "Work"])
        imap = client(gmail)
        assert "[Gmail]/All Mail" not in [name for _, _, name in imap.list_folders()]
        imap.select_folder("INBOX")
        imap.delete_messages([1])
        assert gmail.labels_of(msg.msgid) == {"Work"}  # still visible in Work
        imap.select_folder("Work")
        imap.delete_messages([1])
        assert gmail.labels_of(msg.msgid) == {TRASH}  # it left its last visible folder
        imap.logout()


def test_trash_and_spam_hide_the_message_and_delete_forever():
    with FakeGmail() as gmail:
        msg = gmail.deliver(mail(1), labels=[INBOX, "Work"], flags=["\\Flagged"])
        imap = client(gmail)
        imap.select_folder("Work")
        imap.move([1], "[Gmail]/Trash")  # [YZ]: it leaves every other folder
        for folder in ("INBOX", "Work", "[Gmail]/Starred", "[Gmail]/All Mail"):
            assert gmail.folder_messages(folder) == [], folder
        imap.select_folder("[Gmail]/Trash")
        assert imap.get_gmail_labels([1]) == {1: ["\\Starred"]}
        imap.move([1], "INBOX")  # out of the Trash again
        assert gmail.labels_of(msg.msgid) == {INBOX, STARRED}
        imap.select_folder("INBOX")
        assert imap.search() == [2]  # back in INBOX with a new UID [PHP]
        imap.copy([2], "[Gmail]/Spam")
        assert gmail.folder_messages("INBOX") == []
        imap.select_folder("[Gmail]/Spam")
        imap.delete_messages([1])  # [SYNC]: deleted from Spam or Trash = forever
        assert msg.msgid not in gmail.messages
        imap.logout()


def test_copy_adds_labels_and_move_takes_the_sources_away_with_copyuid():
    with FakeGmail() as gmail:
        msg = gmail.deliver(mail(1), labels=[INBOX])
        wire = Wire(gmail)
        wire.login(gmail)
        wire.command("SELECT INBOX")
        work = gmail.create_label("Work")
        _, done = wire.command('UID COPY 1 "Work"')
        assert done == f"t3 OK [COPYUID {work.uidvalidity} 1 1] (Success)".encode()
        wire.command('UID COPY 1 "[Gmail]/Starred"')
        assert gmail.labels_of(msg.msgid) == {INBOX, "Work", STARRED}
        untagged, done = wire.command('UID MOVE 1 "[Gmail]/Important"')
        important = gmail.folder("[Gmail]/Important")
        assert untagged == [f"* OK [COPYUID {important.uidvalidity} 1 1] (Success)".encode(),
                            b"* 1 EXPUNGE"]  # fmt: skip
        assert done == b"t5 OK Success"
        assert gmail.labels_of(msg.msgid) == {"Work", STARRED, IMPORTANT}
        wire.command('SELECT "[Gmail]/All Mail"')
        untagged, _ = wire.command('UID MOVE 1 "[Gmail]/Sent Mail"')
        assert b"EXPUNGE" not in b"".join(untagged)  # nothing leaves All Mail
        assert SENT in gmail.labels_of(msg.msgid)
        assert wire.command('UID COPY 1 "Nowhere"')[1].startswith(b"t8 NO [TRYCREATE]")


# -- uploads ---------------------------------------------------------------------------------


def test_append_once_then_labels_with_uid_store():
    """The upload mailsync will do (issue 12): one APPEND, then UID STORE +X-GM-LABELS on
    the APPENDUID [PEERS: gmvault restores this way]."""
    with FakeGmail() as gmail:
        imap = client(gmail)
        answer = imap.append("[Gmail]/All Mail", mail(1), ["\\Seen"])
        all_mail = gmail.folder("[Gmail]/All Mail")
        assert answer == f"[APPENDUID {all_mail.uidvalidity} 1] (Success)".encode()
        imap.select_folder("[Gmail]/All Mail")
        imap.add_gmail_labels([1], ["\\Inbox", "Work", "Two words", "\\Sent"], silent=True)
        (msg,) = gmail.messages.values()
        assert gmail.labels_of(msg.msgid) == {INBOX, SENT, "Work", "Two words"}
        assert msg.flags == {"\\Seen"} and msg.body == mail(1)
        for folder in ("INBOX", "Work", "Two words", "[Gmail]/Sent Mail"):
            assert gmail.folder_messages(folder) == [msg]
        imap.logout()


def test_append_to_a_folder_gives_its_label_and_a_duplicate_adds_only_the_label():
    """[IMAPSYNC]: Gmail accepts a duplicate APPEND (same Message-ID) and keeps one copy."""
    with FakeGmail() as gmail:
        imap = client(gmail)
        imap.append("[Gmail]/Drafts", mail(1))
        imap.append("[Gmail]/Starred", mail(2))
        (draft, starred) = gmail.messages.values()
        assert gmail.labels_of(draft.msgid) == {DRAFT}
        assert gmail.labels_of(starred.msgid) == {STARRED}
        work = gmail.create_label("Work")
        answer = imap.append("Work", mail(1))
        assert answer == f"[APPENDUID {work.uidvalidity} 1] (Success)".encode()
        assert len(gmail.messages) == 2 and gmail.labels_of(draft.msgid) == {DRAFT, "Work"}
        imap.logout()
    with FakeGmail(dedupe_appends=False) as gmail:
        imap = client(gmail)
        imap.append("INBOX", mail(1))
        imap.append("INBOX", mail(1))
        assert len(gmail.messages) == 2


def test_an_append_over_the_limit_is_refused_before_the_literal():
    """[TOOBIG]: BAD [TOOBIG] instead of the continuation; the session goes on."""
    with FakeGmail(append_limit=1000) as gmail:
        wire = Wire(gmail)
        wire.login(gmail)
        untagged, done = wire.command("APPEND INBOX {1001}")
        assert untagged == [] and done == (
            b"t2 BAD [TOOBIG] Message too large. https://support.google.com/mail/answer/6584#limit"
        )
        assert wire.command("NOOP")[1] == b"t3 OK Success"
        assert b"APPENDLIMIT=1000" in wire.command("CAPABILITY")[0][0]
        imap = client(gmail)
        with pytest.raises(IMAPClientError, match="TOOBIG"):
            imap.append("INBOX", b"x" * 1001)
        assert gmail.messages == {}
        imap.append("INBOX", mail(1))
        assert len(gmail.messages) == 1


def test_literal_minus_refuses_a_big_non_synchronizing_literal():
    with FakeGmail() as gmail:
        wire = Wire(gmail)
        wire.login(gmail)
        wire.sock.sendall(b"a APPEND INBOX {5000+}\r\n")
        line = wire.line()
        assert line.startswith(b"a BAD")
        assert wire.line() == b""  # and it hangs up: it cannot tell data from commands
        wire = Wire(gmail)
        wire.login(gmail)
        wire.sock.sendall(b"a APPEND INBOX {" + str(len(mail(1))).encode() + b"+}\r\n" + mail(1))
        wire.sock.sendall(b"\r\n")
        assert wire.until(b"a")[1].startswith(b"a OK [APPENDUID")


# -- reading --------------------------------------------------------------------------------


def test_body_sections_peek_and_seen():
    with FakeGmail() as gmail:
        msg = gmail.deliver(mail(1, extra="X-Other: 1\r\n"))
        imap = client(gmail)
        imap.select_folder("INBOX")
        data = imap.fetch([1], ["BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)]", "BODY.PEEK[TEXT]"])
        item = data[1]
        assert item[b"BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID)]"] == (
            b"Message-ID: <m1@example.org>\r\nSubject: message 1\r\n\r\n"
        )
        assert item[b"BODY[TEXT]"] == b"body of message 1\r\n"
        assert imap.fetch([1], ["BODY.PEEK[]<5.10>"])[1][b"BODY[]<5>"] == mail(1)[5:15]
        assert gmail.body_downloads[msg.msgid] == 0  # sections and ranges are not downloads
        assert msg.flags == set()
        assert imap.fetch([1], ["RFC822"])[1][b"FLAGS"] == (b"\\Seen",)  # not a PEEK
        assert gmail.body_downloads[msg.msgid] == 1
        imap.logout()


def test_search_gmail_keys_and_esearch():
    with FakeGmail() as gmail:
        first = gmail.deliver(mail(1), labels=[INBOX, "Work"], flags=["\\Seen"])
        second = gmail.deliver(mail(2, "Hello there"), labels=["Work"], thread=first)
        gmail.deliver(mail(3), labels=[INBOX])
        imap = client(gmail)
        imap.select_folder("[Gmail]/All Mail")
        assert imap.search(["X-GM-MSGID", str(second.msgid)]) == [2]
        assert imap.search(["X-GM-THRID", str(first.msgid)]) == [1, 2]
        assert imap.search(["X-GM-LABELS", "Work"]) == [1, 2]
        assert imap.search(["X-GM-LABELS", "Nothing"]) == []
        assert "Nothing" not in [name for _, _, name in imap.list_folders()]
        assert imap.gmail_search("in:inbox is:unread") == [3]
        assert imap.gmail_search("label:work hello") == [2]
        assert imap.gmail_search("rfc822msgid:m3@example.org") == [3]
        assert imap.search(["SUBJECT", "hello"]) == [2]
        assert imap.search(["NOT", "SEEN", "UID", "2:*"]) == [2, 3]
        assert imap.search(["OR", "UID", "1", "UID", "3"]) == [1, 3]
        wire = Wire(gmail)
        wire.login(gmail)
        wire.command('EXAMINE "[Gmail]/All Mail"')
        untagged, _ = wire.command("UID SEARCH RETURN (ALL COUNT) X-GM-LABELS Work")
        assert untagged == [b'* ESEARCH (TAG "t3") UID ALL 1:2 COUNT 2']
        imap.logout()


def test_condstore_highestmodseq_and_changedsince():
    with FakeGmail() as gmail:
        msg = gmail.deliver(mail(1), labels=[INBOX])
        gmail.deliver(mail(2), labels=[INBOX])
        imap = client(gmail)
        imap.enable("CONDSTORE")
        modseq = imap.select_folder("INBOX")[b"HIGHESTMODSEQ"]
        assert imap.fetch([1, 2], ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseq}"]) == {}
        imap.select_folder("[Gmail]/All Mail")
        imap.add_gmail_labels([1], ["Work"])  # a label change is a change
        status = imap.folder_status("INBOX", ["HIGHESTMODSEQ"])
        assert status[b"HIGHESTMODSEQ"] > modseq
        imap.select_folder("INBOX")
        changed = imap.fetch([1, 2], ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseq}"])
        assert list(changed) == [1] and changed[1][b"MODSEQ"] == (msg.modseq,)
        assert imap.search(["MODSEQ", str(modseq + 1)]) == [1]
        imap.logout()


def test_other_sessions_hear_of_changes_when_rfc_3501_allows():
    with FakeGmail() as gmail:
        gmail.deliver(mail(1))
        gmail.deliver(mail(2))
        watcher = Wire(gmail)
        watcher.login(gmail)
        watcher.command("SELECT INBOX")
        imap = client(gmail)
        imap.select_folder("INBOX")
        imap.delete_messages([1])
        gmail.deliver(mail(3))
        untagged, _ = watcher.command("FETCH 1:* (UID)")
        assert untagged == [b"* 3 EXISTS", b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)"]
        assert watcher.command("SEARCH ALL")[0] == [b"* SEARCH 2 3"]  # old numbers still
        assert watcher.command("STORE 3 +FLAGS (\\Seen)")[0] == [b"* 3 FETCH (FLAGS (\\Seen))"]
        assert watcher.command("NOOP")[0] == [b"* 1 EXPUNGE"]
        assert watcher.command("SEARCH ALL")[0] == [b"* SEARCH 1 2"]
        imap.logout()


def test_idle_reports_new_mail():
    with FakeGmail() as gmail:
        imap = client(gmail)
        imap.select_folder("INBOX")
        imap.idle()
        gmail.deliver(mail(1))
        responses = imap.idle_check(timeout=10)
        imap.idle_done()
        assert (1, b"EXISTS") in responses
        imap.logout()


# -- Gmail's limits and faults ----------------------------------------------------------------


def test_the_download_limit_refuses_bodies_with_overquota():
    """[LIMITS]: 2500 MB a day at Gmail; here a few messages' worth."""
    with FakeGmail(download_limit=2 * len(mail(1))) as gmail:
        for n in range(1, 4):
            gmail.deliver(mail(n))
        imap = client(gmail)
        imap.select_folder("INBOX")
        assert len(imap.fetch([1, 2], ["BODY.PEEK[]"])) == 2
        assert imap.fetch([3], ["FLAGS"])  # metadata is not counted
        with pytest.raises(IMAPClientError, match=r"\[OVERQUOTA\] Account exceeded command or"):
            imap.fetch([3], ["BODY.PEEK[]"])
        assert gmail.body_bytes_total == 2 * len(mail(1))


def test_session_expired_and_faults():
    def fault(server, connection, command, args):
        if connection == 1 and command == "UID FETCH":
            return "expire"
        if connection == 2 and command == "UID FETCH":
            return "drop_in_body"
        return None

    with FakeGmail(fault=fault) as gmail:
        gmail.deliver(mail(1))
        for connection in (1, 2):
            wire = Wire(gmail)
            wire.login(gmail)
            wire.command("SELECT INBOX")
            wire.sock.sendall(b"a UID FETCH 1 (BODY.PEEK[])\r\n")
            received = wire.file.read()
            if connection == 1:
                assert received == b"* BYE Session expired, please login again.\r\n"
            else:
                assert received.startswith(b"* 1 FETCH (BODY[] {")
                assert len(received) < len(mail(1)) + 30
        wire = Wire(gmail)
        wire.login(gmail)
        gmail.expire_session(3)
        assert wire.file.read() == b"* BYE Session expired, please login again.\r\n"
