"""mailsync/tokens.py: a store's token source from its options, ``mailsync login``'s
sign-in and where it keeps the refresh token (0600 file written atomically, or the
keyring), access tokens reused and refreshed (before expiry, between runs, when the
server refuses one), rotation, revocation, and no secret in logs or errors.  Against
the test authorization server and, for the logins, the OAuth2 Dovecot."""

from __future__ import annotations

import imaplib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from mailsync import oauth, token_store, tokens
from mailsync.errors import EXIT_CONNECT, EXIT_USAGE, AuthError, ConfigError, ConnectError
from mailsync.sasl import SaslConversation
from mailsync.tokens import (
    ClientCredentialTokens,
    CommandTokens,
    RefreshTokens,
    TokenRejected,
    TokenStore,
    login_with_token,
    token_source,
)


def custom_options(server, registered, **extra) -> dict:
    options = {
        "oauth2": "custom",
        "client_id": registered.client_id,
        "token_url": server.token_url,
        "device_url": server.device_url,
        "authorize_url": server.authorize_url,
        "scope": "mail offline_access",
    }
    if registered.secret:
        options["client_secret"] = registered.secret
    options.update(extra)
    return options


def device_login(server, source, user: str) -> str:
    """``mailsync login`` for `source` by device code, approved by `user`."""
    shown = []

    def approve(seconds):
        code = shown[0].split("enter the code ", 1)[1].split()[0]
        server.approve_device(code, user)

    return tokens.login(source, shown.append, sleep=approve)


def read_json(path) -> dict:
    with open(path) as handle:
        return json.load(handle)


class Clock:
    """Wall-clock time that the test moves."""

    def __init__(self):
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def imap_attempt(server, user):
    """One XOAUTH2 login to the OAuth2 Dovecot per call, as a store would make it:
    TokenRejected when refused.  `attempt.tokens` lists the tokens tried."""

    def attempt(token: str) -> None:
        attempt.tokens.append(token)
        client = imaplib.IMAP4(server.host, server.ports["imap"], timeout=30)
        conversation = SaslConversation("XOAUTH2", user.name, token, server.host, 0)
        try:
            client.authenticate("XOAUTH2", conversation)
        except imaplib.IMAP4.error as error:
            client.shutdown()
            raise TokenRejected(str(error), conversation.error)
        client.logout()

    attempt.tokens = []
    return attempt


class MemoryKeyring:
    """A keyring backend with keyring's API (get/set/delete_password, priority), kept in
    memory: no Secret Service runs in the tests.  `refuse` makes set_password fail."""

    priority = 5

    def __init__(self, refuse: bool = False):
        self.entries: dict[tuple[str, str], str] = {}
        self.refuse = refuse

    def get_password(self, service, user):
        return self.entries.get((service, user))

    def set_password(self, service, user, password):
        if self.refuse:
            raise RuntimeError("locked collection")
        self.entries[(service, user)] = password

    def delete_password(self, service, user):
        self.entries.pop((service, user), None)


# -- options ------------------------------------------------------------------------------


def test_google_defaults_to_the_browser_sign_in_and_the_mail_scope(token_dir):
    options = {"oauth2": "google", "client_id": "id.apps", "client_secret": "gsecret", "x": 1}
    source = token_source("gmail", "alice@gmail.com", options, directory=token_dir, keyring=None)
    assert isinstance(source, RefreshTokens)
    client = source.client
    assert client.grant == oauth.AUTHORIZATION_CODE
    assert client.scopes == ("https://mail.google.com/",)
    assert client.provider.token_url == "https://oauth2.googleapis.com/token"
    assert options == {"x": 1}  # what the store still has to read


def test_microsoft_defaults_to_the_device_code_and_imap_pop_offline_scopes(token_dir):
    source = token_source(
        "work", "a@corp.example",
        {"oauth2": "microsoft", "client_id": "c", "tenant": "corp.example"},
        directory=token_dir, keyring=None,
    )  # fmt: skip
    client = source.client
    assert client.grant == oauth.DEVICE_CODE
    assert client.scopes == (
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/POP.AccessAsUser.All",
        "offline_access",
    )
    assert client.provider.device_url == (
        "https://login.microsoftonline.com/corp.example/oauth2/v2.0/devicecode"
    )


def test_microsoft_client_credentials_use_the_default_app_scope(token_dir):
    source = token_source(
        "migrate", "box@corp.example",
        {"oauth2": "microsoft", "client_id": "c", "tenant": "t1", "grant": "client_credentials",
         "client_secret_command": "pass show app"},
        directory=token_dir, keyring=None,
    )  # fmt: skip
    assert isinstance(source, ClientCredentialTokens)
    assert source.client.scopes == ("https://outlook.office365.com/.default",)
    assert source.client.provider.token_url.endswith("/t1/oauth2/v2.0/token")


