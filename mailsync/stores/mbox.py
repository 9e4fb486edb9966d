"""mbox store: the tree of mboxrd files under one root, one file per folder: folder
names, walking the tree, creating and renaming folders.  A folder's file (its index,
appends under a journal, rewrites, locks) is mbox_folder.py's, the format mbox_format.py's.

Layout under the root directory (Thunderbird style, so a folder and its subfolders can
both exist)::

    ROOT/INBOX          folder INBOX
    ROOT/A              folder A
    ROOT/A.sbd/B        folder A/B

Reading also accepts plain directories (mutt style: ``ROOT/lists/foo`` is ``lists/foo``),
and a root that is itself an mbox file is a store holding just INBOX.  A file that holds
mail but does not start with a From_ line (headers first, or text before the first From_
line; see mbox_format.classify()) is a folder too: its messages are read from the first
From_ line on, and its listing reports the bytes before it as a problem (exit 1) until
the file is fixed; rewrites keep them.  A Maildir, an unreadable directory or a mail file with an
unusable name inside the tree is a problem of the store: nothing is left out silently.
"""

from __future__ import annotations

import logging
import os

from mailsync import files
from mailsync.errors import ConfigError, FolderError, RenameRefused, StoreError
from mailsync.stores.base import MAX_FOLDER_DEPTH, Store, path_creation_problem
from mailsync.stores.mbox_folder import MboxFolder
from mailsync.stores.mbox_format import DAMAGED, MBOX, UNREADABLE, classify
from mailsync.stores.mbox_lock import LOCK_SUFFIX

__all__ = ["MboxStore", "MboxFolder"]

log = logging.getLogger(__name__)

SUBDIR_SUFFIX = ".sbd"


def _is_maildir_with_mail(path: str) -> bool:
    """A Maildir (cur/ and new/) with a message in it: mail that is no mbox folder."""
    if not all(os.path.isdir(os.path.join(path, sub)) for sub in ("cur", "new")):
        return False
    for sub in ("cur", "new"):
        try:
            with os.scandir(os.path.join(path, sub)) as entries:
                if any(not entry.name.startswith(".") for entry in entries):
                    return True
        except OSError:
            continue
    return False


