"""OAuth2 logins against the scripted Microsoft 365 (fakem365.py): it offers XOAUTH2 only
(with SASL-IR), answers a refused token with a bare NO, and ends a session whose token
expired with ``* BYE Session invalidated - AccessTokenExpired``.  mailsync runs as a user
runs it, with a token_command and auth = "auto"."""

from __future__ import annotations

from fakem365 import FakeM365
from imaptools import run
from servers.oauth import oauth_server as oauth_server_fixture  # noqa: F401  (a fixture)


def mail(n: int) -> bytes:
    return (
        f"From: a@example.org\r\nSubject: {n}\r\nMessage-ID: <{n}@x>\r\n\r\nbody {n}\r\n".encode()
    )


def numbered_tokens(tmp_path) -> str:
    """A token_command printing tok-1, tok-2, ... on its successive runs (URL-encoded,
    for the store URL's query)."""
    script = tmp_path / "token.sh"
    count = tmp_path / "count"
    script.write_text(
        f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; echo tok-$n\n"
    )
    return f"sh%20{script}"


def local_bodies(root) -> list[bytes]:
    return sorted(p.read_bytes() for p in (root / "INBOX").glob("*/*") if p.is_file())


def test_a_pull_with_token_command_and_auth_auto_logs_in_with_xoauth2(mailenv, tmp_path):
    with FakeM365({"INBOX": [mail(1), mail(2)]}, tokens={"tok-1"}) as server:
        url = server.url("imap", f"tls=none&token_command={numbered_tokens(tmp_path)}")
        assert "alice@corp.example@" in url  # the user has an @; the host is after the last
        result = run("-vv", "pull", url, tmp_path / "Mail")
        assert result.exit_code == 0, result.output
        assert [(user, token) for _, user, token in server.logins] == [(server.user, "tok-1")]
        # XOAUTH2 (all Exchange offers), the initial response with the command (SASL-IR).
        logins = [line for line in server.commands() if line.startswith("AUTHENTICATE")]
        assert logins and all(
            line.split()[1] == "XOAUTH2" and len(line.split()) == 3 for line in logins
        )
        assert "LOGIN" not in " ".join(server.commands())
    assert len(local_bodies(tmp_path / "Mail")) == 2
    assert "tok-1" not in result.output


def test_a_refused_token_is_exit_3_after_one_more_token(mailenv, tmp_path):
    with FakeM365({"INBOX": [mail(1)]}, tokens={"tok-9"}) as server:
        url = server.url("imap", f"tls=none&token_command={numbered_tokens(tmp_path)}")
        result = run("pull", url, tmp_path / "Mail")
        assert result.exit_code == 3, result.output
        assert "refused a fresh OAuth2 token" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert server.logins == []
        assert len([c for c in server.commands() if c.startswith("AUTHENTICATE")]) == 2
    assert (tmp_path / "count").read_text().strip() == "2"  # one token, one renewal


def test_a_session_ended_for_an_expired_token_reconnects_with_a_new_one(mailenv, tmp_path):
    """Exchange ends a session whose token expired at its next command; the reconnect
    logs in with a new token (token_command runs again) and the run completes."""
    expired = []

    def expire_at_select(server, number, command, args):
        if command in ("SELECT", "EXAMINE") and not expired:
            expired.append(number)
            server.expire_token("tok-1")
        return None

    with FakeM365(
        {"INBOX": [mail(1), mail(2)]}, tokens={"tok-1", "tok-2"}, fault=expire_at_select
    ) as server:
        url = server.url("imap", f"tls=none&token_command={numbered_tokens(tmp_path)}")
        result = run("pull", "--jobs", "1", url, tmp_path / "Mail")
        assert result.exit_code == 0, result.output
        assert expired
        assert [token for _, _, token in server.logins] == ["tok-1", "tok-2"]
    assert len(local_bodies(tmp_path / "Mail")) == 2


class WithoutSaslIR(FakeM365):
    """Exchange as an older server would be: no SASL-IR, so AUTHENTICATE XOAUTH2 alone,
    the server's empty challenge ("+ "), then the initial response."""

    def _caps(self, session) -> str:
        return super()._caps(session).replace(" SASL-IR", "")


def test_without_sasl_ir_the_initial_response_follows_the_empty_challenge(mailenv, tmp_path):
    with WithoutSaslIR({"INBOX": [mail(1)]}, tokens={"tok-1"}) as server:
        url = server.url("imap", f"tls=none&token_command={numbered_tokens(tmp_path)}")
        result = run("pull", url, tmp_path / "Mail")
        assert result.exit_code == 0, result.output
        logins = [line.split() for line in server.commands() if line.startswith("AUTHENTICATE")]
        assert logins == [["AUTHENTICATE", "XOAUTH2"]]
        assert [token for _, _, token in server.logins] == ["tok-1"]
    assert len(local_bodies(tmp_path / "Mail")) == 1


