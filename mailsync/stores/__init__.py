"""Store URLs -> Store objects.

``maildir:PATH`` (or a bare path), ``mbox:PATH``, ``memory:NAME``; network schemes are
added by their modules.  Options come from the URL query (``maildir:~/Mail?layout=maildir++``)
or from the config's ``[store.NAME]`` table; the table wins.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from mailsync.errors import ConfigError
from mailsync.stores.base import Folder, Store

__all__ = [
    "Folder",
    "Store",
    "open_store",
    "split_url",
    "canonical_url",
    "mask_url",
    "LOCAL_SCHEMES",
    "NETWORK_SCHEMES",
]

LOCAL_SCHEMES = ("maildir", "mbox", "memory")
NETWORK_SCHEMES = ("imap", "imaps", "pop3", "pop3s", "ews", "graph")
# What an unknown store type's error offers (memory: is for tests only).
USER_SCHEMES = ("maildir", "mbox", "imaps", "imap", "pop3s", "pop3", "ews", "graph")
# Something that starts like a URL: a scheme (RFC 3986: a letter, then letters, digits,
# '+', '-', '.') and a colon.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def split_url(url: str) -> tuple[str, str, dict[str, str]]:
    """'mbox:~/Mail?x=1' -> ('mbox', '~/Mail', {'x': '1'}).

    How an argument is read, so that a typo is an error and never an empty Maildir:

    * ``SCHEME:REST`` with a known scheme (case-insensitive) is that store.
    * Anything else that starts like a URL -- a word of letters, digits, ``+ - .``
      followed by a colon, as in ``imap5://x``, ``imapx:/host``, ``foo:bar`` -- is
      refused (ConfigError: unknown store type).  As with rsync and scp, a local path
      whose first component holds a colon is written ``./foo:bar`` or
      ``maildir:foo:bar``; a colon further on (``Mail/a:b``, ``./a:b``) needs nothing.
    * Everything else (``/abs``, ``./rel``, ``~/Mail``, ``Mail``) is a Maildir path.
    """
    match = _SCHEME.match(url)
    if match is None:
        scheme, rest = "maildir", url  # a bare path
    else:
        scheme, rest = match.group(1).lower(), url[match.end() :]
        if scheme not in LOCAL_SCHEMES + NETWORK_SCHEMES:
            shown = mask_url(url)
            hint = "" if rest.startswith("//") else f"; a local path is written ./{shown}"
            raise ConfigError(
                f"unknown store type {match.group(1)!r} in {shown!r}; known: "
                f"{', '.join(USER_SCHEMES)}{hint}"
            )
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


def mask_url(url: str) -> str:
    """`url` as messages, logs, JSON reports and the state may show it: a password in the
    user part of a network URL (``imaps://alice:PW@host``, also mistyped as
    ``imap:/alice:PW@host`` or ``imap://:PW@host``) becomes ``****``.  Local paths are
    returned as they are."""
    match = _SCHEME.match(url)
    if match is None or match.group(1).lower() in LOCAL_SCHEMES:
        return url
    start = match.end()
    while start < len(url) and url[start] == "/":
        start += 1
    query = url.find("?", start)
    limit = len(url) if query < 0 else query
    at = url.rfind("@", start, limit)  # the user part ends at the last '@' of the address
    if at >= 0:
        colon = url.find(":", start, at)
        return url if colon < 0 else f"{url[: colon + 1]}****{url[at:]}"
    # No user part: a "port" that is no number may be a password typed without a host
    # (imaps://alice:PW).
    end = min((i for i in (url.find(c, start) for c in "/?#") if i >= 0), default=len(url))
    bracket = url.rfind("]", start, end)
    colon = url.rfind(":", max(start, bracket), end)
    if colon >= 0 and not url[colon + 1 : end].isdigit():
        return f"{url[: colon + 1]}****{url[end:]}"
    return url


def canonical_url(url: str) -> str:
    """The form state files are keyed by: absolute paths, explicit scheme; never a
    password."""
    scheme, path, options = split_url(url)
    if scheme in ("maildir", "mbox"):
        path = os.path.abspath(os.path.expanduser(path))
        query = "&".join(f"{k}={v}" for k, v in sorted(options.items()))
        return f"{scheme}:{path}" + (f"?{query}" if query else "")
    # Network stores: the account, not how we reach it (cafile=, tls=, timeout= may
    # change without starting a new state).
    url = mask_url(url)
    if scheme == "graph":
        # The mailbox's address may be written as it is or with %40: one account, one state.
        head, _, host = url.split("?", 1)[0].rpartition("@")
        return f"{unquote(head)}@{host.lower()}"
    return url.split("?", 1)[0].lower() if "@" not in url else _lower_host(url.split("?", 1)[0])


def _lower_host(url: str) -> str:
    head, _, host = url.rpartition("@")
    return f"{head}@{host.lower()}"


def open_store(
    url: str, options: dict | None = None, read_only: bool = False, name: str | None = None
) -> Store:
    """The store at `url` with `options` (the config's table; they win over the URL's
    query).  `name` is its [store.NAME] when it has one: network stores that keep a
    sign-in (OAuth2) keep it under that name (``mailsync login NAME``)."""
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

        return IMAPStore(url, opts, read_only=read_only, name=name)
    if scheme in ("pop3", "pop3s"):
        from mailsync.stores.pop3 import POP3Store

        return POP3Store(url, opts, read_only=read_only, name=name)
    if scheme == "ews":
        from mailsync.stores.ews import EWSStore

        return EWSStore(url, opts, read_only=read_only)
    if scheme == "graph":
        from mailsync.stores.graph import GraphStore

        return GraphStore(url, opts, read_only=read_only, name=name)
    raise ConfigError(f"store URL {mask_url(url)!r}: the {scheme}: scheme is not supported yet")


def _no_unknown(url: str, opts: dict) -> None:
    if opts:
        raise ConfigError(f"store {url!r}: unknown option(s) {', '.join(sorted(opts))}")