def test_token_command_is_a_command_source():
    options = {"token_command": "oama access alice@gmail.com"}
    assert isinstance(token_source("s", "alice", options), CommandTokens)
    assert options == {}
    assert token_source("s", "alice", {"tls": "none"}) is None


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"oauth2": "google"}, "needs client_id"),
        ({"oauth2": "google", "client_id": "c", "grant": "device_code"}, "no device code"),
        ({"oauth2": "yahoo", "client_id": "c"}, "oauth2 must be one of"),
        ({"oauth2": "custom", "client_id": "c"}, "needs token_url"),
        (
            {"oauth2": "custom", "client_id": "c", "token_url": "http://idp.example/t"},
            "must be an https:// URL",
        ),
        ({"oauth2": "microsoft", "client_id": "c", "grant": "client_credentials"}, "client_secret"),
        ({"oauth2": "microsoft", "client_id": "c", "tenant": "a/b"}, "not a tenant"),
        ({"oauth2": "google", "client_id": "c", "token_command": "x"}, "exclude each other"),
        ({"client_id": "c"}, 'need oauth2 = "google"'),
        ({"oauth2": "google", "client_id": "c", "grant": "password"}, "grant must be one of"),
    ],
)
def test_incomplete_or_contradictory_options_are_config_errors(token_dir, options, words):
    with pytest.raises(ConfigError, match=words) as caught:
        token_source("s", "alice", dict(options), directory=token_dir, keyring=None)
    assert caught.value.exit_code == EXIT_USAGE


# -- login, the token file, reuse between runs -------------------------------------------------


def test_login_keeps_the_refresh_token_in_a_0600_file_in_a_0700_directory(oauth_server, token_dir):
    registered = oauth_server.add_client()
    old_umask = os.umask(0)  # whatever the umask
    os.makedirs(token_dir, mode=0o755)  # and a directory made too open by someone else
    try:
        source = token_source(
            "work", "alice", custom_options(oauth_server, registered), directory=token_dir,
            keyring=None,
        )  # fmt: skip
        said = device_login(oauth_server, source, "alice")
    finally:
        os.umask(old_umask)
    path = os.path.join(token_dir, "work.json")
    assert said == f"store work: signed in; the refresh token is kept in {path}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(token_dir).st_mode) == 0o700
    record = read_json(path)
    assert oauth_server.grants[record["refresh_token"]].kind == "refresh"
    assert oauth_server.valid(record["access_token"]).user == "alice"
    assert record["client_id"] == registered.client_id
    assert record["token_url"] == oauth_server.token_url
    assert sorted(os.listdir(token_dir)) == ["work.json", "work.lock"]  # no temporary left


def test_a_rerun_reuses_the_saved_access_token_without_refreshing(oauth_server, token_dir):
    registered = oauth_server.add_client()
    options = custom_options(oauth_server, registered)
    first = token_source("work", "alice", dict(options), directory=token_dir, keyring=None)
    device_login(oauth_server, first, "alice")
    saved = first.token()

    rerun = token_source("work", "alice", dict(options), directory=token_dir, keyring=None)
    assert rerun.token() == saved
    assert [
        r for r in oauth_server.grants_of("refresh_token")
        if r.fields["client_id"] == registered.client_id
    ] == []  # fmt: skip


def refreshes(server, registered) -> int:
    return sum(
        1
        for r in server.grants_of("refresh_token")
        if r.fields["client_id"] == registered.client_id
    )


def test_an_access_token_near_its_expiry_is_refreshed_and_the_rotated_token_saved_at_once(
    oauth_server, token_dir
):
    registered = oauth_server.add_client(access_lifetime=3600, rotate=True)
    clock = Clock()
    client_options = custom_options(oauth_server, registered)
    source = token_source("work", "alice", client_options, directory=token_dir, keyring=None)
    source.clock = clock
    device_login(oauth_server, source, "alice")
    path = os.path.join(token_dir, "work.json")
    before = read_json(path)
    assert source.token() == before["access_token"]

    clock.now += 3600 - tokens.EXPIRY_MARGIN + 1  # shortly before it expires
    renewed = source.token()

    after = read_json(path)
    assert renewed != before["access_token"]
    assert after["access_token"] == renewed
    assert after["refresh_token"] != before["refresh_token"]
    assert oauth_server.valid(renewed).user == "alice"
    assert oauth_server.grants[before["refresh_token"]].revoked  # rotated away
    assert refreshes(oauth_server, registered) == 1
    assert source.token() == renewed  # and reused again
    assert refreshes(oauth_server, registered) == 1


