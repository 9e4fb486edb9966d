"""Following renamed folders: a folder whose name changed keeps its state, and its local
folder follows.

* A move of a local folder that a killed run left unfinished is finished first
  (State.moves(): recorded before the disk was touched).
* A local store that names a folder differently now (its former_names()) changes only
  the state's local name.
* A remote folder whose id (folder_ids) or former name (former_names: an IMAP namespace
  prefix no longer in names) the state knows under another name was renamed: its state
  follows, so nothing is copied again.
* The local folder of such a folder moves to the remote name, subfolders with it, where
  the local store can rename and nothing is in the way; otherwise the old local name
  stays, with a note, and folders.map_folders() pairs the remote folder with it.

With --dry-run nothing is written or moved: the renames are only told.  The channel
runner (sync.py) calls follow_renames() once per run, before it chooses the folders.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from mailsync.crashhook import step
from mailsync.errors import FolderError, RenameRefused
from mailsync.folders import FolderMap, follows
from mailsync.state import FolderState, State
from mailsync.stores.base import Store

log = logging.getLogger("mailsync")


@dataclass
class Renames:
    """What following the renames did and found, for the rest of the run."""

    rows: list[FolderState]  # the state's folders, under their names after the renames
    former: dict[str, str]  # the remote store's former_names()
    renamed: dict[int, str] = field(default_factory=dict)  # folder id -> old remote name
    ids: dict[str, str] = field(default_factory=dict)  # remote folder ids, where asked for
    # --dry-run: remote name -> the (name_a, name_b) its state has, where a real run would
    # have renamed it
    state_names: dict[str, tuple[str, str]] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)  # remote name -> why not synced
    notes: dict[str, list[str]] = field(default_factory=dict)  # remote name -> notes

    @property
    def known(self) -> set[str]:
        """The remote names the state has a folder for."""
        return {f.name_a for f in self.rows}


def follow_renames(
    state: State,
    stores: dict[str, Store],
    selection: FolderMap,
    existing: dict[str, set[str]],
    dry_run: bool,
) -> Renames:
    """Follow the renames (see the module's docstring).  `selection`: the job's channel
    map and patterns (which folders ids are asked for); `existing`: the folder names of
    each side, of which side b's is listed again if a local folder moved."""
    return _Follower(state, stores, selection, dry_run).run(existing)


class _Follower:
    def __init__(self, state: State, stores: dict[str, Store], selection: FolderMap, dry_run: bool):
        self.state = state
        self.stores = stores
        self.selection = selection
        self.dry_run = dry_run

    def run(self, existing: dict[str, set[str]]) -> Renames:
        rows = self.state.folders()
        before = {f.id: (f.name_a, f.name_b) for f in rows}
        self.result = result = Renames(rows, {})
        moved = self._finish_moves(rows)
        self._local_renames(rows, existing["b"])
        result.former = self.stores["a"].former_names()
        result.renamed = self._remote_renames(rows, existing["a"], result.former)
        moved = self._move_local(rows, set(existing["b"]), result.former) or moved
        if moved:
            existing["b"] = set(self.stores["b"].list_folders())
        if self.dry_run:
            for folder in rows:
                if (folder.name_a, folder.name_b) != before[folder.id]:
                    result.state_names[folder.name_a] = before[folder.id]
        return result

    def _note(self, name: str, note: str) -> None:
        self.result.notes.setdefault(name, []).append(note)

    def _finish_moves(self, rows: list[FolderState]) -> bool:
        moved = False
        for move_id, old, new in self.state.moves():
            if self.dry_run:
                self._block(
                    rows, old, f"an interrupted run was moving local folder {old!r} to {new!r}"
                )
                continue
            log.info("finishing the move of local folder %r to %r", old, new)
            moved = self._move(rows, move_id, old, new, fresh=False) or moved
        return moved

    def _block(self, rows: list[FolderState], old: str, why: str) -> None:
        """The folders whose local folders are `old` or below it are not synced now."""
        for folder in rows:
            if folder.name_b == old or folder.name_b.startswith(old + "/"):
                self.result.blocked[folder.name_a] = f"{folder.name_a}: {why}"

    def _move(self, rows: list[FolderState], move_id: int, old: str, new: str, fresh: bool) -> bool:
        """Move local folder `old` (and those below it) to `new`, as journaled under
        `move_id`, then record it.  A move the store refused before touching anything
        is forgotten (the folder keeps its name); any other failure leaves the journal
        for the next run and the folders unsynced in this one."""
        try:
            self.stores["b"].rename_folder(old, new)
        except RenameRefused as error:
            if not fresh:  # a resumed move may be half done: only finishing it is safe
                self._block(rows, old, str(error))
                log.error("%s", error)
                return False
            self.state.begin()
            self.state.drop_move(move_id)
            self.state.commit()
            note = f"its local folder stays {old!r}: {error}"
            log.warning("%s: %s", new, note)
            self._note(new, note)
            return False
        except FolderError as error:
            self._block(rows, old, str(error))
            log.error("%s", error)
            return False
        step("move folder")
        self.state.begin()
        self.state.finish_move(move_id, old, new)
        self.state.commit()
        step("move recorded")
        for folder in rows:
            if folder.name_b == old or folder.name_b.startswith(old + "/"):
                folder.name_b = new + folder.name_b[len(old) :]
        return True

    def _local_renames(self, rows: list[FolderState], local: set[str]) -> None:
        """A local store that names a folder differently now (an IMAP store on the
        local side, with a namespace prefix): the state's local name follows."""
        by_former = {old: new for new, old in self.stores["b"].former_names().items()}
        if not by_former:
            return
        taken = {(f.name_a, f.name_b) for f in rows}
        for folder in rows:
            new = by_former.get(folder.name_b)
            if new is None or folder.name_b in local or new not in local:
                continue
            if (folder.name_a, new) in taken:
                continue
            taken.add((folder.name_a, new))
            if self.dry_run:
                folder.name_b = new
            else:
                self.state.begin()
                self.state.rename_local(folder, new)
                self.state.commit()

    def _remote_renames(
        self, rows: list[FolderState], remote: set[str], former: dict[str, str]
    ) -> dict[int, str]:
        """Rename in the state each folder renamed on the remote side; returns
        {folder id: its old remote name}."""
        gone = [f for f in rows if f.name_a not in remote]
        if gone or self._ids_missing(rows, remote):
            self.result.ids = self.stores["a"].folder_ids()
        by_id = {ident: name for name, ident in self.result.ids.items()}
        by_former = {old: new for new, old in former.items()}
        renamed: dict[int, str] = {}
        for folder in gone:
            new = by_id.get(folder.ident_a or "") or by_former.get(folder.name_a)
            if new is None or new not in remote:
                continue
            others = [f for f in rows if f.name_a == new]
            if not all(self.state.holds_nothing(f.id) for f in others):
                continue  # the new name has a state of its own: leave both alone
            old = folder.name_a
            if self.dry_run:
                folder.name_a = new
            else:
                self.state.begin()
                for empty in others:
                    self.state.forget_folder(empty)
                self.state.rename_folder(folder, new)
                self.state.commit()
            for empty in others:
                rows.remove(empty)
            renamed[folder.id] = old
            if by_former.get(old) == new:
                note = f"was {old!r} (mailsync now leaves the server's namespace prefix out)"
            else:
                note = f"renamed on the remote side from {old!r}"
            log.warning("%s: %s", new, note)
            self._note(new, note)
        return renamed

    def _ids_missing(self, rows: list[FolderState], remote: set[str]) -> bool:
        """Whether a folder to sync has no id in the state yet (ids may cost a round
        trip: they are asked for only then, or when a known folder is gone)."""
        idents = {f.name_a: f.ident_a for f in rows}
        wanted = self.selection.choose(remote, remote.__contains__)
        return any(not idents.get(name) for name in wanted)

    def _move_local(self, rows: list[FolderState], local: set[str], former: dict[str, str]) -> bool:
        """Move each local folder whose remote folder was renamed; True if one moved.
        Parents go first and take their subfolders along; a folder held back by another
        (a subfolder that moves elsewhere first) is tried again once that one moved."""
        renamed = self.result.renamed
        channel_map = self.selection.channel_map
        counts = Counter(f.name_a for f in rows)
        pending = sorted(
            (
                f
                for f in rows
                if f.name_b != f.name_a and follows(f, channel_map, former, renamed, counts)
            ),
            key=lambda f: (f.name_b.count("/"), f.name_b),
        )
        moved = False
        held: list[tuple[FolderState, str]] = []
        while pending:
            held = []
            progress = False
            for folder in pending:
                old, new = folder.name_b, folder.name_a
                if old == new or new in self.result.blocked:
                    continue  # moved along with its parent, or failed
                why = self._cannot_move(folder, rows, local)
                if why is not None:
                    held.append((folder, why))
                    continue
                if self.dry_run:
                    note = f"its local folder {old!r} would move to {new!r}"
                    log.info("%s: %s", new, note)
                    self._note(new, note)
                    continue
                progress = True
                if not any(n == old or n.startswith(old + "/") for n in local):
                    # Nothing there to move: the folder is created under its new name.
                    self.state.begin()
                    self.state.rename_local(folder, new)
                    self.state.commit()
                    continue
                self.state.begin()
                move_id = self.state.add_move(old, new)
                self.state.commit()
                step("move journaled")
                if self._move(rows, move_id, old, new, fresh=True):
                    moved = True
                    local = {
                        new + n[len(old) :] if n == old or n.startswith(old + "/") else n
                        for n in local
                    }
                    note = f"its local folder moved from {old!r}"
                    log.warning("%s: %s", new, note)
                    self._note(new, note)
            pending = [folder for folder, _ in held] if progress else []
        for folder, why in held:
            note = f"its local folder stays {folder.name_b!r}: {why}"
            if folder.id in renamed:
                log.warning("%s: %s", folder.name_a, note)
                self._note(folder.name_a, note)
            else:
                log.info("%s: %s", folder.name_a, note)
        return moved

    def _cannot_move(
        self, folder: FolderState, rows: list[FolderState], local: set[str]
    ) -> str | None:
        """Why the folder's local folder cannot move to its remote name, or None."""
        old, new = folder.name_b, folder.name_a
        if not self.stores["b"].can_rename:
            return "the local store cannot rename folders"
        if new.startswith(old + "/") or old.startswith(new + "/"):
            return f"{new!r} is above or below it"
        if new in local or any(n.startswith(new + "/") for n in local):
            return f"a local folder {new!r} exists already (move it away and rerun)"
        for row in rows:
            if row is folder:
                continue
            if row.name_b == new or row.name_b.startswith(new + "/"):
                return f"{row.name_b!r} is the local folder of {row.name_a!r}"
            if row.name_b.startswith(old + "/") and row.name_a != new + row.name_b[len(old) :]:
                return f"its subfolder {row.name_b!r} was not renamed alike"
        return None
