"""vdir folders: calendars and address books backed up next to the mail.

A vdir (the format vdirsyncer and khal use) is a directory with one file per item:
``NAME.ics`` for calendar items (iCalendar), ``NAME.vcf`` for contacts (vCard).  A
Maildir tree holds them as folders of their own (``Calendar/``, ``Contacts/``), marked
by a ``.mailsync-vdir`` file that names the kind, so they are listed and reopened as
vdirs, never as Maildirs.  Items have no flags.  Writes go through a temporary file,
fsync and rename, like Maildir messages (mailsync/files.py); files are 0600.

A vdir is a folder kind of the Maildir store, not a store: maildir.py finds and opens
vdirs with this module, which imports nothing of Maildir's.
"""

from __future__ import annotations

import os
import time

from mailsync import files
from mailsync.errors import FolderError, MessageError
from mailsync.message import Body, Info, to_lf
from mailsync.stores.base import Folder

KINDS = {"calendar": ".ics", "contacts": ".vcf"}
MARKER = ".mailsync-vdir"
_counter = 0


def vdir_kind(path: str) -> str | None:
    """The kind of the vdir at `path`, or None if it is none."""
    try:
        with open(os.path.join(path, MARKER), encoding="ascii") as handle:
            kind = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return kind if kind in KINDS else None


def make_vdir(path: str, kind: str) -> None:
    """A vdir of `kind` at `path` (parents too), its marker durable before it returns."""
    files.make_private_dirs(path)
    marker = os.path.join(path, MARKER)
    if vdir_kind(path) != kind:
        files.write_in_place(marker, kind.encode() + b"\n")
        files.fsync_dir(path)
        files.fsync_dir(os.path.dirname(path))


class VdirFolder(Folder):
    def __init__(self, name: str, path: str, kind: str, read_only: bool = False):
        if kind not in KINDS:
            raise FolderError(f"{path}: unknown vdir kind {kind!r}")
        self.name = name
        self.path = path
        self.kind = kind
        self.ext = KINDS[kind]
        self.read_only = read_only
        self._dirty = False

    def list(self) -> dict[str, Info]:
        out = {}
        try:
            entries = list(os.scandir(self.path))
        except OSError as error:
            raise FolderError(f"cannot read {self.path} ({error.strerror})")
        for entry in entries:
            if not entry.name.endswith(self.ext) or entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # removed meanwhile
            out[entry.name] = Info(frozenset(), st.st_size, st.st_mtime)
        return out

    def fetch(self, key: str) -> bytes:
        try:
            with open(os.path.join(self.path, os.path.basename(key)), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise MessageError(f"{self.path}: {key} is gone")
        except ValueError:  # a NUL byte: no file has that name
            raise MessageError(f"{self.path}: no item {key!r}")
        except OSError as error:
            raise MessageError(f"cannot read {key} in {self.path} ({error.strerror})")

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        global _counter
        if self.read_only:
            raise MessageError(f"{self.path}: the store is read-only")
        _counter += 1
        key = f"{int(time.time())}.{os.getpid()}.{_counter}{self.ext}"
        tmp = os.path.join(self.path, f".{key}.tmp")
        ns = int(arrival * 1_000_000_000) if arrival else None
        files.atomic_write(
            tmp, os.path.join(self.path, key), to_lf(data), where=self.path, mtime_ns=ns
        )
        self._dirty = True
        return key

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        if self.read_only:
            raise MessageError(f"{self.path}: the store is read-only")
        # items have no flags

    def persists(self, flag: str) -> bool:
        return False

    def delete(self, key: str) -> str:
        if self.read_only:
            raise MessageError(f"{self.path}: the store is read-only")
        try:
            os.unlink(os.path.join(self.path, os.path.basename(key)))
        except (FileNotFoundError, ValueError):  # gone, or no file has the name (a NUL)
            pass
        except OSError as error:
            raise MessageError(f"cannot delete {key} in {self.path} ({error.strerror})")
        self._dirty = True
        return key

    def flush(self) -> None:
        if self._dirty:
            files.fsync_dir(self.path)
            self._dirty = False