def test_parallel_connections_share_one_refresh(oauth_server, token_dir):
    registered = oauth_server.add_client()
    clock = Clock()
    source = token_source(
        "work", "alice", custom_options(oauth_server, registered), directory=token_dir,
        keyring=None,
    )  # fmt: skip
    source.clock = clock
    device_login(oauth_server, source, "alice")
    clock.now += 7200
    got = []
    threads = [threading.Thread(target=lambda: got.append(source.token())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(got)) == 1 and len(got) == 4
    assert refreshes(oauth_server, registered) == 1


def test_not_signed_in_says_to_run_login(oauth_server, token_dir):
    registered = oauth_server.add_client()
    source = token_source(
        "work", "alice", custom_options(oauth_server, registered), directory=token_dir,
        keyring=None,
    )  # fmt: skip
    with pytest.raises(AuthError) as caught:
        source.token()
    assert str(caught.value) == "store work is not signed in to OAuth2; run `mailsync login work`"
    assert caught.value.exit_code == EXIT_CONNECT


def test_a_sign_in_for_another_client_id_is_not_used(oauth_server, token_dir):
    registered = oauth_server.add_client()
    device_login(
        oauth_server,
        token_source("work", "a", custom_options(oauth_server, registered), directory=token_dir,
                     keyring=None),
        "alice",
    )  # fmt: skip
    other = oauth_server.add_client()
    source = token_source(
        "work", "a", custom_options(oauth_server, other), directory=token_dir, keyring=None
    )
    with pytest.raises(AuthError, match="another client_id or provider; run `mailsync login work`"):
        source.token()


# -- against Dovecot: rejection, renewal, revocation --------------------------------------------


def test_a_token_the_server_refuses_is_renewed_once_and_the_login_goes_on(
    oauth_server, dovecot_oauth2_server, dovecot_oauth2_user, token_dir
):
    """Refresh during a long run: the provider ended the access token early."""
    registered = oauth_server.add_client()
    user = dovecot_oauth2_user
    source = token_source(
        "work", user.name, custom_options(oauth_server, registered), directory=token_dir,
        keyring=None,
    )  # fmt: skip
    device_login(oauth_server, source, user.name)
    first = source.token()
    attempt = imap_attempt(dovecot_oauth2_server, user)
    login_with_token(source, attempt, "imap://test")
    oauth_server.expire(first)  # the next connection's token is refused

    login_with_token(source, attempt, "imap://test")

    assert attempt.tokens[:2] == [first, first]
    assert attempt.tokens[2] != first
    assert len(attempt.tokens) == 3
    assert refreshes(oauth_server, registered) == 1


def test_a_revoked_sign_in_is_exit_3_telling_to_log_in_again_and_nothing_secret(
    oauth_server, dovecot_oauth2_server, dovecot_oauth2_user, token_dir, caplog
):
    registered = oauth_server.add_client(secret="client-secret-xyz")
    user = dovecot_oauth2_user
    source = token_source(
        "work", user.name, custom_options(oauth_server, registered), directory=token_dir,
        keyring=None,
    )  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="mailsync")
    device_login(oauth_server, source, user.name)
    record = read_json(os.path.join(token_dir, "work.json"))
    oauth_server.revoke(record["refresh_token"])  # the user removed the app's access

    with pytest.raises(AuthError) as caught:
        login_with_token(source, imap_attempt(dovecot_oauth2_server, user), "imap://test")

    text = str(caught.value)
    assert text.startswith("store work: the OAuth2 provider no longer accepts the saved sign-in")
    assert text.endswith("run `mailsync login work` to sign in again")
    assert "\n" not in text
    assert caught.value.exit_code == EXIT_CONNECT
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    device_codes = [
        r.fields["device_code"] for r in oauth_server.grants_of(oauth.DEVICE_GRANT_TYPE)
    ]
    for secret in (
        record["refresh_token"], record["access_token"], "client-secret-xyz", *device_codes
    ):  # fmt: skip
        assert secret not in text
        assert secret not in logged
    assert "oauth2: POST" in caplog.text  # there was something to leak from


