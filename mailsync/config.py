"""The TOML config file and the settings it yields.

    [store.work]
    url = "imaps://alice@mail.example.com"
    password_command = "pass show mail/work"

    [store.backup]
    url = "maildir:~/Mail/work"

    [channel.work]
    remote = "work"
    local = "backup"
    direction = "pull"          # pull | push | both
    delete = "keep"             # keep | propagate
    folders = ["*", "!Trash"]

Every problem found is reported at once, each with its line number.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from mailsync.errors import ConfigError
from mailsync.folder_names import compile_rename
from mailsync.policy import DELETE_POLICIES, DIRECTIONS
from mailsync.stores import split_url

# Options a [store.NAME] table may carry, by URL scheme.
NETWORK_OPTIONS = {"user", "password_command", "tls", "cafile", "timeout"}
#: How an IMAP or POP3 store gets OAuth2 tokens (read by tokens.token_source; here so that
#: reading the config needs neither it nor ssl).
TOKEN_OPTIONS = (
    "token_command",
    "oauth2",
    "client_id",
    "client_secret",
    "client_secret_command",
    "tenant",
    "scope",
    "grant",
    "token_url",
    "device_url",
    "authorize_url",
    "oauth2_cafile",
)
OAUTH_STORE_OPTIONS = NETWORK_OPTIONS | {"auth", *TOKEN_OPTIONS}
POP_OPTIONS = OAUTH_STORE_OPTIONS | {"delete", "delete_after_days", "max_size"}
STORE_OPTIONS = {
    "maildir": {"layout"},
    "mbox": set(),
    "memory": set(),
    "imap": OAUTH_STORE_OPTIONS | {"throttle_wait", "gmail_labels"},
    "imaps": OAUTH_STORE_OPTIONS | {"throttle_wait", "gmail_labels"},
    "pop3": POP_OPTIONS,
    "pop3s": POP_OPTIONS,
    "ews": NETWORK_OPTIONS
    | {
        "auth",
        "items",
        "autodiscover",
        "address",
        "hard_delete",
        "client_id",
        "tenant_id",
        "client_secret",
        "token_command",
    },
    # (the OAuth2 options are tokens.OPTIONS, not imported here: start-up time)
    "graph": NETWORK_OPTIONS
    | {
        "items",
        "hard_delete",
        "calendar_window",
        "token_command",
        "oauth2",
        "client_id",
        "client_secret",
        "client_secret_command",
        "tenant",
        "scope",
        "grant",
        "token_url",
        "device_url",
        "authorize_url",
        "oauth2_cafile",
    },
}
CHANNEL_KEYS = {"remote", "local", "direction", "delete", "folders", "folder", "rename", "items"}
ITEM_SCHEMES = ("ews", "graph")  # stores that hold calendars and contacts (`items`)
GENERAL_KEYS = {"state_dir"}


@dataclass
class StoreConfig:
    name: str
    url: str
    options: dict = field(default_factory=dict)


@dataclass
class ChannelConfig:
    name: str
    remote: StoreConfig
    local: StoreConfig
    direction: str = "both"
    delete: str | None = None  # None: the command's default
    folders: list[str] = field(default_factory=lambda: ["*"])
    folder: str | None = None  # the local folder the remote INBOX goes to (POP3)
    # rename = [["regex", "replacement"], ...]: SOURCE folder names -> DEST (folder_names).
    rename: tuple[tuple[re.Pattern[str], str], ...] = ()


POP_SCHEMES = ("pop3", "pop3s")


def pop_problems(url_a: str, url_b: str, direction: str, delete: str | None) -> list[str]:
    """What a channel (or an ad-hoc run) with a POP3 store may not do: POP3 is a
    source only, and its deletions are the store's delete options, never propagated."""
    out = []
    if split_url(url_b)[0] in POP_SCHEMES:
        out.append("a POP3 store can only be the remote side (the source) of a pull")
    if split_url(url_a)[0] in POP_SCHEMES:
        if direction != "pull":
            out.append(
                f'a POP3 store can only be pulled from (direction = "pull"), not {direction!r}'
            )
        if delete == "propagate":
            out.append(
                "deletions are never propagated to or from a POP3 store; to delete from the "
                'server set delete = "after-download" or delete_after_days on the store'
            )
    return out


@dataclass
class Config:
    path: str | None = None
    stores: dict[str, StoreConfig] = field(default_factory=dict)
    channels: dict[str, ChannelConfig] = field(default_factory=dict)
    state_dir: str | None = None


def default_config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "mailsync", "config.toml")


def _line_finder(text: str):
    """(table, key) -> line number, found by a light scan of the TOML text."""
    lines: dict[tuple[str, str], int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            table = header.group(1).replace('"', "").replace("'", "")
            lines.setdefault((table, ""), number)
            continue
        key = re.match(r"^([A-Za-z0-9_\-\"']+)\s*=", stripped)
        if key:
            lines.setdefault((table, key.group(1).strip("\"'")), number)
    return lambda table, key="": lines.get((table, key)) or lines.get((table, ""))


def load(path: str | None) -> Config:
    """Read the config; a missing default file is an empty config."""
    explicit = path is not None
    path = path or default_config_path()
    if not os.path.exists(path):
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return Config()
    import tomllib  # only when there is a file: 2.5 ms of start-up otherwise

    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}")
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}")
    return parse(data, raw.decode("utf-8"), path)


