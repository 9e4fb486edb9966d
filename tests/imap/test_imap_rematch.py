"""After a UIDVALIDITY change, messages are re-matched by header and size first, so the
bodies are not downloaded again (only ambiguous ones are, to compare their content)."""

from __future__ import annotations

import json

from imaptools import Msg, count_files, message, run, seed

from mailsync.stores.imap import IMAPFolder


def test_uidvalidity_change_rematches_without_downloading_bodies(
    dovecot_server, dovecot_user, mailenv, tmp_path, monkeypatch
):
    server, user = dovecot_server, dovecot_user
    twins = [Msg(message(99)), Msg(message(99))]  # identical: only content can tell them
    seed(server, user, {"INBOX": [Msg(message(i)) for i in range(6)] + twins})
    url = f"{server.url('imaps', user)}?cafile={server.cafile}"
    dest = tmp_path / "Mail"
    first = run("pull", url, f"maildir:{dest}", password=user.password)
    assert first.exit_code == 0, first.output
    server.change_uidvalidity(user, "INBOX")

    downloaded = []
    real = IMAPFolder.fingerprints

    def spy(self, keys):
        keys = list(keys)
        downloaded.extend(keys)
        return real(self, keys)

    monkeypatch.setattr(IMAPFolder, "fingerprints", spy)
    again = run("pull", "--json", url, f"maildir:{dest}", password=user.password)
    assert again.exit_code == 0, again.output
    folder = json.loads(again.stdout)["channels"][0]["folders"][0]
    assert folder["copied_a_to_b"] == 0 and folder["linked"] == 0
    assert any("8 messages re-matched" in note for note in folder["notes"])
    assert len(downloaded) == 2  # only the two identical twins needed their bodies
    assert count_files(dest) == 8
