"""Locks on an mbox file, taken as mutt, procmail and Python's mailbox module take them:
lockf() and flock() on the open file, then a ``FILE.lock`` dotlock holding the locker's
pid.  A dotlock left by a crash (its process gone, or older than the stale age) is
removed; waiting for any lock ends at a deadline, with a FolderError that says so.
What a lock protects (the journal, the rewrite, the index) is mbox_folder.py's.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time

from mailsync import files
from mailsync.errors import FolderError

LOCK_SUFFIX = ".lock"

log = logging.getLogger("mailsync.stores.mbox")


class MboxLocks:
    """The locks of the mbox file `path`, for one holder at a time."""

    def __init__(self, path: str):
        self.path = path
        self.lock_path = path + LOCK_SUFFIX
        self.dotlocked = False  # the dotlock is ours, to remove on release

    def take(self, fd: int, exclusive: bool, deadline: float, poll: float, stale_age: float):
        """The kernel locks on `fd` (the open file), then the dotlock; polling every
        `poll` seconds until `deadline` (time.monotonic()).  A reader that may not
        create the dotlock (a directory it cannot write) makes do with the kernel locks."""
        self._kernel_lock(fd, exclusive, deadline, poll)
        self._take_dotlock(exclusive, deadline, poll, stale_age)

    def release_dotlock(self) -> None:
        """Remove the dotlock if it is ours; the kernel locks go when the file is closed."""
        if self.dotlocked:
            self.dotlocked = False
            try:
                os.unlink(self.lock_path)
            except FileNotFoundError:
                pass

    def _kernel_lock(self, fd: int, exclusive: bool, deadline: float, poll: float) -> None:
        for lock in (fcntl.lockf, fcntl.flock):
            mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            while True:
                try:
                    lock(fd, mode)
                    break
                except OSError as exc:
                    if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        break  # the filesystem has no such locks; the dotlock still holds
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise FolderError(f"cannot lock {self.path}: {exc.strerror or exc}")
                    if time.monotonic() >= deadline:
                        raise FolderError(
                            f"{self.path} is locked by another program; try again later"
                        )
                    time.sleep(poll)

    def _take_dotlock(
        self, exclusive: bool, deadline: float, poll: float, stale_age: float
    ) -> None:
        """FILE.lock, holding our pid from the moment it exists: it is written as a
        private file of its own first and then linked to the lock's name (as liblockfile
        does), so a kill -9 at any moment never leaves an empty dotlock, which no one
        could tell from a live one until it is stale_age old.  Where the filesystem
        cannot link, the dotlock is created in place (O_EXCL) and the pid written after."""
        while True:
            try:
                taken = self._link_dotlock()
            except FileExistsError:
                if self._stale_dotlock(stale_age):
                    continue
                if time.monotonic() >= deadline:
                    raise FolderError(
                        f"{self.path} is locked by another program ({self.lock_path}); "
                        "try again later"
                    )
                time.sleep(poll)
                continue
            except OSError as exc:
                if not exclusive and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return  # reading a directory we may not write: the kernel lock must do
                raise FolderError(
                    f"cannot create lock file {self.lock_path}: {exc.strerror or exc}"
                )
            if taken:
                self.dotlocked = True
                return

    def _link_dotlock(self) -> bool:
        """Take the dotlock (True), or FileExistsError while another holds it; OSError
        for anything else.  False never: the loop above is simpler with a bool."""
        directory, base = os.path.split(self.lock_path)
        tmp = os.path.join(directory or ".", f".{base}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            files.FILE_MODE,
        )
        try:
            try:
                os.fchmod(fd, files.FILE_MODE)
                files.write_all(fd, b"%d\n" % os.getpid())
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.lock_path)
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                return self._create_dotlock()  # a filesystem without hard links
            return True
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _create_dotlock(self) -> bool:
        lfd = os.open(
            self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, files.FILE_MODE
        )
        try:
            os.fchmod(lfd, files.FILE_MODE)
            files.write_all(lfd, b"%d\n" % os.getpid())
        except OSError:
            pass  # an empty dotlock still locks
        finally:
            os.close(lfd)
        return True

    def _stale_dotlock(self, stale_age: float) -> bool:
        """Remove the dotlock if it was left by a crash; True if it is (now) gone."""
        try:
            st = os.stat(self.lock_path)
            with open(self.lock_path, "rb") as f:
                text = f.read(32)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        why = None
        fields = text.split()
        if time.time() - st.st_mtime > stale_age:
            why = f"older than {stale_age:.0f} s"
        else:
            if fields and fields[0].isdigit() and int(fields[0]) > 0:
                pid = int(fields[0])
                if not files.pid_alive(pid):
                    why = f"process {pid} is gone"
        if why is None:
            return False
        log.warning("removing stale lock %s (%s)", self.lock_path, why)
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        if fields and fields[0].isdigit() and not files.pid_alive(int(fields[0])):
            self._remove_leftovers(int(fields[0]))
        return True

    def _remove_leftovers(self, pid: int) -> None:
        """The private file a crashed holder (`pid`, gone) may have left beside the lock:
        _link_dotlock's ``.NAME.lock.PID.THREAD``."""
        directory, base = os.path.split(self.lock_path)
        prefix = f".{base}.{pid}."
        try:
            with os.scandir(directory or ".") as entries:
                leftovers = [e.path for e in entries if e.name.startswith(prefix)]
        except OSError:
            return
        for path in leftovers:
            try:
                os.unlink(path)
            except OSError:
                pass
