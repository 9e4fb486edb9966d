"""The command line, through Click's runner: every command, option and exit code."""

from __future__ import annotations

import json
import mailbox
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mailsync.cli import cli
from mailsync.errors import ConnectError
from mailsync.stores import open_store


def make_maildir(root, folders: dict[str, int], flags="", tag="") -> None:
    """Seed a verbatim-layout Maildir tree with Python's own mailbox module."""
    for folder, count in folders.items():
        os.makedirs(os.path.dirname(os.path.join(root, folder)), exist_ok=True)
        box = mailbox.Maildir(os.path.join(root, folder), create=True)
        for i in range(count):
            msg = mailbox.MaildirMessage(
                f"From: a@example.org\nSubject: {folder} {i}{tag}\nMessage-ID: <{folder}.{i}@x>\n\n"
                f"body {i}\nFrom the start of a line\n".encode()
            )
            if flags:
                msg.set_flags(flags)
            box.add(msg)


def bodies(url: str) -> dict[str, list[bytes]]:
    with open_store(url, read_only=True) as store:
        out = {}
        for name in store.list_folders():
            folder = store.open_folder(name)
            out[name] = sorted(folder.fetch(k) for k in folder.list())
        return out


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def test_help_for_every_command_has_text_and_exit_codes():
    result = run("--help")
    assert result.exit_code == 0
    assert "130" in result.output and "--force-delete" in result.output
    for command in cli.commands.values():
        assert command.help, f"{command.name} has no help text"
        sub = run(command.name, "--help")
        assert sub.exit_code == 0
        assert "Exit codes" in sub.output


def test_man_page_documents_every_option_of_every_command():
    with open(os.path.join(os.path.dirname(__file__), "../../man/mailsync.1")) as handle:
        page = handle.read()
    page = page.replace("\\-", "-")
    commands = [cli, *cli.commands.values()]
    for command in commands:
        if command is not cli:
            assert f".B {command.name}" in page or f"B mailsync {command.name}" in page
        for param in command.params:
            for opt in param.opts + param.secondary_opts:
                if opt.startswith("-"):
                    assert opt in page, f"{opt} of {command.name} is not in man/mailsync.1"


def test_pull_copies_every_folder_then_rerun_copies_nothing(env):
    make_maildir(env / "src", {"INBOX": 3, "Archive/2019": 2})
    result = run("pull", str(env / "src"), str(env / "dst"))
    assert result.exit_code == 0, result.output
    assert "INBOX: copied 3 to local" in result.output
    assert "Archive/2019: copied 2 to local" in result.output
    assert bodies(str(env / "dst")) == bodies(str(env / "src"))
    again = run("pull", str(env / "src"), str(env / "dst"))
    assert again.exit_code == 0
    assert "copied 0 to local" in again.output and "copied 3" not in again.output


def test_pull_never_modifies_the_source(env):
    make_maildir(env / "src", {"INBOX": 2})
    before = sorted(os.listdir(env / "src/INBOX/new"))
    make_maildir(env / "dst", {"INBOX": 1}, tag=" local")
    result = run("pull", "--mirror", str(env / "src"), str(env / "dst"))
    assert result.exit_code == 0
    assert sorted(os.listdir(env / "src/INBOX/new")) == before
    assert len(bodies(str(env / "src"))["INBOX"]) == 2
    assert len(bodies(str(env / "dst"))["INBOX"]) == 3  # local-only mail is never removed


def test_json_report(env):
    make_maildir(env / "src", {"INBOX": 2})
    result = run("pull", "--json", str(env / "src"), f"mbox:{env / 'box'}")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["command"] == "pull" and report["exit_code"] == 0
    folder = report["channels"][0]["folders"][0]
    assert folder["folder"] == "INBOX" and folder["copied_a_to_b"] == 2


def test_dry_run_changes_nothing_and_says_what_it_would_do(env):
    make_maildir(env / "src", {"INBOX": 4})
    result = run("-v", "pull", "--dry-run", str(env / "src"), str(env / "dst"))
    assert result.exit_code == 0
    assert "would copy 4 to local" in result.output
    assert not (env / "dst").exists()
    assert not (env / "state").exists() or not any((env / "state").rglob("*.db-wal"))
    real = run("pull", str(env / "src"), str(env / "dst"))
    assert "copied 4 to local" in real.output


