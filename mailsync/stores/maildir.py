"""Maildir store: the tree of Maildir folders under one root, one directory per folder:
folder names and the two layouts, what a directory holds, listing, creating and renaming
folders.  A folder's messages are maildir_folder.py's, its keywords maildir_keywords.py's.

Layouts (``maildir:PATH?layout=...``):

* ``verbatim``: folder ``Archive/2019`` is ``ROOT/Archive/2019/{cur,new,tmp}`` and
  INBOX is ``ROOT/INBOX``.  Dovecot reads this with
  ``mail_location = maildir:ROOT:LAYOUT=fs:INBOX=ROOT/INBOX`` (without ``INBOX=`` it
  takes ROOT itself for INBOX and shows it empty).
* ``maildir++``: INBOX is ``ROOT`` itself and ``Archive/2019`` is ``ROOT/.Archive.2019``
  (Courier, Dovecot's default).  Folder names containing "." cannot be represented.

Without ``?layout=``, the tree says (MaildirStore.detect_layout): a root that is itself
a Maildir is maildir++, anything else verbatim.  Whatever a layout does not read but
holds mail (a Maildir root under verbatim, verbatim folders under a maildir++ root,
names no folder can have) is reported as a problem of the listing, never dropped.

Calendars and address books (EWS) live in the verbatim tree as vdirs
(stores/vdir.py): vdir is this store's folder kind for them, not a store of its own, so
this module imports it, never the other way round.
"""

from __future__ import annotations

import contextlib
import os

from mailsync import files
from mailsync.errors import ConfigError, FolderError, RenameRefused, StoreError
from mailsync.stores.base import MAX_FOLDER_DEPTH, Store, path_creation_problem
from mailsync.stores.maildir_folder import MaildirFolder
from mailsync.stores.vdir import VdirFolder, make_vdir, vdir_kind

__all__ = ["MaildirStore", "MaildirFolder", "check_folder_name"]

LAYOUTS = ("verbatim", "maildir++")
SUBDIRS = ("cur", "new", "tmp")


# -- names ----------------------------------------------------------------------------


def check_folder_name(name: str, layout: str = "verbatim") -> list[str]:
    """The name's parts; FolderError if it could escape the root or is unrepresentable."""
    if not isinstance(name, str) or not name:
        raise FolderError("empty folder name; name a folder like INBOX or Archive/2019")
    if name.startswith("/"):
        raise FolderError(f"folder name {name!r} starts with '/'; folder names are relative")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise FolderError(f"folder name {name!r} contains control characters; rename it")
    parts = name.split("/")
    if len(parts) > MAX_FOLDER_DEPTH:
        raise FolderError(
            f"folder name {_shorten(name)!r} is nested {len(parts)} levels deep; mailsync "
            f"handles folders at most {MAX_FOLDER_DEPTH} levels deep"
        )
    for part in parts:
        if part in ("", ".", ".."):
            raise FolderError(
                f"folder name {name!r} has an empty, '.' or '..' part; "
                "use '/'-separated names like Archive/2019"
            )
    if layout == "maildir++":
        if "." in name:
            raise FolderError(
                f"folder name {name!r} contains '.', which the maildir++ layout uses "
                "as its separator; rename the folder or use layout=verbatim"
            )
    elif any(part in SUBDIRS for part in parts):
        raise FolderError(
            f"folder name {name!r} has a part named cur, new or tmp, which the verbatim "
            "layout reserves for messages; rename the folder or use layout=maildir++"
        )
    return parts


def _shorten(text: str, limit: int = 160, tail: int = 40) -> str:
    """A long name or path cut in the middle for an error line (a folder 1,000 levels
    deep): its start, and its last `tail` characters, which name the folder."""
    if len(text) <= limit:
        return text
    return text[: limit - 3 - tail] + "..." + text[len(text) - tail :]


# -- what a directory holds ----------------------------------------------------------


def _is_maildir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cur")) and os.path.isdir(os.path.join(path, "new"))


def _has_entries(path: str) -> bool:
    """Whether the directory holds anything but dot files (False if unreadable too)."""
    try:
        with os.scandir(path) as entries:
            return any(not entry.name.startswith(".") for entry in entries)
    except OSError:
        return False


def _holds_messages(path: str) -> bool:
    return any(_has_entries(os.path.join(path, sub)) for sub in ("cur", "new"))


def _half_maildir(path: str) -> str | None:
    """A problem sentence if `path` has messages in cur/ or new/ but not both
    directories (no Maildir reader takes it for one), else None."""
    for sub, missing in (("cur", "new"), ("new", "cur")):
        if not os.path.isdir(os.path.join(path, missing)) and _has_entries(os.path.join(path, sub)):
            return (
                f"{_shorten(path)} has messages in {sub}/ but no {missing}/ directory, so it "
                f"is no Maildir and is not synced; create {missing}/ (and tmp/) in it"
            )
    return None


