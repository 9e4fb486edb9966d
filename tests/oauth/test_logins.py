"""OAuth2 logins through the command line, as a user runs them: ``mailsync login STORE``
by each grant, then ``mailsync pull`` over IMAP and POP3 with XOAUTH2 and OAUTHBEARER,
against the real Dovecot whose oauth2 passdb asks the tests' authorization server
(tests/servers/oauth.py) about every token."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsync.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

STORE = "work"


def message(n: int) -> bytes:
    return (
        f"From: a@example.com\r\nTo: b@example.com\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@example.com>\r\n\r\nbody {n}\r\n"
    ).encode()


def seed(server, user, count: int) -> None:
    """`count` messages in the user's INBOX (seeded with the user's password)."""
    with server.imap(user) as imap:
        for n in range(1, count + 1):
            imap.append("INBOX", message(n))


def local_messages(root: Path) -> list[bytes]:
    return sorted(p.read_bytes() for p in (root / "INBOX").glob("*/*") if p.is_file())


def toml_value(value) -> str:
    return json.dumps(value)  # a JSON string or list is a TOML string or array


def write_config(home: Path, server, user, scheme: str, **options) -> Path:
    """A config with [store.work] (SCHEME at the oauth2 Dovecot) and [store.backup] (a
    Maildir) and [channel.work] pulling one into the other."""
    lines = [f"[store.{STORE}]", f"url = {toml_value(server.url(scheme, user))}"]
    lines.append(f"cafile = {toml_value(str(server.cafile))}")
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    lines += [
        "[store.backup]",
        f"url = {toml_value('maildir:' + str(home / 'Mail'))}",
        f"[channel.{STORE}]",
        f'remote = "{STORE}"',
        'local = "backup"',
        'direction = "pull"',
    ]
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def custom(oauth_server, client, **extra) -> dict:
    """The store options of a custom provider: the tests' authorization server."""
    return {
        "oauth2": "custom",
        "client_id": client.client_id,
        "token_url": oauth_server.token_url,
        "device_url": oauth_server.device_url,
        "authorize_url": oauth_server.authorize_url,
        "scope": "mail",
        **extra,
    }


def run(config: Path, *args: str):
    """mailsync in-process, stdout and stderr apart."""
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False, env={})