def test_push_copies_towards_dest_and_shares_state_with_pull(env):
    make_maildir(env / "local", {"INBOX": 2})
    result = run("push", str(env / "local"), f"mbox:{env / 'remote'}")
    assert result.exit_code == 0, result.output
    assert len(bodies(f"mbox:{env / 'remote'}")["INBOX"]) == 2
    # pull REMOTE LOCAL is the same pair of sides: nothing to copy back
    back = run("pull", f"mbox:{env / 'remote'}", str(env / "local"))
    assert "copied 0 to local" in back.output
    assert len(bodies(str(env / "local"))["INBOX"]) == 2


def test_sync_two_way_and_deletion_propagates(env):
    make_maildir(env / "a", {"INBOX": 2})
    make_maildir(env / "b", {"Other": 1}, tag=" b")
    result = run("sync", str(env / "a"), str(env / "b"))
    assert result.exit_code == 0, result.output
    assert bodies(str(env / "a")) == bodies(str(env / "b"))
    victim = next(iter(os.listdir(env / "a/INBOX/new")))
    os.unlink(env / "a/INBOX/new" / victim)
    result = run("sync", str(env / "a"), str(env / "b"))
    assert "deleted 1" in result.output
    assert len(bodies(str(env / "b"))["INBOX"]) == 1


def test_mass_deletion_is_refused_with_exit_4_until_forced(env):
    make_maildir(env / "src", {"INBOX": 12})
    assert run("pull", str(env / "src"), str(env / "dst")).exit_code == 0
    for name in os.listdir(env / "src/INBOX/new")[:8]:
        os.unlink(env / "src/INBOX/new" / name)
    result = CliRunner().invoke(cli, ["pull", "--mirror", str(env / "src"), str(env / "dst")])
    assert result.exit_code == 4
    assert "--force-delete" in result.output
    assert len(bodies(str(env / "dst"))["INBOX"]) == 12
    forced = run("pull", "--mirror", "--force-delete", str(env / "src"), str(env / "dst"))
    assert forced.exit_code == 0
    assert len(bodies(str(env / "dst"))["INBOX"]) == 4


def test_folders_option_selects(env):
    make_maildir(env / "src", {"INBOX": 1, "Trash": 1, "Archive/2019": 1, "Archive/2020": 1})
    result = run(
        "pull",
        "--folders",
        "*",
        "--folders",
        "!Trash",
        "--folders",
        "!Archive/2020",
        str(env / "src"),
        str(env / "dst"),
    )
    assert result.exit_code == 0
    assert sorted(bodies(str(env / "dst"))) == ["Archive/2019", "INBOX"]


def test_list_shows_folders_counts_sizes(env):
    make_maildir(env / "src", {"INBOX": 3, "Sent": 1})
    result = run("list", str(env / "src"))
    assert result.exit_code == 0
    assert re.search(r"^INBOX\t3\t", result.output, re.M)
    as_json = json.loads(run("list", "--json", str(env / "src")).output)
    assert {f["folder"]: f["messages"] for f in as_json["folders"]} == {"INBOX": 3, "Sent": 1}
    assert all(f["bytes"] > 0 for f in as_json["folders"])


def write_config(env, text: str) -> str:
    path = env / "config" / "mailsync" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_channels_from_config_status_and_verify(env):
    make_maildir(env / "src", {"INBOX": 2, "Trash": 1})
    write_config(
        env,
        f"""
[store.remote]
url = "maildir:{env / "src"}"

[store.backup]
url = "mbox:{env / "mbox"}"

[channel.work]
remote = "remote"
local = "backup"
direction = "pull"
folders = ["*", "!Trash"]
""",
    )
    assert "no channel has been synced yet" in run("status").output
    result = run("pull", "work")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("work: INBOX: copied 2")
    assert sorted(bodies(f"mbox:{env / 'mbox'}")) == ["INBOX"]
    status = run("status", "work")
    assert "work: last run" in status.output and "INBOX\t2 remote\t2 local" in status.output
    data = json.loads(run("status", "--json").output)
    assert data["channels"][0]["channel"] == "work"
    assert data["channels"][0]["last_run"]["exit_code"] == 0
    assert run("verify", "work").exit_code == 0
    # a message that never reached the backup is found missing
    make_maildir(env / "src", {"INBOX": 1}, tag=" late")
    result = CliRunner().invoke(cli, ["verify", "work"])
    assert result.exit_code == 1 and "MISSING" in result.output