def _unreached(top: str, layout: str, hint: str) -> list[str]:
    """Problems for the Maildirs (and vdirs) at or below `top` that the `layout` does not
    read: the directory tree under a maildir++ root, say.  A loop, bounded in depth."""
    out = []
    pending = [(top, 0)]
    seen: set[tuple[int, int]] = set()
    while pending:
        directory, depth = pending.pop()
        if (_is_maildir(directory) and _holds_messages(directory)) or vdir_kind(directory):
            out.append(
                f"{_shorten(directory)} holds mail but is not synced: the {layout} layout "
                f"does not read it there; use ?layout={hint} or move it"
            )
            continue
        if depth >= MAX_FOLDER_DEPTH:
            continue
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name not in SUBDIRS and entry.is_dir():
                        pending.append((entry.path, depth + 1))
        except OSError:
            continue
    return out


# -- store --------------------------------------------------------------------------


class MaildirStore(Store):
    def __init__(self, path: str, layout: str | None = None, read_only: bool = False):
        """`layout` None: the tree's own (see detect_layout)."""
        self.path = path
        self.root = os.path.abspath(path)
        # Whether the tree chose its layout (see former_names).
        self.detected = layout is None
        if layout is None:
            layout = self.detect_layout()
        elif isinstance(layout, str) and layout.replace(" ", "+") in LAYOUTS:
            # URL queries are form-decoded, which turns ?layout=maildir++ into "maildir  "
            layout = layout.replace(" ", "+")
        if layout not in LAYOUTS:
            raise ConfigError(
                f"unknown Maildir layout {layout!r}; choose one of: {', '.join(LAYOUTS)}"
            )
        self.layout = layout
        self.read_only = read_only
        self.url = f"maildir:{path}" + ("" if layout == "verbatim" else f"?layout={layout}")
        self._opened: list[MaildirFolder] = []  # flushed on close: writes run in background
        self._kinds: dict[str, str] | None = None  # vdir folders seen by the last listing

    def detect_layout(self) -> str:
        """The layout of a tree whose URL names none.  A root that is itself a Maildir
        (cur/ and new/ in it) is maildir++: a standard ~/Maildir, INBOX at the root and
        .Sent beside it, or one folder given on its own (OUT/INBOX), which holds just
        INBOX.  Anything else is verbatim, and trees mailsync writes in the verbatim
        layout never have cur/ at the root, so their layout never changes under them.
        A root Maildir holding messages next to verbatim folders is refused (ConfigError):
        either reading would leave mail out, so the URL must say which."""
        if not _is_maildir(self.root):
            return "verbatim"
        verbatim = []
        try:
            with os.scandir(self.root) as entries:
                children = [
                    e.path
                    for e in entries
                    if not e.name.startswith(".") and e.name not in SUBDIRS and e.is_dir()
                ]
        except OSError:
            children = []
        for child in sorted(children):
            if _unreached(child, "maildir++", "verbatim"):
                verbatim.append(os.path.basename(child))
        if not verbatim:
            return "maildir++"
        if not _holds_messages(self.root):
            return "verbatim"  # an empty Maildir at the root leaves nothing out
        raise ConfigError(
            f"{self.root} is itself a Maildir with messages (INBOX in the maildir++ layout) "
            f"and also holds folders in the verbatim layout ({', '.join(verbatim[:3])}"
            f"{', ...' if len(verbatim) > 3 else ''}); say which: "
            f"maildir:{self.path}?layout=maildir++ or maildir:{self.path}?layout=verbatim"
        )

    def close(self) -> None:
        folders, self._opened = self._opened, []
        for folder in folders:
            folder.flush()

    def folder_path(self, name: str) -> str:
        """Where folder `name` lives on disk (FolderError for names that cannot be)."""
        parts = check_folder_name(name, self.layout)
        if self.layout == "maildir++":
            if name == "INBOX":
                return self.root
            return os.path.join(self.root, "." + ".".join(parts))
        return os.path.join(self.root, *parts)

    def list_folders(self) -> list[str]:
        self._check_root()
        problems: list[str] = []
        if self.layout == "maildir++":
            names = self._list_maildirpp(problems)
            self._kinds = {}  # vdirs need layout=verbatim
        else:
            names = self._list_verbatim(problems)
        self.problems = problems
        return sorted(names)

    def _check_root(self) -> None:
        """ConfigError (exit 2) for a root that is no directory, or is missing on a side
        the run only reads: a typo must not pass for an empty source.  A root mailsync
        writes to is made when the first folder is."""
        if os.path.isdir(self.root):
            return
        if os.path.lexists(self.root):
            hint = ""
            try:
                with open(self.root, "rb") as f:
                    if f.read(5) == b"From ":
                        hint = f"; it looks like an mbox file: write mbox:{self.path}"
            except OSError:
                pass
            raise ConfigError(f"{self.root} is not a directory, so no Maildir tree{hint}")
        if self.read_only:
            raise ConfigError(f"{self.root} does not exist; check the path")

    def _unnamable(self, name: str, path: str) -> str | None:
        """Why the directory `path`, found as folder `name`, cannot be that folder."""
        try:
            if self.folder_path(name) == path:
                return None
        except FolderError as error:
            return str(error)
        return f"it would be folder {name!r}, which lives elsewhere"

    def _check(self, name: str, path: str, problems: list[str]) -> bool:
        """Whether the Maildir at `path` is folder `name`.  One that cannot be but holds
        messages becomes a problem: mail is never left out silently."""
        why = self._unnamable(name, path)
        if why is None:
            return True
        if _holds_messages(path):
            problems.append(f"{_shorten(path)} holds mail but is not synced: {why}")
        return False

    def _list_maildirpp(self, problems: list[str]) -> list[str]:
        names = []
        if _is_maildir(self.root):
            names.append("INBOX")
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return names  # no tree yet
        except OSError as e:
            raise StoreError(f"cannot read {self.root} ({e.strerror}): check its permissions")
        for entry in entries:
            try:
                if not entry.is_dir():
                    continue
            except OSError:
                continue
            if not entry.name.startswith("."):
                if entry.name not in SUBDIRS:
                    problems.extend(_unreached(entry.path, "maildir++", "verbatim"))
                continue
            if entry.name in (".", ".."):
                continue
            name = entry.name[1:].replace(".", "/")
            if _is_maildir(entry.path):
                if name == "INBOX":
                    if _holds_messages(entry.path):
                        problems.append(
                            f"{entry.path} holds mail but is not synced: INBOX is the root "
                            "itself in the maildir++ layout; move its messages there"
                        )
                elif self._check(name, entry.path, problems):
                    names.append(name)
            elif half := _half_maildir(entry.path):
                problems.append(half)
        return names

    def _list_verbatim(self, problems: list[str]) -> list[str]:
        names = []
        kinds: dict[str, str] = {}
        seen: set[tuple[int, int]] = set()
        # (directory, its folder name, "" for the root): a loop rather than recursion, so
        # a tree a thousand levels deep is walked like any other.
        if _is_maildir(self.root) and _holds_messages(self.root):
            problems.append(
                f"{self.root} itself holds mail (in its cur/ and new/), which the verbatim "
                "layout does not read; use ?layout=maildir++ (the root is INBOX)"
            )
        pending = [(self.root, "")]
        while pending:
            directory, name = pending.pop()
            if name:
                if name.count("/") >= MAX_FOLDER_DEPTH:
                    problems.append(
                        f"{_shorten(directory)} is nested deeper than {MAX_FOLDER_DEPTH} "
                        "folders: it and its subfolders are not synced; move them up"
                    )
                    continue
                if _is_maildir(directory):
                    if self._check(name, directory, problems):
                        names.append(name)
                elif kind := vdir_kind(directory):
                    if self._check(name, directory, problems):
                        names.append(name)  # a calendar or address book (see stores/vdir.py)
                        kinds[name] = kind
                elif half := _half_maildir(directory):
                    problems.append(half)
            try:
                st = os.stat(directory)
                if (st.st_dev, st.st_ino) in seen:
                    continue  # a symlink loop
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(directory) as it:
                    entries = [e for e in it if e.name not in SUBDIRS]
            except FileNotFoundError:
                continue  # no tree yet, or removed meanwhile
            except OSError as e:
                if not name:
                    raise StoreError(
                        f"cannot read {self.root} ({e.strerror}): check its permissions"
                    )
                problems.append(
                    f"cannot read {directory} ({e.strerror}): the folders in it are not "
                    "synced; check its permissions"
                )
                continue
            for entry in entries:
                try:
                    if entry.is_dir():
                        pending.append((entry.path, f"{name}/{entry.name}" if name else entry.name))
                except OSError:
                    continue
        self._kinds = kinds
        return names

    def open_folder(self, name: str, create: bool = False, kind: str = "mail"):
        path = self.folder_path(name)
        existing = vdir_kind(path)
        if existing is not None or kind != "mail":
            return self._open_vdir(name, path, existing, create, kind)
        dirty: set[str] = set()
        if not _is_maildir(path):
            if not create:
                raise FolderError(f"{self.url}: no folder {name} (no Maildir at {path})")

            def make(path: str) -> None:
                files.make_private_dirs(path, dirty)
                for sub in SUBDIRS:
                    files.make_private_dirs(os.path.join(path, sub), dirty)

            self._create(name, path, make)
        folder = MaildirFolder(self, name, path, dirty)
        if not self.read_only:
            folder._clean_tmp()
            self._opened.append(folder)
        return folder

    def _open_vdir(self, name: str, path: str, existing: str | None, create: bool, kind: str):
        """Calendars and contacts (EWS) live in vdirs inside the tree."""
        if self.layout != "verbatim":
            raise FolderError(f"{self.url}: {kind} folders need layout=verbatim")
        if existing is None:
            if _is_maildir(path):
                raise FolderError(f"{self.url}: {name} is a mail folder, not a {kind} folder")
            if not create:
                raise FolderError(f"{self.url}: no folder {name}")
            self._create(name, path, lambda path: make_vdir(path, kind))
            existing = kind
        return VdirFolder(name, path, existing, read_only=self.read_only)

    def _create(self, name: str, path: str, make) -> None:
        """A missing folder made with make(path), or a FolderError saying why not."""
        if self.read_only:
            raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
        try:
            make(path)
        except OSError as e:
            raise FolderError(f"cannot create {path} ({e.strerror}): check the permissions")

    def folder_kinds(self) -> dict[str, str]:
        if self._kinds is None:
            self.list_folders()
        return dict(self._kinds or {})

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        if self.read_only:
            return "the store is read-only"
        if kind != "mail" and self.layout != "verbatim":
            return f"{kind} folders need layout=verbatim"
        try:
            path = self.folder_path(name)
        except FolderError as error:
            return str(error)
        return path_creation_problem(path)

    def former_names(self) -> dict[str, str]:
        """A tree whose layout was detected as maildir++ (a standard ~/Maildir given
        without ?layout=) was read as verbatim by mailsync 0.1.0, which named its
        folder .Archive.2019 ".Archive.2019" (and left INBOX out): those are the former
        names, so a state from then is moved to the new names, nothing copied twice."""
        if not self.detected or self.layout != "maildir++":
            return {}
        return {
            name: "." + name.replace("/", ".") for name in self.list_folders() if name != "INBOX"
        }

    can_rename = True

    def rename_folder(self, old: str, new: str) -> None:
        """A folder's directory is renamed, so its files (and with them keys, flags and
        dovecot-keywords) stay as they are.  Verbatim: one rename(2) of ROOT/OLD, which
        takes the subfolders (and vdirs) inside it along.  Maildir++: ROOT/.OLD and each
        ROOT/.OLD.* sibling in turn, the folder itself last; a rerun moves whatever is
        still at the old names.  Parent directories left empty (no Maildir) go."""
        if self.read_only:
            raise RenameRefused(f"{self.url}: cannot rename {old}, the store is read-only")
        if "INBOX" in (old, new):
            raise RenameRefused(f"{self.url}: INBOX is not renamed")
        if new.startswith(old + "/"):
            raise RenameRefused(f"{self.url}: cannot move {old} into itself ({new})")
        try:
            moves = self._moves(old, new)
        except FolderError as error:
            raise RenameRefused(str(error))
        for _src, dst in moves:
            if os.path.lexists(dst):
                raise RenameRefused(
                    f"{self.url}: cannot rename {old} to {new}: {dst} exists; move it away"
                )
        try:
            for src, dst in moves:
                dirty: set[str] = set()
                files.make_private_dirs(os.path.dirname(dst), dirty)
                os.rename(src, dst)
                for directory in sorted(dirty | {os.path.dirname(src), os.path.dirname(dst)}):
                    files.fsync_dir(directory)
        except OSError as e:
            raise FolderError(
                f"{self.url}: cannot rename {old} to {new} ({e.strerror or e}); fix it and "
                "rerun to finish the move"
            )
        if self.layout == "verbatim" and moves:
            self._remove_empty_parents(os.path.dirname(moves[0][0]))

    def _moves(self, old: str, new: str) -> list[tuple[str, str]]:
        """(source, destination) of each directory of folder `old` still to be moved
        to `new`, subfolders first."""
        src, dst = self.folder_path(old), self.folder_path(new)  # FolderError for bad names
        if self.layout == "verbatim":
            return [(src, dst)] if os.path.lexists(src) else []
        base_src, base_dst = os.path.basename(src), os.path.basename(dst)
        moves = []
        try:
            with os.scandir(self.root) as entries:
                names = sorted(e.name for e in entries)
        except OSError as e:
            raise FolderError(f"{self.url}: cannot read {self.root} ({e.strerror})")
        for name in names:
            if name.startswith(base_src + "."):
                moves.append(
                    (
                        os.path.join(self.root, name),
                        os.path.join(self.root, base_dst + name[len(base_src) :]),
                    )
                )
        if base_src in names:
            moves.append((src, dst))
        return moves

    def _remove_empty_parents(self, directory: str) -> None:
        """rmdir each directory from `directory` up to the root while it is empty."""
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)
            with contextlib.suppress(OSError):
                files.fsync_dir(directory)
