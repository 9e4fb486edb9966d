"""Store URLs on the command line: a typo is exit 2 with one line, never an empty Maildir
that "succeeds"; a password typed into a URL is never echoed or stored."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from test_cli import bodies, make_maildir, write_config

from mailsync.cli import cli
from mailsync.stores import canonical_url, mask_url, split_url

KNOWN = "known: maildir, mbox, imaps, imap, pop3s, pop3, ews"


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


@pytest.mark.parametrize(
    "command",
    [
        ["pull", "imap5://x", "OUT"],
        ["pull", "SRC", "imap5://x"],
        ["push", "SRC", "imapx://alice@host"],
        ["sync", "foo:bar", "OUT"],
        ["list", "imap5://x"],
        ["verify", "SRC", "mbox5:OUT"],
    ],
)
def test_an_unknown_store_type_is_exit_2_and_leaves_nothing_behind(mailenv, command):
    make_maildir(mailenv / "src", {"INBOX": 1})
    args = [{"SRC": str(mailenv / "src"), "OUT": str(mailenv / "out")}.get(a, a) for a in command]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "unknown store type" in result.output and KNOWN in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (mailenv / "out").exists()
    assert not (mailenv / "state").exists()  # no state file for a run that cannot start


def test_a_word_and_a_colon_is_refused_with_the_way_to_write_a_path():
    with pytest.raises(Exception) as refused:
        split_url("backup:2024")
    assert "unknown store type 'backup'" in str(refused.value)
    assert "a local path is written ./backup:2024" in str(refused.value)
    # After '//' it is no path anyone means: no such hint.
    with pytest.raises(Exception) as refused:
        split_url("imap5://x")
    assert "./" not in str(refused.value)


@pytest.mark.parametrize(
    "argument, scheme, path",
    [
        ("./backup:2024", "maildir", "./backup:2024"),
        ("maildir:backup:2024", "maildir", "backup:2024"),
        ("Mail/a:b", "maildir", "Mail/a:b"),
        ("/abs/a:b", "maildir", "/abs/a:b"),
        ("~/Mail", "maildir", "~/Mail"),
        ("my mail:2024", "maildir", "my mail:2024"),  # a space: no scheme, a path
        ("MBOX:box", "mbox", "box"),  # schemes are case-insensitive
    ],
)
def test_paths_with_colons_are_still_paths(argument, scheme, path):
    assert split_url(argument)[:2] == (scheme, path)


def test_pull_into_and_from_a_directory_with_a_colon(mailenv, monkeypatch):
    make_maildir(mailenv / "src", {"INBOX": 2})
    monkeypatch.chdir(mailenv)
    result = invoke("pull", "src", "./backup:2024")
    assert result.exit_code == 0, result.output
    assert bodies(str(mailenv / "backup:2024")) == bodies(str(mailenv / "src"))
    back = invoke("pull", "maildir:backup:2024", "copy")
    assert back.exit_code == 0, back.output
    assert bodies(str(mailenv / "copy")) == bodies(str(mailenv / "src"))


def test_an_unknown_store_type_in_the_config_is_a_config_problem(mailenv):
    write_config(
        mailenv,
        '[store.a]\nurl = "imap5://x"\n\n[channel.c]\nremote = "imapx://y"\nlocal = "/tmp/m"\n',
    )
    result = invoke("pull", "c")
    assert result.exit_code == 2
    assert "config.toml:2: unknown store type 'imap5'" in result.output
    assert "config.toml:5: unknown store type 'imapx'" in result.output


# -- passwords in URLs ---------------------------------------------------------------------

SECRET = "Tr0ub4dor-PW"


@pytest.mark.parametrize(
    "url",
    [
        f"imapx://alice:{SECRET}@host",
        f"imap:/alice:{SECRET}@host",
        f"imap://:{SECRET}@host",
        f"imaps://alice:{SECRET}@",
        f"imaps://alice:{SECRET}@host",
        f"imaps://alice:{SECRET}",  # the password where a port would be
        f"pop3s://alice:{SECRET}@host:99999",
        f"ews://alice:{SECRET}@host/EWS/Exchange.asmx",
    ],
)
def test_a_password_typed_into_a_url_is_never_echoed_or_stored(mailenv, url):
    make_maildir(mailenv / "src", {"INBOX": 1})
    for args in (
        ["-vv", "pull", "--json", url, mailenv / "out"],
        ["-vv", "push", "--json", mailenv / "src", url],
        ["list", "--json", url],
        ["verify", "--json", url, mailenv / "src"],
    ):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert SECRET not in result.output
        assert "****" in result.output
    stored = [p for p in mailenv.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert stored == []


def test_mask_url_hides_the_password_and_nothing_else():
    assert (
        mask_url("imaps://alice:pw@host:993/x?tls=none") == "imaps://alice:****@host:993/x?tls=none"
    )
    assert mask_url("imaps://alice:p/w@d@host") == "imaps://alice:****@host"
    assert mask_url("imaps://alice@[::1]:993") == "imaps://alice@[::1]:993"
    query = "imaps://alice@host?password_command=pass show mail/a@b:c"
    assert mask_url(query) == query  # an '@' in the query is no user part
    for path in ("maildir:/a:b@c", "./a:b@c", "/x/a:b@c", "mbox:u:p@h"):
        assert mask_url(path) == path
    assert SECRET not in canonical_url(f"imapx://alice:{SECRET}@h".replace("imapx", "imaps"))


def test_a_bad_host_or_port_is_exit_2_with_the_reason(mailenv):
    for url, reason in [
        ("imaps://alice@[::1", "Invalid IPv6 URL"),
        ("imaps://alice@host:99999", "bad port"),
        ("imaps://alice@host:99x", "bad port"),
    ]:
        result = invoke("pull", url, mailenv / "out")
        assert result.exit_code == 2, result.output
        assert reason in result.output and "unexpected" not in result.output
