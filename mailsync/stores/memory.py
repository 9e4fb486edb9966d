"""In-memory store: the reference implementation of the Store contract, used by tests.

``memory:NAME`` opens the same store again within one process, so CLI tests can seed it.
"""

from __future__ import annotations

import itertools
import time

from mailsync.errors import FolderError, MessageError
from mailsync.message import Body, Info, to_lf
from mailsync.stores.base import Folder, Store

_REGISTRY: dict[str, MemoryStore] = {}


class MemoryFolder(Folder):
    def __init__(self, store: MemoryStore, name: str):
        self.store = store
        self.name = name
        self.validity = "1"
        self.messages: dict[str, tuple[Body, frozenset[str], float]] = {}
        self.persisted: frozenset[str] | None = None  # None: every flag
        self.fail_keys: set[str] = set()  # test hook: fetching these raises MessageError

    @property
    def read_only(self) -> bool:  # type: ignore[override]  # (Folder: an attribute; see base)
        return self.store.read_only

    def list(self) -> dict[str, Info]:
        return {
            key: Info(flags, len(data), arrival)
            for key, (data, flags, arrival) in self.messages.items()
        }

    def fetch(self, key: str) -> Body:
        if key in self.fail_keys:
            raise MessageError(f"{self.name}: message {key} cannot be read")
        try:
            return self.messages[key][0]
        except KeyError:
            raise MessageError(f"{self.name}: message {key} is gone")

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        key = str(next(self.store.counter))
        self.messages[key] = (to_lf(data), self._kept(flags), arrival)
        return key

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        self._writable()
        data, flags, arrival = self._get(key)
        self.messages[key] = (data, self._kept((flags - remove) | add), arrival)

    def delete(self, key: str) -> str:
        self._writable()
        self._get(key)
        del self.messages[key]
        return key

    def persists(self, flag: str) -> bool:
        return self.persisted is None or flag in self.persisted

    # test helpers -------------------------------------------------------------
    def add(self, data: bytes, flags=(), arrival: float | None = None) -> str:
        key = str(next(self.store.counter))
        self.messages[key] = (to_lf(data), frozenset(flags), arrival or time.time())
        return key

    def renumber(self) -> None:
        """Simulate a UIDVALIDITY change: every key is replaced."""
        self.validity = str(int(self.validity) + 1)
        self.messages = {str(next(self.store.counter)): v for v in self.messages.values()}

    def _get(self, key):
        try:
            return self.messages[key]
        except KeyError:
            raise MessageError(f"{self.name}: message {key} is gone")

    def _kept(self, flags):
        return frozenset(f for f in flags if self.persists(f))

    def _writable(self):
        if self.read_only:
            raise FolderError(f"{self.name} is read-only")


class MemoryStore(Store):
    def __init__(self, name: str = "", read_only: bool = False):
        self.url = f"memory:{name}"
        self.read_only = read_only
        self.folders: dict[str, MemoryFolder] = {}
        self.counter = itertools.count(1)

    @classmethod
    def named(cls, name: str, read_only: bool = False) -> MemoryStore:
        """The registered store of that name; read_only gives a read-only handle on the
        same messages (each handle keeps its own mode)."""
        if name not in _REGISTRY:
            _REGISTRY[name] = cls(name)
        store = _REGISTRY[name]
        if not read_only:
            return store
        view = cls(name, read_only=True)
        view.folders, view.counter = store.folders, store.counter
        return view

    @staticmethod
    def forget_all() -> None:
        _REGISTRY.clear()

    def list_folders(self) -> list[str]:
        return sorted(self.folders)

    def open_folder(self, name: str, create: bool = False, kind: str = "mail") -> Folder:
        if kind != "mail":
            raise FolderError(
                f"{self.url}: cannot hold {kind} items; back them up into a Maildir tree"
            )
        if name not in self.folders:
            if not create:
                raise FolderError(f"{self.url}: no folder {name}")
            if self.read_only:
                raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
            self.folders[name] = MemoryFolder(self, name)
        folder = self.folders[name]
        if self.read_only and not folder.read_only:
            return ReadOnlyFolder(folder)
        return folder

    def folder(self, name: str) -> Folder:
        """Test helper: the folder, created if missing (read-only in a read-only store)."""
        return self.open_folder(name, create=True)


class ReadOnlyFolder(Folder):
    """A read-only handle on a folder another handle may write to."""

    read_only = True

    def __init__(self, inner: MemoryFolder):
        self.inner = inner
        self.name = inner.name

    @property
    def validity(self) -> str:  # type: ignore[override]  # (Folder: an attribute; see base)
        return self.inner.validity

    def list(self) -> dict[str, Info]:
        return self.inner.list()

    def fetch(self, key: str) -> Body:
        return self.inner.fetch(key)

    def persists(self, flag: str) -> bool:
        return self.inner.persists(flag)

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        raise FolderError(f"{self.name} is read-only")

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        raise FolderError(f"{self.name} is read-only")

    def delete(self, key: str) -> str:
        raise FolderError(f"{self.name} is read-only")
