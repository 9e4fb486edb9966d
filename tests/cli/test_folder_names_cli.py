"""Folder name rules on the command line and in the config, between local stores: a
channel's rename regular expressions, --map for push (SOURCE is the local side), the
table of usual names, and a bad rule as exit 2 with its line."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_cli import bodies, make_maildir, write_config

from mailsync.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_a_channel_rename_rule_and_the_usual_names(mailenv):
    make_maildir(mailenv / "src", {"INBOX": 1, "Old/2019": 2, "Old/2020": 1, "Sent Items": 1})
    make_maildir(mailenv / "dst", {"Sent": 0})
    write_config(
        mailenv,
        f"""
[channel.move]
remote = "maildir:{mailenv / "src"}"
local = "maildir:{mailenv / "dst"}"
direction = "pull"
rename = [["^Old/(.*)", "Archive/\\\\1"]]
""",
    )
    dry = run("pull", "--dry-run", "move")
    assert dry.exit_code == 0, dry.output
    assert "move: Old/2019 -> Archive/2019 (rename rule ['^Old/(.*)', 'Archive/\\\\1'])" in (
        dry.output
    )
    assert "move: Sent Items -> Sent (a usual name of \\Sent)" in dry.output
    result = run("pull", "--json", "move")
    assert result.exit_code == 0, result.output
    got = bodies(f"maildir:{mailenv / 'dst'}")
    assert {name: len(messages) for name, messages in got.items()} == {
        "INBOX": 1,
        "Archive/2019": 2,
        "Archive/2020": 1,
        "Sent": 1,
    }
    assert run("verify", "move").exit_code == 0
    again = json.loads(run("pull", "--json", "move").output)
    assert sum(f["copied_a_to_b"] for f in again["channels"][0]["folders"]) == 0


def test_push_maps_the_local_sides_folders(mailenv):
    make_maildir(mailenv / "local", {"INBOX": 1, "Projects": 1})
    make_maildir(mailenv / "remote", {"INBOX": 0})
    result = run("push", "--map", "Projects=Work/Projects", mailenv / "local", mailenv / "remote")
    assert result.exit_code == 0, result.output
    assert "Work/Projects -> Projects (--map Projects=Work/Projects)" in result.output
    assert sorted(bodies(f"maildir:{mailenv / 'remote'}")) == ["INBOX", "Work/Projects"]


def test_a_bad_rename_rule_is_exit_2_with_its_line(mailenv):
    path = write_config(
        mailenv,
        f"""[channel.move]
remote = "maildir:{mailenv / "src"}"
local = "maildir:{mailenv / "dst"}"
rename = [["^Old/(.*", "New/\\\\1"]]
""",
    )
    result = run("pull", "move")
    assert result.exit_code == 2
    assert f"{path}:4: [channel.move]: rename rule 1 '^Old/(.*': missing )" in result.output


def test_a_dry_run_with_map_pairs_nothing_for_later_runs(mailenv):
    make_maildir(mailenv / "src", {"INBOX": 1, "Projects": 1})
    src, dst = mailenv / "src", mailenv / "dst"
    dry = run("pull", "--dry-run", "--map", "Projects=Work/Projects", src, dst)
    assert dry.exit_code == 0 and "Projects -> Work/Projects" in dry.output
    result = run("pull", src, dst)
    assert result.exit_code == 0, result.output
    assert sorted(bodies(f"maildir:{dst}")) == ["INBOX", "Projects"]