def login_process(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mailsync", "--config", str(config), "login", STORE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen, pattern: str) -> re.Match:
    """The first stdout line of `proc` matching `pattern` (the login's instructions)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    proc.wait(timeout=30)
    raise AssertionError(f"no {pattern!r} in {seen!r}; stderr {proc.stderr.read()!r}")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def introspected(oauth_server) -> list[str]:
    """The tokens Dovecot asked the authorization server about, in order."""
    return [r.fields["token"] for r in oauth_server.requests if r.path == "/introspect"]


def saved(token_dir: str) -> dict:
    path = Path(token_dir) / f"{STORE}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    return json.loads(path.read_text())


def sign_in(oauth_server, client, user, token_dir: str) -> tuple[str, str]:
    """Save a sign-in of `user` as `mailsync login` would have (tokens issued by the
    server as if the user had approved): (access token, refresh token)."""
    from mailsync.token_store import TokenStore

    access, refresh = oauth_server.issue(user.name, client)
    TokenStore(STORE, token_dir, keyring=None).save(
        {
            "client_id": client.client_id,
            "token_url": oauth_server.token_url,
            "scope": "mail",
            "refresh_token": refresh,
            "access_token": access,
            "expires_at": oauth_server.grants[access].expires_at,
        }
    )
    return access, refresh


# -- mailsync login by each grant, then a pull ---------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "auth"),
    [
        ("imaps", "xoauth2"),
        ("imaps", "oauthbearer"),
        ("pop3s", "xoauth2"),
        ("pop3s", "oauthbearer"),
    ],
)
def test_device_login_then_pull_with_each_mechanism(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, token_dir, scheme, auth
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    seed(server, user, 3)
    client = oauth_server.add_client()
    config = write_config(mailenv, server, user, scheme, auth=auth, **custom(oauth_server, client))
    proc = login_process(config)
    code = read_until(proc, r"open (\S+) and enter the code (\S+)")
    assert code.group(1).startswith(oauth_server.base_url)
    oauth_server.approve_device(code.group(2), user.name)
    status, out, err = finish(proc)
    assert status == 0, err
    assert "signed in" in out
    record = saved(token_dir)
    assert oauth_server.valid(record["refresh_token"]).user == user.name

    result = run(config, "-vv", "pull", STORE)
    assert result.exit_code == 0, result.stderr
    assert f"logged in with an OAuth2 token ({auth.upper()})" in result.stderr
    assert local_messages(mailenv / "Mail") == sorted(
        message(n).replace(b"\r\n", b"\n") for n in (1, 2, 3)
    )
    # Dovecot checked the saved access token: the login used it, with the mechanism asked.
    assert introspected(oauth_server)[-1] == record["access_token"]


def test_browser_login_with_no_browser_prints_the_url_and_catches_the_redirect(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, token_dir
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    seed(server, user, 1)
    client = oauth_server.add_client()
    options = custom(oauth_server, client, grant="authorization_code")
    config = write_config(mailenv, server, user, "imaps", **options)
    proc = login_process(config, "--no-browser")
    url = read_until(proc, r"open this URL in a browser on this machine: (\S+)").group(1)
    assert url.startswith(oauth_server.authorize_url) and "code_challenge=" in url
    browser = oauth_server.browser(user.name)
    browser(url)
    status, out, err = finish(proc)
    assert status == 0, err
    assert "signed in" in out
    assert oauth_server.grants_of("authorization_code")
    saved(token_dir)
    result = run(config, "pull", STORE)
    assert result.exit_code == 0, result.stderr
    assert len(local_messages(mailenv / "Mail")) == 1


def test_client_credentials_need_no_sign_in_and_pull(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, token_dir, tmp_path
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    seed(server, user, 2)
    secret = "cs-" + os.urandom(8).hex()
    client = oauth_server.add_client(secret=secret, app_user=user.name)
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    options = custom(
        oauth_server,
        client,
        grant="client_credentials",
        client_secret_command=f"cat {secret_file}",
        auth="oauthbearer",
    )
    config = write_config(mailenv, server, user, "pop3s", **options)
    result = run(config, "login", STORE)
    assert result.exit_code == 0, result.stderr
    assert "no sign-in is needed" in result.stdout
    result = run(config, "-vv", "pull", "--json", STORE)
    assert result.exit_code == 0, result.stderr
    assert len(local_messages(mailenv / "Mail")) == 2
    assert secret not in result.stdout + result.stderr
    for token in introspected(oauth_server):
        assert token not in result.stdout + result.stderr
    assert not (Path(token_dir) / f"{STORE}.json").exists()  # nothing to keep


def test_token_command_logs_in_and_login_has_nothing_to_do(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, tmp_path
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    seed(server, user, 1)
    access, _ = oauth_server.issue(user.name, oauth_server.add_client())
    token_file = tmp_path / "token"
    token_file.write_text(access + "\n")
    config = write_config(mailenv, server, user, "imaps", token_command=f"cat {token_file}")
    result = run(config, "login", STORE)
    assert result.exit_code == 0 and "nothing to sign in to" in result.stdout
    result = run(config, "pull", STORE)
    assert result.exit_code == 0, result.stderr
    assert introspected(oauth_server)[-1] == access
    assert len(local_messages(mailenv / "Mail")) == 1
    listing = run(config, "list", STORE)  # the other commands that connect log in too
    assert listing.exit_code == 0 and listing.stdout.startswith("INBOX\t1\t"), listing.stderr
    verified = run(config, "verify", STORE)
    assert verified.exit_code == 0, verified.stdout + verified.stderr


# -- refresh, rotation, refusals -------------------------------------------------------------


def test_short_lived_tokens_are_refreshed_for_each_connection_and_rotations_saved(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, token_dir
):
    """Tokens that live less than the refresh margin are refreshed before every new
    connection (the folders' parallel connections, a second run), each rotation saved at
    once: the refresh token in the file is always the live one."""
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    with server.imap(user) as imap:
        for name in ("A", "B", "C"):
            imap.create_folder(name)
            imap.append(name, message(ord(name)))
    client = oauth_server.add_client(access_lifetime=60)
    _, first_refresh = sign_in(oauth_server, client, user, token_dir)
    config = write_config(mailenv, server, user, "imaps", **custom(oauth_server, client))
    before = len(oauth_server.grants_of("refresh_token"))
    result = run(config, "pull", "--jobs", "2", STORE)
    assert result.exit_code == 0, result.stderr
    refreshes = len(oauth_server.grants_of("refresh_token")) - before
    assert refreshes >= 2  # the first connection and at least one more
    record = saved(token_dir)
    assert oauth_server.valid(first_refresh) is None  # rotated away
    assert oauth_server.valid(record["refresh_token"]) is not None
    # Between runs: the saved (rotated) refresh token carries on.
    result = run(config, "pull", STORE)
    assert result.exit_code == 0, result.stderr
    assert saved(token_dir)["refresh_token"] != record["refresh_token"]


def test_an_access_token_the_server_refuses_is_refreshed_once_and_the_run_goes_on(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, token_dir
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    seed(server, user, 1)
    client = oauth_server.add_client()
    access, _ = sign_in(oauth_server, client, user, token_dir)
    oauth_server.expire(access)  # ended early: the saved expiry still says an hour
    config = write_config(mailenv, server, user, "imaps", **custom(oauth_server, client))
    result = run(config, "pull", STORE)
    assert result.exit_code == 0, result.stderr
    tokens = introspected(oauth_server)
    assert tokens[-2] == access and tokens[-1] == saved(token_dir)["access_token"] != access


@pytest.mark.parametrize("scheme", ["imaps", "pop3s"])
def test_a_revoked_sign_in_is_exit_3_telling_to_log_in_again(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, token_dir, scheme
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    client = oauth_server.add_client(access_lifetime=60)  # always refreshed first
    _, refresh = sign_in(oauth_server, client, user, token_dir)
    oauth_server.revoke(refresh)
    config = write_config(mailenv, server, user, scheme, **custom(oauth_server, client))
    result = run(config, "pull", "--json", STORE)
    assert result.exit_code == 3
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert f"run `mailsync login {STORE}`" in errors[0]
    assert refresh not in result.stdout + result.stderr


@pytest.mark.parametrize(("scheme", "auth"), [("imaps", "auto"), ("pop3s", "xoauth2")])
def test_a_wrong_token_is_exit_3_after_one_rerun_of_token_command(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, tmp_path, scheme, auth
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    runs = tmp_path / "runs"
    command = f"sh -c 'echo x >> {runs}; echo wrong-token-value'"
    config = write_config(mailenv, server, user, scheme, token_command=command, auth=auth)
    before = len(introspected(oauth_server))
    result = run(config, "pull", STORE)
    assert result.exit_code == 3, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "refused a fresh OAuth2 token" in result.stderr
    assert "wrong-token-value" not in result.stdout + result.stderr
    # One token, one rerun, and no more: no retry loop.
    assert runs.read_text().count("x") == 2
    assert introspected(oauth_server)[before:] == ["wrong-token-value"] * 2


@pytest.mark.parametrize("scheme", ["imaps", "pop3s"])
def test_nothing_secret_in_debug_output_stderr_or_json(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, token_dir, scheme
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    seed(server, user, 1)
    secret = "client-secret-" + os.urandom(6).hex()
    client = oauth_server.add_client(secret=secret, access_lifetime=60)
    _, first_refresh = sign_in(oauth_server, client, user, token_dir)
    options = custom(oauth_server, client, client_secret=secret)
    config = write_config(mailenv, server, user, scheme, **options)
    result = run(config, "-vv", "pull", "--json", STORE)
    assert result.exit_code == 0, result.stderr
    output = result.stdout + result.stderr
    assert ("AUTHENTICATE" if scheme == "imaps" else "AUTH") in output  # the log is there
    record = saved(token_dir)
    for secret_value in (
        secret,
        first_refresh,
        record["refresh_token"],
        record["access_token"],
        *introspected(oauth_server),
    ):
        assert secret_value not in output


# -- the connection ----------------------------------------------------------------------


def test_a_server_without_starttls_gets_no_token(mailenv, tmp_path):
    """A plain connection whose server offers no STARTTLS is refused before the token
    is even fetched: the token_command never runs, nothing reaches the server."""
    import socket
    import threading

    received = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        capabilities = b"CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR"  # no STARTTLS
        conn.sendall(b"* OK [" + capabilities + b"] ready\r\n")
        conn.settimeout(10)
        try:
            while data := conn.recv(65536):
                received.append(data)
                for line in filter(None, data.split(b"\r\n")):
                    tag, _, command = line.partition(b" ")
                    if command.upper() == b"CAPABILITY":
                        conn.sendall(b"* " + capabilities + b"\r\n" + tag + b" OK done\r\n")
                    elif command.upper() == b"LOGOUT":
                        conn.sendall(b"* BYE\r\n" + tag + b" OK bye\r\n")
                    else:
                        conn.sendall(tag + b" BAD not here\r\n")
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    marker = tmp_path / "ran"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store.{STORE}]\nurl = "imap://alice@127.0.0.1:{port}"\n'
        f"token_command = \"sh -c 'touch {marker}; echo secret-token'\"\n"
        f'[store.backup]\nurl = "maildir:{tmp_path / "Mail"}"\n'
        f'[channel.{STORE}]\nremote = "{STORE}"\nlocal = "backup"\ndirection = "pull"\n'
    )
    result = run(config, "pull", STORE)
    listener.close()
    thread.join(10)
    assert result.exit_code == 3
    assert "does not offer STARTTLS; refusing to send the OAuth2 token" in result.stderr
    assert not marker.exists()
    assert b"AUTHENTICATE" not in b"".join(received)


# -- the config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"oauth2": "yahoo", "client_id": "x"}, "oauth2 must be one of"),
        ({"oauth2": "custom", "client_id": "x", "scope": "mail"}, "needs token_url"),
        (
            {"oauth2": "microsoft", "client_id": "x", "grant": "client_credentials"},
            "client_credentials needs client_secret_command",
        ),
        ({"client_id": "x"}, 'need oauth2 = "google"'),
    ],
)
def test_bad_oauth2_settings_are_exit_2_naming_the_line(mailenv, options, words):
    config = mailenv / "config.toml"
    body = "".join(f"{key} = {toml_value(value)}\n" for key, value in options.items())
    config.write_text(
        f'[store.{STORE}]\nurl = "imaps://alice@example.com@imap.example.com"\n{body}'
    )
    result = run(config, "login", STORE)
    assert result.exit_code == 2
    assert words in result.stderr
    assert f"{config}:3:" in result.stderr  # the line of the first oauth2 setting


@pytest.mark.parametrize("auth", ["password", "plain"])
def test_a_password_auth_with_a_token_source_is_exit_2(mailenv, auth):
    config = mailenv / "config.toml"
    config.write_text(
        f'[store.{STORE}]\nurl = "pop3s://alice@pop.example.com"\nauth = "{auth}"\n'
        'token_command = "echo t"\n'
    )
    result = run(config, "login", STORE)
    assert result.exit_code == 2
    assert f'auth = "{auth}" logs in with a password' in result.stderr


def test_login_of_a_store_without_oauth2_is_exit_2(mailenv):
    config = mailenv / "config.toml"
    config.write_text(f'[store.{STORE}]\nurl = "imaps://alice@imap.example.com"\n')
    result = run(config, "login", STORE)
    assert result.exit_code == 2
    assert "nothing to sign in to" in result.stderr


@pytest.mark.parametrize(
    ("url", "provider", "scopes"),
    [
        ("imaps://alice@gmail.com@imap.gmail.com", "google", ["https://mail.google.com/"]),
        (
            "imaps://alice@corp.example@outlook.office365.com",
            "microsoft",
            ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"],
        ),
        (
            "pop3s://alice@corp.example@outlook.office365.com",
            "microsoft",
            ["https://outlook.office.com/POP.AccessAsUser.All", "offline_access"],
        ),
    ],
)
def test_the_well_known_urls_with_an_at_in_the_user_are_enough(mailenv, url, provider, scopes):
    from mailsync import config as configmod
    from mailsync.stores import open_store

    text = f'[store.{STORE}]\nurl = "{url}"\noauth2 = "{provider}"\nclient_id = "my-app"\n'
    config = configmod.parse(__import__("tomllib").loads(text), text)
    store_config = config.stores[STORE]
    store = open_store(store_config.url, store_config.options, name=STORE)
    user, host = url.split("://")[1].rsplit("@", 1)  # the host is after the last @
    assert (store.endpoint.user, store.endpoint.host) == (user, host)
    assert store.password_endpoint() is None  # no password is asked for
    client = store.tokens.client
    assert client.provider.name == provider and list(client.scopes) == scopes
    assert client.user == store.endpoint.user


def test_a_pop3_token_too_long_for_the_auth_line_follows_the_empty_challenge(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv
):
    """RFC 5034 allows 255 octets for AUTH with its initial response; Microsoft's tokens
    are longer, so the response goes on its own line after the server's "+ "."""
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    long_token = "x" * 400
    config = write_config(mailenv, server, user, "pop3s", token_command=f"echo {long_token}")
    before = len(introspected(oauth_server))
    result = run(config, "-vv", "pull", STORE)
    assert result.exit_code == 3, result.stderr
    assert "pop3: > AUTH OAUTHBEARER\n" in result.stderr  # the mechanism alone
    assert long_token not in result.stdout + result.stderr
    assert introspected(oauth_server)[before:] == [long_token] * 2  # Dovecot read it whole


def test_a_pop3_server_without_stls_gets_no_token(mailenv, tmp_path):
    from fakepop import FakePOP3

    marker = tmp_path / "ran"
    command = f"sh%20-c%20'touch%20{marker};%20echo%20secret-token'"
    with FakePOP3([message(1)]) as server:  # no STLS offered
        url = f"pop3://alice@{server.host}:{server.port}?token_command={command}"
        result = CliRunner().invoke(cli, ["pull", url, str(tmp_path / "Mail")], env={})
        assert result.exit_code == 3, result.output
        assert "does not offer STLS; refusing to send the OAuth2 token" in result.stderr
        assert not any(c.upper().startswith("AUTH") for c in server.commands)
    assert not marker.exists()


def test_a_client_secret_in_a_url_is_refused_and_not_shown(mailenv, tmp_path):
    url = "imaps://alice@imap.example.com?oauth2=google&client_id=x&client_secret=GOCSPX-s3cr3t"
    result = CliRunner().invoke(cli, ["pull", "--json", url, str(tmp_path / "Mail")], env={})
    assert result.exit_code == 2
    assert "holds client_secret" in result.stderr
    assert "GOCSPX-s3cr3t" not in result.stdout + result.stderr


def test_a_denied_device_login_is_exit_3_and_saves_nothing(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mailenv, token_dir
):
    server, user = dovecot_oauth2_server, dovecot_oauth2_user
    client = oauth_server.add_client()
    config = write_config(mailenv, server, user, "pop3s", **custom(oauth_server, client))
    proc = login_process(config)
    oauth_server.deny_device(read_until(proc, r"enter the code (\S+)").group(1))
    status, out, err = finish(proc)
    assert status == 3
    assert len(err.strip().splitlines()) == 1 and err.startswith("mailsync: error: ")
    assert not (Path(token_dir) / f"{STORE}.json").exists()