def test_verify_between_two_stores(env):
    make_maildir(env / "a", {"INBOX": 2})
    assert run("pull", str(env / "a"), f"mbox:{env / 'b'}").exit_code == 0
    report = json.loads(run("verify", "--json", str(env / "a"), f"mbox:{env / 'b'}").output)
    assert report["missing"] == 0 and report["folders"][0]["messages"] == 2


def test_config_problems_are_reported_together_with_lines(env):
    path = write_config(
        env,
        """[store.a]
url = "maildir:/tmp/x"
colour = "blue"

[channel.c]
remote = "a"
local = "nowhere"
direction = "sideways"
""",
    )
    result = CliRunner().invoke(cli, ["--config", path, "pull", "c"])
    assert result.exit_code == 2
    assert "3 problem(s)" in result.output
    assert "config.toml:3: unknown key 'colour'" in result.output
    assert "config.toml:7: local = 'nowhere'" in result.output
    assert "config.toml:8: direction must be" in result.output


def test_unknown_channel_and_bad_arguments_exit_2(env):
    result = CliRunner().invoke(cli, ["pull", "nosuch"])
    assert result.exit_code == 2 and "no channel named nosuch" in result.output
    assert CliRunner().invoke(cli, ["pull"]).exit_code == 2
    result = CliRunner().invoke(cli, ["--config", str(env / "missing.toml"), "status"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_second_run_of_a_channel_exits_at_once(env):
    from mailsync.channel import Job, state_dir, state_path
    from mailsync.config import load
    from mailsync.state import State

    make_maildir(env / "src", {"INBOX": 1})
    job = Job(None, str(env / "src"), {}, str(env / "dst"), {}, "pull", "keep", ["*"])
    path = state_path(state_dir(load(None)), job)
    with State(path):
        result = CliRunner().invoke(cli, ["pull", str(env / "src"), str(env / "dst")])
    assert result.exit_code == 1
    assert "another mailsync run" in result.output
    assert not (env / "dst").exists()


def test_connection_failure_exits_3(env, monkeypatch):
    import mailsync.channel as channelmod

    def refuse(url, options=None, read_only=False, name=None):
        raise ConnectError("cannot connect to mail.example.com:993: connection refused")

    monkeypatch.setattr(channelmod, "open_store", refuse)
    result = CliRunner().invoke(cli, ["pull", "imaps://a@mail.example.com", str(env / "d")])
    assert result.exit_code == 3
    assert "connection refused" in result.output


def test_interrupt_exits_130_with_consistent_state(env, monkeypatch):
    import mailsync.copies as copiesmod

    make_maildir(env / "src", {"INBOX": 3})
    real = copiesmod.Copier.run

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(copiesmod.Copier, "run", interrupted)
    result = CliRunner().invoke(cli, ["pull", str(env / "src"), str(env / "dst")])
    assert result.exit_code == 130 and "rerun" in result.output
    monkeypatch.setattr(copiesmod.Copier, "run", real)
    assert run("pull", str(env / "src"), str(env / "dst")).exit_code == 0
    assert len(bodies(str(env / "dst"))["INBOX"]) == 3


def test_message_error_exits_1(env, monkeypatch):
    from mailsync.stores.maildir import MaildirFolder

    make_maildir(env / "src", {"INBOX": 3})
    real_fetch = MaildirFolder.fetch
    calls = []

    def flaky(self, key):
        calls.append(key)
        if len(calls) == 2:
            from mailsync.errors import MessageError

            raise MessageError(f"{key}: unreadable")
        return real_fetch(self, key)

    monkeypatch.setattr(MaildirFolder, "fetch", flaky)
    result = CliRunner().invoke(cli, ["pull", str(env / "src"), str(env / "dst")])
    assert result.exit_code == 1
    assert "errors 1" in result.output
    monkeypatch.setattr(MaildirFolder, "fetch", real_fetch)
    assert run("pull", str(env / "src"), str(env / "dst")).exit_code == 0
    assert len(bodies(str(env / "dst"))["INBOX"]) == 3


def test_quiet_and_verbose(env):
    make_maildir(env / "src", {"INBOX": 2})
    quiet = run("-q", "pull", str(env / "src"), str(env / "dst"))
    assert quiet.output == ""
    make_maildir(env / "src", {"INBOX": 1}, tag=" new")
    verbose = run("-v", "pull", "--progress", str(env / "src"), str(env / "dst"))
    assert "copied remote " in verbose.output  # one line per action


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_after_the_command_mean_the_same(env, where):
    def with_option(option, *rest):
        return [option, *rest] if where == "before" else [rest[0], option, *rest[1:]]

    make_maildir(env / "src", {"INBOX": 2})
    quiet = run(*with_option("-q", "pull", str(env / "src"), str(env / "dst")))
    assert quiet.exit_code == 0 and quiet.output == ""
    make_maildir(env / "src", {"INBOX": 1}, tag=" new")
    verbose = run(*with_option("-v", "pull", str(env / "src"), str(env / "dst")))
    assert "copied remote " in verbose.output
    debug = run(*with_option("-vv", "list", str(env / "src")))
    assert debug.exit_code == 0
    assert run(*with_option("-q", "list", str(env / "src"))).stderr == ""


def test_real_process_keeps_files_private_under_umask_0(env):
    make_maildir(env / "src", {"INBOX": 1})
    code = (
        "import os, sys; os.umask(0); from mailsync.cli import main; sys.argv[0]='mailsync'; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "pull", str(env / "src"), f"mbox:{env / 'box'}"],
        env={**os.environ, "XDG_STATE_HOME": str(env / "state")},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    for path in [*(env / "state").rglob("*"), *(env / "box").rglob("*"), env / "box"]:
        mode = path.stat().st_mode & 0o777
        assert mode in (0o600, 0o700), f"{path} has mode {oct(mode)}"


def test_python_dash_m_entry_point(env):
    proc = subprocess.run(
        [sys.executable, "-m", "mailsync", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "mailsync" in proc.stdout


def test_jobs_syncs_folders_in_parallel_with_one_state(env):
    folders = {f"F{i}": 3 + i for i in range(6)}
    make_maildir(env / "src", folders)
    result = run("pull", "--jobs", "3", str(env / "src"), f"mbox:{env / 'dst'}")
    assert result.exit_code == 0, result.output
    assert bodies(f"mbox:{env / 'dst'}") == bodies(str(env / "src"))
    again = run("pull", "-j", "3", str(env / "src"), f"mbox:{env / 'dst'}")
    assert again.output.count("copied 0 to local") == 6
    status = json.loads(run("status", "--json").output)
    counts = {f["folder"]: f["local"] for f in status["channels"][0]["folders"]}
    assert counts == folders
    assert CliRunner().invoke(cli, ["pull", "--jobs", "0", "a", "b"]).exit_code == 2


def test_state_dir_option_and_config_state_dir(env):
    make_maildir(env / "src", {"INBOX": 2})
    custom = env / "custom-state"
    result = run("--state-dir", str(custom), "pull", str(env / "src"), str(env / "dst"))
    assert result.exit_code == 0
    assert [p.suffix for p in custom.iterdir() if p.suffix == ".db"] == [".db"]
    assert not (env / "state").exists()
    status = json.loads(run("--state-dir", str(custom), "status", "--json").output)
    assert status["channels"][0]["folders"][0]["local"] == 2
    path = write_config(env, f'[general]\nstate_dir = "{env / "from-config"}"\n')
    assert run("--config", path, "pull", str(env / "src"), str(env / "dst2")).exit_code == 0
    assert any(p.suffix == ".db" for p in (env / "from-config").iterdir())


def test_password_command_is_used_and_never_printed(env, monkeypatch):
    from mailsync import net

    seen = {}

    def fake_open_store(url, options=None, read_only=False, name=None):
        endpoint = net.parse_endpoint(url, options)
        seen["password"] = net.get_password(endpoint)
        raise ConnectError(f"cannot connect to {endpoint.host}: refused")

    import mailsync.channel as channelmod

    monkeypatch.setattr(channelmod, "open_store", fake_open_store)
    monkeypatch.delenv("MAILSYNC_PASSWORD", raising=False)
    # --password-command reaches mailsync.net through the environment: restore it after
    monkeypatch.setenv("MAILSYNC_PASSWORD_COMMAND", "")
    result = CliRunner().invoke(
        cli,
        ["-vv", "--password-command", "echo s3cret-pw", "pull", "imaps://a@h.example", "d"],
    )
    assert seen["password"] == "s3cret-pw"
    assert result.exit_code == 3
    assert "s3cret-pw" not in result.output