def _token_problem(name: str, scheme: str, options: dict) -> str | None:
    """What is wrong with a store's OAuth2 settings (tokens.token_source's ConfigError),
    or None; nothing is read or run."""
    from mailsync import tokens

    try:
        tokens.token_source(name, "user", dict(options), keyring=None, protocol=scheme.rstrip("s"))
    except ConfigError as error:
        return str(error)
    return None


def parse(data: dict, text: str = "", path: str = "config") -> Config:
    where = _line_finder(text)
    problems: list[str] = []

    def problem(table: str, key: str, message: str) -> None:
        line = where(table, key)
        problems.append(f"{path}:{line or '?'}: {message}")

    config = Config(path=path)
    for top in data:
        if top not in ("store", "channel", "general"):
            problem(top, "", f"unknown section [{top}]; expected [store.NAME] or [channel.NAME]")
    general = data.get("general", {})
    for key in general:
        if key not in GENERAL_KEYS:
            problem("general", key, f"unknown key {key!r} in [general]")
    config.state_dir = general.get("state_dir")

    for name, table in (data.get("store") or {}).items():
        section = f"store.{name}"
        if not isinstance(table, dict):
            problem("store", name, f"store.{name} must be a table")
            continue
        url = table.get("url")
        if not isinstance(url, str) or not url:
            problem(section, "", f'[{section}] needs a url, e.g. url = "maildir:~/Mail"')
            continue
        try:
            scheme = split_url(url)[0]
        except ConfigError as error:
            problem(section, "url", str(error))
            continue
        allowed = STORE_OPTIONS.get(scheme, set())
        for key in table:
            if key != "url" and key not in allowed:
                choices = ", ".join(sorted(allowed)) or "none"
                problem(
                    section,
                    key,
                    f"unknown key {key!r} for a {scheme} store (allowed: url, {choices})",
                )
        options = {k: v for k, v in table.items() if k != "url"}
        if scheme in ("imap", "imaps", "pop3", "pop3s") and any(
            k in options for k in TOKEN_OPTIONS
        ):
            oauth_problem = _token_problem(name, scheme, options)
            if oauth_problem:
                key = next((k for k in TOKEN_OPTIONS if k in options), "")
                problem(section, key, oauth_problem)
        if scheme == "maildir" and options.get("layout", "verbatim") not in (
            "verbatim",
            "maildir++",
        ):
            problem(section, "layout", 'layout must be "verbatim" or "maildir++"')
        config.stores[name] = StoreConfig(name, url, options)

    for name, table in (data.get("channel") or {}).items():
        section = f"channel.{name}"
        if not isinstance(table, dict):
            problem("channel", name, f"channel.{name} must be a table")
            continue
        for key in table:
            if key not in CHANNEL_KEYS:
                problem(
                    section,
                    key,
                    f"unknown key {key!r} in [{section}] "
                    f"(allowed: {', '.join(sorted(CHANNEL_KEYS))})",
                )
        sides = {}
        for side in ("remote", "local"):
            ref = table.get(side)
            if not isinstance(ref, str):
                problem(section, side, f'[{section}] needs {side} = "STORE" or a store URL')
            elif ref in config.stores:
                sides[side] = config.stores[ref]
            elif ":" in ref or "/" in ref:
                try:
                    split_url(ref)
                    sides[side] = StoreConfig(ref, ref)
                except ConfigError as error:
                    problem(section, side, str(error))
            else:
                problem(section, side, f"{side} = {ref!r}: no [store.{ref}] in the config")
        if "items" in table and "remote" in sides:
            # The channel's `items` over its remote store's (which other channels share).
            remote = sides["remote"]
            if split_url(remote.url)[0] not in ITEM_SCHEMES:
                problem(section, "items", "items applies to an ews:// or graph:// remote store")
            else:
                options = {**remote.options, "items": table["items"]}
                sides["remote"] = StoreConfig(remote.name, remote.url, options)
        is_pop = "remote" in sides and split_url(sides["remote"].url)[0] in POP_SCHEMES
        direction = table.get("direction", "pull" if is_pop else "both")
        if direction not in DIRECTIONS:
            problem(section, "direction", f"direction must be one of {', '.join(DIRECTIONS)}")
        delete = table.get("delete")
        if delete is not None and delete not in DELETE_POLICIES:
            problem(section, "delete", f"delete must be one of {', '.join(DELETE_POLICIES)}")
        folders = table.get("folders", ["*"])
        if isinstance(folders, str):
            folders = [folders]
        if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
            problem(section, "folders", 'folders must be a list of patterns, e.g. ["*"]')
            folders = ["*"]
        folder = table.get("folder")
        if folder is not None and (
            not isinstance(folder, str)
            or not folder.strip("/")
            or any(part in ("", ".", "..") for part in folder.split("/"))
            or any(ord(c) < 32 or ord(c) == 127 for c in folder)
        ):
            problem(section, "folder", 'folder must be a local folder name, e.g. "POP/provider"')
            folder = None
        rename: tuple[tuple[re.Pattern[str], str], ...] = ()
        if "rename" in table:
            try:
                rename = compile_rename(table["rename"], f"[{section}]")
            except ConfigError as error:
                problem(section, "rename", str(error))
        if len(sides) == 2:
            for text in pop_problems(sides["remote"].url, sides["local"].url, direction, delete):
                problem(section, "remote", text)
            config.channels[name] = ChannelConfig(
                name, sides["remote"], sides["local"], direction, delete, folders, folder, rename
            )

    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the config:\n" + "\n".join(problems))
    return config