def test_a_wrong_token_from_token_command_is_exit_3_after_one_rerun(
    dovecot_oauth2_server, dovecot_oauth2_user, tmp_path
):
    runs = tmp_path / "runs"
    script = tmp_path / "token.sh"
    script.write_text(f"#!/bin/sh\necho run >> {runs}\necho not-a-valid-token\n")
    script.chmod(0o700)
    source = token_source("work", "x", {"token_command": str(script)})
    attempt = imap_attempt(dovecot_oauth2_server, dovecot_oauth2_user)

    with pytest.raises(AuthError) as caught:
        login_with_token(source, attempt, "imap://test")

    assert runs.read_text() == "run\nrun\n"
    assert len(attempt.tokens) == 2
    assert str(caught.value).startswith(
        "imap://test: the server refused a fresh OAuth2 token (status 401"
    )
    assert caught.value.exit_code == EXIT_CONNECT


def test_token_command_runs_again_when_its_token_was_refused(
    oauth_server, dovecot_oauth2_server, dovecot_oauth2_user, tmp_path
):
    registered = oauth_server.add_client()
    stale, _ = oauth_server.issue(dovecot_oauth2_user.name, registered)
    fresh, _ = oauth_server.issue(dovecot_oauth2_user.name, registered)
    oauth_server.expire(stale)
    queue = tmp_path / "queue"
    queue.write_text(f"{stale}\n{fresh}\n")
    script = tmp_path / "token.sh"  # prints the first line of the queue and drops it
    script.write_text(f"#!/bin/sh\nhead -n 1 {queue}\nsed -i 1d {queue}\n")
    script.chmod(0o700)
    attempt = imap_attempt(dovecot_oauth2_server, dovecot_oauth2_user)

    login_with_token(token_source("work", "x", {"token_command": str(script)}), attempt, "imap")

    assert attempt.tokens == [stale, fresh]


def test_client_credentials_log_in_without_a_login_step(
    oauth_server, dovecot_oauth2_server, dovecot_oauth2_user, token_dir
):
    registered = oauth_server.add_client(secret="app-secret", app_user=dovecot_oauth2_user.name)
    options = custom_options(oauth_server, registered, grant="client_credentials")
    source = token_source("migrate", "box", options, directory=token_dir, keyring=None)
    attempt = imap_attempt(dovecot_oauth2_server, dovecot_oauth2_user)

    login_with_token(source, attempt, "imap://test")
    login_with_token(source, attempt, "imap://test")

    assert len(set(attempt.tokens)) == 1  # the app's token is reused in the process
    assert tokens.login(source, print) == (
        "store migrate: the app's client credentials work; no sign-in is needed"
    )
    assert not os.path.exists(token_dir) or os.listdir(token_dir) == []


def test_browser_login_through_tokens_login(oauth_server, token_dir):
    registered = oauth_server.add_client()
    options = custom_options(oauth_server, registered, grant="authorization_code")
    source = token_source("home", "dave", options, directory=token_dir, keyring=None)
    said = tokens.login(source, lambda text: None, open_browser=oauth_server.browser("dave"))
    assert said.startswith("store home: signed in")
    assert oauth_server.valid(source.token()).user == "dave"


# -- the file: atomic, no symlinks, private ------------------------------------------------------