def _shorten(text: str, limit: int = 80) -> str:
    """A long path cut for an error line (a tree 1,000 levels deep)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_part(part: str) -> str | None:
    """Why `part` cannot be one component of a folder name, or None."""
    if part in ("", ".", ".."):
        return "it has an empty, '.' or '..' part"
    if any(ord(c) < 32 or ord(c) == 127 for c in part):
        return "it contains control characters"
    if part.endswith(SUBDIR_SUFFIX):
        return f"a part ends in {SUBDIR_SUFFIX!r}, which marks subfolder directories"
    if part.startswith("."):
        return "a part starts with '.', which would make a hidden file"
    if part.endswith(LOCK_SUFFIX):
        return f"a part ends in {LOCK_SUFFIX!r}, which marks lock files"
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    return None


def split_name(name: str) -> list[str]:
    """The parts of a folder name; FolderError if the name is unusable."""
    if not name:
        raise FolderError("invalid folder name '': it is empty")
    if name.startswith("/"):
        raise FolderError(f"invalid folder name {name!r}: it starts with '/'")
    parts = name.split("/")
    if len(parts) > MAX_FOLDER_DEPTH:
        raise FolderError(
            f"invalid folder name {_shorten(name)!r}: it is nested {len(parts)} levels deep, "
            f"and mailsync handles folders at most {MAX_FOLDER_DEPTH} levels deep"
        )
    for part in parts:
        why = _bad_part(part)
        if why:
            raise FolderError(f"invalid folder name {name!r}: {why}")
    return parts


# --- the store --------------------------------------------------------------------------


class MboxStore(Store):
    def __init__(self, path: str, read_only: bool = False):
        self.root = os.path.abspath(path)
        self.url = f"mbox:{path}"
        self.read_only = read_only
        self._folders: dict[str, MboxFolder] = {}

    # A root that is an mbox file is a one-folder store (mbox:~/mbox).
    def _single_file(self) -> bool:
        return os.path.isfile(self.root)

    def list_folders(self) -> list[str]:
        self.problems = []
        if self._single_file():
            return ["INBOX"]
        if not os.path.isdir(self.root):
            # A typo must not pass for an empty source: exit 2.  A missing root mailsync
            # writes to is made when the first folder is.
            if os.path.lexists(self.root):
                raise ConfigError(
                    f"{self.root} is neither an mbox file nor a directory of them; check the path"
                )
            if self.read_only:
                raise ConfigError(f"{self.root} does not exist; check the path")
            return []
        open_paths = {f.path for f in self._folders.values()}
        found: set[str] = set()
        self._walk(found, open_paths, self.problems)
        return sorted(found)

    def _walk(self, found: set[str], open_paths: set[str], problems: list[str]) -> None:
        """Every folder of the tree into `found`; what holds mail but is no folder into
        `problems`.  A loop rather than recursion: a tree a thousand levels deep is
        walked like any other, and what lies deeper than MAX_FOLDER_DEPTH is a problem."""
        pending = [(self.root, "", 0)]  # (directory, its folder name + "/", depth)
        while pending:
            directory, prefix, depth = pending.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                if directory == self.root:
                    raise StoreError(f"cannot read directory {directory}: {exc.strerror or exc}")
                problems.append(
                    f"cannot read directory {directory} ({exc.strerror or exc}): the folders "
                    "in it are not synced; check its permissions"
                )
                continue
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name.endswith(LOCK_SUFFIX):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_file = not is_dir and entry.is_file()
                except OSError:
                    continue
                if (is_dir or is_file) and depth >= MAX_FOLDER_DEPTH:
                    problems.append(
                        f"{_shorten(entry.path)} is nested deeper than {MAX_FOLDER_DEPTH} "
                        "folders: it is not synced; move it up"
                    )
                    continue
                if is_dir:
                    part = name[: -len(SUBDIR_SUFFIX)] if name.endswith(SUBDIR_SUFFIX) else name
                    if _is_maildir_with_mail(entry.path):
                        problems.append(
                            f"{entry.path} is a Maildir inside an mbox tree, which mailsync "
                            f"does not read as part of it; sync it as maildir:{entry.path}"
                        )
                        continue
                    if _bad_part(part):
                        log.warning("skipping %s: its name cannot be a folder name", entry.path)
                        continue
                    pending.append((entry.path, prefix + part + "/", depth + 1))
                elif is_file:
                    if why := _bad_part(name):
                        if classify(entry.path) in (MBOX, DAMAGED):
                            problems.append(
                                f"{entry.path} holds mail but is not synced: its name cannot "
                                f"be a folder name ({why}); rename it"
                            )
                        else:
                            log.warning("skipping %s: its name cannot be a folder name", entry.path)
                        continue
                    real = os.path.realpath(entry.path)
                    if real in open_paths:
                        found.add(prefix + name)
                        continue
                    kind = classify(entry.path)
                    if kind in (MBOX, DAMAGED):
                        found.add(prefix + name)  # (a damaged file's listing says what)
                    elif kind == UNREADABLE:
                        problems.append(
                            f"cannot read {entry.path}: if it is an mbox file, it is not "
                            "synced; check its permissions"
                        )

    def _existing(self, parts: list[str]) -> list[str]:
        """Paths where folder `parts` could be, in order of preference."""
        dirs = [self.root]
        for part in parts[:-1]:
            dirs = [
                cand
                for d in dirs
                for cand in (os.path.join(d, part), os.path.join(d, part + SUBDIR_SUFFIX))
                if os.path.isdir(cand)
            ]
        return [os.path.join(d, parts[-1]) for d in dirs]

    def _new_path(self, parts: list[str]) -> str:
        directory = self.root
        for part in parts[:-1]:
            plain = os.path.join(directory, part)
            directory = plain if os.path.isdir(plain) else plain + SUBDIR_SUFFIX
        return os.path.join(directory, parts[-1])

    def open_folder(self, name: str, create: bool = False, kind: str = "mail") -> MboxFolder:
        if kind != "mail":
            raise FolderError(
                f"{self.url}: cannot hold {kind} items; back them up into a Maildir tree"
            )
        cached = self._folders.get(name)
        if cached is not None and os.path.isfile(cached.path):
            return cached
        parts = split_name(name)
        path: str | None  # the folder's file, once found or made
        if self._single_file():
            if name != "INBOX":
                raise FolderError(
                    f"{self.root} is a single mbox file, which holds only INBOX, not {name}"
                )
            path = self.root
        else:
            path = next((p for p in self._existing(parts) if os.path.isfile(p)), None)
            if path is None:
                path = self._new_path(parts)
                if os.path.isdir(path):
                    raise FolderError(
                        f"cannot use folder {name}: {path} is a directory of folders, not an "
                        "mbox file; pick another name"
                    )
                if not create:
                    raise FolderError(f"{self.url}: no folder {name}")
                if self.read_only:
                    raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
                self._create(path)
        path = os.path.realpath(path)
        if classify(path) not in (MBOX, DAMAGED):
            raise FolderError(
                f'{path} is not an mbox file (it does not start with a "From " line); '
                "mailsync leaves it alone"
            )
        folder = MboxFolder(self, name, path)
        self._folders[name] = folder
        return folder

    def _create(self, path: str) -> None:
        directory = os.path.dirname(path)
        try:
            files.make_private_dirs(directory)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, files.FILE_MODE)
            try:
                os.fchmod(fd, files.FILE_MODE)
            finally:
                os.close(fd)
            files.fsync_dir(directory)
        except FileExistsError:
            pass  # someone made it meanwhile
        except OSError as exc:
            raise FolderError(f"cannot create {path}: {exc.strerror or exc}")

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        if kind != "mail":
            return f"cannot hold {kind} items; back them up into a Maildir tree"
        if self.read_only:
            return "the store is read-only"
        try:
            parts = split_name(name)
        except FolderError as error:
            return str(error)
        if self._single_file():
            return None if name == "INBOX" else f"{self.root} is a single mbox file (INBOX only)"
        path = self._new_path(parts)
        if os.path.isdir(path):
            return f"{path} is a directory of folders, not an mbox file"
        return path_creation_problem(path)

    can_rename = True

    def rename_folder(self, old: str, new: str) -> None:
        """The folder's file and its subfolder directory (``OLD.sbd``) are renamed, so
        every message, and its key (a content hash), stays.  The directory goes first
        and the file last, holding the folder's locks after a crashed run's leftovers
        were repaired; a rerun moves whatever is still at the old name.  Parent
        directories left empty go."""
        if self.read_only:
            raise RenameRefused(f"{self.url}: cannot rename {old}, the store is read-only")
        if self._single_file():
            raise RenameRefused(f"{self.root} is a single mbox file, which holds only INBOX")
        if new.startswith(old + "/"):
            raise RenameRefused(f"{self.url}: cannot move {old} into itself ({new})")
        try:
            old_parts, new_parts = split_name(old), split_name(new)
        except FolderError as error:
            raise RenameRefused(str(error))
        src = next((p for p in self._existing(old_parts) if os.path.isfile(p)), None)
        if src is None:
            return  # moved already, or not there to move
        taken = [p for p in self._existing(new_parts) if os.path.lexists(p)]
        dst = taken[0] if taken else self._new_path(new_parts)
        moves = [(src + SUBDIR_SUFFIX, dst + SUBDIR_SUFFIX), (src, dst)]
        moves = [(a, b) for a, b in moves if os.path.lexists(a)]
        for _src, target in moves:
            if os.path.lexists(target):
                raise RenameRefused(
                    f"{self.url}: cannot rename {old} to {new}: {target} exists; move it away"
                )
        try:
            folder = self.open_folder(old)  # repairs what a crashed append or rewrite left
        except FolderError as error:
            raise RenameRefused(str(error))
        try:
            with folder.locked(exclusive=True):
                files.make_private_dirs(os.path.dirname(dst))
                for a, b in moves:
                    os.rename(a, b)
                    files.fsync_dir(os.path.dirname(a))
                    files.fsync_dir(os.path.dirname(b))
        except OSError as exc:
            raise FolderError(
                f"{self.url}: cannot rename {old} to {new} ({exc.strerror or exc}); fix it "
                "and rerun to finish the move"
            )
        finally:
            for name in [n for n in self._folders if n == old or n.startswith(old + "/")]:
                del self._folders[name]
        directory = os.path.dirname(src)
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    def close(self) -> None:
        error = None
        for folder in self._folders.values():
            try:
                folder.close()
            except Exception as exc:  # close the others first
                error = error or exc
        if error is not None:
            raise error
