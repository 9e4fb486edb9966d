"""Store URLs -> Store objects.

``maildir:PATH`` (or a bare path), ``mbox:PATH``, ``memory:NAME``; network schemes are
added by their modules.  Options come from the URL query (``maildir:~/Mail?layout=maildir++``)
or from the config's ``[store.NAME]`` table; the table wins.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

from mailsync.errors import ConfigError
from mailsync.stores.base import Folder, Store

__all__ = ["Folder", "Store", "open_store", "split_url", "canonical_url", "LOCAL_SCHEMES"]

LOCAL_SCHEMES = ("maildir", "mbox", "memory")
NETWORK_SCHEMES = ("imap", "imaps", "pop3", "pop3s", "ews")


def split_url(url: str) -> tuple[str, str, dict[str, str]]:
    """'mbox:~/Mail?x=1' -> ('mbox', '~/Mail', {'x': '1'}).  A bare path is maildir."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in LOCAL_SCHEMES + NETWORK_SCHEMES or len(scheme) == 1:
        scheme, rest = "maildir", url  # bare path (also C:\ style, never on our targets)
    if scheme in NETWORK_SCHEMES:
        return scheme, rest, {}
    path, _, query = rest.partition("?")
    # Not parse_qsl: it reads '+' as a space, and layout=maildir++ must survive.
    options = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        options[unquote(key)] = unquote(value)
    if not path:
        raise ConfigError(f"store URL {url!r} has no path; write e.g. maildir:~/Mail")
    return scheme, path, options


def canonical_url(url: str) -> str:
    """The form state files are keyed by: absolute paths, explicit scheme."""
    scheme, path, options = split_url(url)
    if scheme in ("maildir", "mbox"):
        path = os.path.abspath(os.path.expanduser(path))
        query = "&".join(f"{k}={v}" for k, v in sorted(options.items()))
        return f"{scheme}:{path}" + (f"?{query}" if query else "")
    # Network stores: the account, not how we reach it (cafile=, tls=, timeout= may
    # change without starting a new state).
    return url.split("?", 1)[0].lower() if "@" not in url else _lower_host(url.split("?", 1)[0])


def _lower_host(url: str) -> str:
    head, _, host = url.rpartition("@")
    return f"{head}@{host.lower()}"


def open_store(url: str, options: dict | None = None, read_only: bool = False) -> Store:
    scheme, path, url_options = split_url(url)
    opts = {**url_options, **(options or {})}
    if scheme == "maildir":
        from mailsync.stores.maildir import MaildirStore

        layout = opts.pop("layout", None)  # None: the tree's own
        _no_unknown(url, opts)
        return MaildirStore(os.path.expanduser(path), layout=layout, read_only=read_only)
    if scheme == "mbox":
        from mailsync.stores.mbox import MboxStore

        _no_unknown(url, opts)
        return MboxStore(os.path.expanduser(path), read_only=read_only)
    if scheme == "memory":
        from mailsync.stores.memory import MemoryStore

        return MemoryStore.named(path, read_only=read_only)
    if scheme in ("imap", "imaps"):
        from mailsync.stores.imap import IMAPStore

        return IMAPStore(url, opts, read_only=read_only)
    if scheme in ("pop3", "pop3s"):
        from mailsync.stores.pop3 import POP3Store

        return POP3Store(url, opts, read_only=read_only)
    if scheme == "ews":
        from mailsync.stores.ews import EWSStore

        return EWSStore(url, opts, read_only=read_only)
    raise ConfigError(f"store URL {url!r}: the {scheme}: scheme is not supported yet")


def _no_unknown(url: str, opts: dict) -> None:
    if opts:
        raise ConfigError(f"store {url!r}: unknown option(s) {', '.join(sorted(opts))}")
