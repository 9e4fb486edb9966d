"""What an IMAP server will not take: folders it cannot hold (said by --dry-run as the real
run finds), and messages it refuses on APPEND (tests/imap/fakeimap.py for the response
codes Dovecot does not send; test_imap_refused_dovecot.py for Dovecot itself)."""

from __future__ import annotations

from fakeimap import FakeIMAPServer
from imaptools import message, run, write_local

PASSWORD = "secret"


class DotServer(FakeIMAPServer):
    """A server whose hierarchy delimiter is '.' (Courier, Cyrus)."""

    def _cmd_list(self, send, tag, session, args, action):
        for name in self.mailboxes:
            send(f'* LIST (\\HasNoChildren) "." "{name}"\r\n')
        send(f"{tag} OK list done\r\n")


def test_dry_run_names_a_folder_the_server_cannot_create(mailenv):
    local = mailenv / "local"
    for folder in ("INBOX", "Lists.python", "Sent"):
        write_local(local, folder, message(1, folder))
    with DotServer() as fake:
        dry = run("push", "--dry-run", f"maildir:{local}", fake.url(), password=PASSWORD)
        assert dry.exit_code == 1, dry.output
        assert (
            "Lists.python: cannot be created on the remote side: "
            f"imap://fake@{fake.host}:{fake.port}: folder name 'Lists.python' contains '.'"
        ) in dry.stderr
        assert "Sent: would be created on the remote side" in dry.stdout
        assert not any(c.startswith(("CREATE", "APPEND")) for c in fake.commands())
        real = run("push", f"maildir:{local}", fake.url(), password=PASSWORD)
        assert real.exit_code == 1
        assert "Lists.python" in real.stderr and "contains '.'" in real.stderr
        assert sorted(fake.mailboxes) == ["INBOX", "Sent"]