def test_a_kill_9_in_the_middle_of_a_save_leaves_the_old_file(token_dir, tmp_path):
    store = TokenStore("work", token_dir, keyring=None)
    with store.locked():
        store.save({"refresh_token": "old-refresh", "access_token": "old-access"})
    # A child process saves a new record and is killed between writing the new file and
    # renaming it over the old one (it stops itself in fsync, where the parent kills it).
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from mailsync.token_store import TokenStore
        real_fsync = os.fsync
        def fsync(fd):
            real_fsync(fd)
            if os.path.isfile(f"/proc/self/fd/{{fd}}"):
                print("written", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
        os.fsync = fsync
        TokenStore("work", {token_dir!r}, keyring=None).save(
            {{"refresh_token": "new-refresh", "access_token": "x" * 100000}}
        )
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "written\n"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert any(name.endswith(".tmp") for name in os.listdir(token_dir))  # it was mid-write

    assert store.load()["refresh_token"] == "old-refresh"
    store.save({"refresh_token": "next-refresh"})  # and the leftover is no obstacle
    assert store.load()["refresh_token"] == "next-refresh"


def test_a_symlinked_token_file_is_neither_read_nor_written_through(token_dir, tmp_path):
    store = TokenStore("work", token_dir, keyring=None)
    store.save({"refresh_token": "r1"})
    target = tmp_path / "elsewhere.json"
    target.write_text('{"refresh_token": "planted"}')
    os.unlink(store.path)
    os.symlink(target, store.path)

    with pytest.raises(ConnectError, match="is a symbolic link"):
        store.load()
    store.save({"refresh_token": "r2"})

    assert target.read_text() == '{"refresh_token": "planted"}'
    assert not os.path.islink(store.path)
    assert store.load()["refresh_token"] == "r2"


def test_a_symlinked_token_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "tokens"
    link.symlink_to(real)
    with pytest.raises(ConnectError, match="is a symbolic link"):
        TokenStore("work", str(link), keyring=None).save({"refresh_token": "r"})
    assert os.listdir(real) == []


def test_a_token_file_readable_by_others_is_made_private_with_a_warning(token_dir, caplog):
    store = TokenStore("work", token_dir, keyring=None)
    store.save({"refresh_token": "r1"})
    os.chmod(store.path, 0o644)
    assert store.load()["refresh_token"] == "r1"
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert "was readable by others" in caplog.text


def test_store_names_become_safe_distinct_file_names(token_dir):
    names = ["work", "a/b", "a_b", "..", ".hidden", "ünï"]
    paths = [TokenStore(name, token_dir, keyring=None).path for name in names]
    assert len(set(paths)) == len(paths)
    for path in paths:
        assert os.path.dirname(path) == token_dir
        assert not os.path.basename(path).startswith(".")


def test_a_damaged_token_file_says_to_log_in_again(token_dir):
    store = TokenStore("work", token_dir, keyring=None)
    os.makedirs(token_dir, mode=0o700, exist_ok=True)
    with open(store.path, "w") as handle:
        handle.write("{not json")
    with pytest.raises(AuthError, match="cannot be read; run `mailsync login work`"):
        store.load()


# -- the keyring --------------------------------------------------------------------------------


def test_with_a_usable_keyring_the_tokens_go_there_and_not_to_a_file(oauth_server, token_dir):
    registered = oauth_server.add_client()
    keyring = MemoryKeyring()
    options = custom_options(oauth_server, registered)
    source = token_source("work", "alice", dict(options), directory=token_dir, keyring=keyring)

    said = device_login(oauth_server, source, "alice")

    assert said == "store work: signed in; the refresh token is kept in the system keyring"
    record = json.loads(keyring.entries[("mailsync", "oauth2:work")])
    assert oauth_server.grants[record["refresh_token"]].kind == "refresh"
    assert not os.path.exists(os.path.join(token_dir, "work.json"))
    rerun = token_source("work", "alice", dict(options), directory=token_dir, keyring=keyring)
    assert rerun.token() == record["access_token"]


def test_a_keyring_that_refuses_falls_back_to_the_file_with_a_warning(token_dir, caplog):
    store = TokenStore("work", token_dir, keyring=MemoryKeyring(refuse=True))
    store.save({"refresh_token": "r1"})
    assert read_json(store.path)["refresh_token"] == "r1"
    assert "the keyring refused the tokens (RuntimeError)" in caplog.text
    assert store.load()["refresh_token"] == "r1"


def test_only_recommended_keyring_backends_are_used():
    class PlainText:  # keyrings.alt's file backends: "suitable", not "recommended"
        priority = 0.5

    class Broken:
        @property
        def priority(self):
            raise RuntimeError("no D-Bus")

    assert token_store.usable_keyring(MemoryKeyring())
    assert not token_store.usable_keyring(PlainText())
    assert not token_store.usable_keyring(Broken())


# -- between processes --------------------------------------------------------------------------


def test_a_second_process_waits_for_the_refresh_of_the_first(oauth_server, token_dir):
    """Two cron runs at once must not both spend one rotating refresh token: the second
    waits on the lock and then uses what the first saved."""
    registered = oauth_server.add_client(rotate=True)
    options = custom_options(oauth_server, registered)
    source = token_source("work", "alice", dict(options), directory=token_dir, keyring=None)
    device_login(oauth_server, source, "alice")
    store = source.store
    stale = store.load()
    store.save({**stale, "expires_at": 0})  # both processes will want a new access token
    child = textwrap.dedent(f"""
        import fcntl, sys
        sys.path.insert(0, {os.getcwd()!r})
        from mailsync.tokens import token_source
        real_flock = fcntl.flock
        def flock(fd, operation):
            print("waiting", flush=True)
            real_flock(fd, operation)
        fcntl.flock = flock
        source = token_source("work", "alice", {options!r}, directory={token_dir!r},
                              keyring=None)
        print(source.token(), flush=True)
    """)
    with store.locked():  # this process is the first run, in the middle of its refresh
        process = subprocess.Popen(
            [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert process.stdout.readline() == "waiting\n"
        fresh = oauth.refresh(source.client, stale["refresh_token"])
        store.save(token_store.tokens_record(source.client, fresh, fresh.refresh_token))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.strip() == fresh.access_token
    assert refreshes(oauth_server, registered) == 1