def test_gmail_takes_oauthbearer_with_auth_auto_and_xoauth2_when_asked(mailenv, tmp_path):
    """FakeGmail offers both mechanisms: auto picks OAUTHBEARER (the standard), auth =
    xoauth2 insists on XOAUTH2; either way the password is never asked for."""
    from fakegmail import FakeGmail

    with FakeGmail(tokens={"tok-1", "tok-2"}) as gmail:
        gmail.deliver(mail(1))
        command = numbered_tokens(tmp_path)
        auto = run(
            "pull",
            "--folders",
            "INBOX",
            gmail.url("imap", f"tls=none&token_command={command}"),
            tmp_path / "A",
        )
        assert auto.exit_code == 0, auto.output
        url = gmail.url("imap", f"tls=none&auth=xoauth2&token_command={command}")
        chosen = run("pull", "--folders", "INBOX", url, tmp_path / "B")
        assert chosen.exit_code == 0, chosen.output
        assert [(mechanism, secret) for _, mechanism, _, secret in gmail.logins] == [
            ("OAUTHBEARER", "tok-1"),
            ("XOAUTH2", "tok-2"),
        ]
    assert len(local_bodies(tmp_path / "A")) == len(local_bodies(tmp_path / "B")) == 1


def test_gmail_refusing_a_token_with_its_error_challenge_is_exit_3_without_a_hang(
    mailenv, tmp_path
):
    from fakegmail import FakeGmail

    with FakeGmail(tokens={"tok-9"}) as gmail:
        url = gmail.url("imap", f"tls=none&auth=xoauth2&token_command={numbered_tokens(tmp_path)}")
        result = run("pull", url, tmp_path / "Mail")
        assert result.exit_code == 3, result.output
        assert (
            "(status 401, scope https://mail.google.com/)" in result.stderr
        )  # the challenge, read
        assert gmail.logins == []
    assert (tmp_path / "count").read_text().strip() == "2"


def test_a_reconnect_in_a_long_run_refreshes_the_expired_token_and_saves_the_rotation(
    mailenv,
    tmp_path,
    oauth_server_fixture,  # noqa: F811  (the fixture imported above)
):
    """A saved sign-in (oauth2 = "custom", the tests' authorization server) whose access
    token Exchange ends mid-run: the session gets AccessTokenExpired, the reconnect offers
    the token it holds, gets a bare NO, refreshes once, logs in again, and the rotated
    refresh token is saved."""
    from mailsync.token_store import TokenStore

    oauth_server = oauth_server_fixture
    client = oauth_server.add_client()
    access, refresh = oauth_server.issue("alice@corp.example", client)
    token_dir = mailenv / "state" / "mailsync" / "tokens"
    TokenStore("m365", str(token_dir), keyring=None).save(
        {
            "client_id": client.client_id,
            "token_url": oauth_server.token_url,
            "scope": "mail",
            "refresh_token": refresh,
            "access_token": access,
            "expires_at": oauth_server.grants[access].expires_at,
        }
    )

    class LiveTokens(set):
        """What the authorization server says is live (and Exchange has not ended)."""

        def __contains__(self, token):
            return oauth_server.valid(token) is not None and not set.__contains__(self, token)

    ended = []

    def end_token_at_select(server, number, command, args):
        if command in ("SELECT", "EXAMINE") and not ended:
            ended.append(number)
            oauth_server.expire(access)
            server.expired_tokens.add(access)
        return None

    with FakeM365({"INBOX": [mail(1), mail(2)]}, fault=end_token_at_select) as server:
        server.tokens = LiveTokens()
        config = tmp_path / "config.toml"
        config.write_text(
            f'[store.m365]\nurl = "{server.url("imap", "")}"\ntls = "none"\n'
            f'oauth2 = "custom"\nclient_id = "{client.client_id}"\n'
            f'token_url = "{oauth_server.token_url}"\nscope = "mail"\n'
            f'device_url = "{oauth_server.device_url}"\n'
            f'[store.backup]\nurl = "maildir:{tmp_path / "Mail"}"\n'
            '[channel.m365]\nremote = "m365"\nlocal = "backup"\ndirection = "pull"\n'
        )
        result = run("--config", config, "pull", "--jobs", "1", "m365")
        assert result.exit_code == 0, result.output
        assert ended
        tokens = [token for _, _, token in server.logins]
    assert tokens[0] == access and len(tokens) == 2 and tokens[1] != access
    assert len(oauth_server.grants_of("refresh_token")) >= 1
    saved = TokenStore("m365", str(token_dir), keyring=None).load()
    assert saved["access_token"] == tokens[1]
    assert saved["refresh_token"] != refresh and oauth_server.valid(refresh) is None
    assert len(local_bodies(tmp_path / "Mail")) == 2
