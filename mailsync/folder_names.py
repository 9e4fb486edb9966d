"""Folder names between providers: which SOURCE folder goes to which DEST folder when
their names differ (``Sent Items`` on Exchange, ``Sent`` on Dovecot).

pair_names() decides, in this order, for each SOURCE folder:

1. explicit rules (NameRules): ``--map 'Old/Name=New/Name'`` (exact names, command line)
   and then the channel's ``rename = [["^Old/(.*)", "New/\\1"]]`` regular expressions
   (the first that matches the whole name), both written as mailsync names (``/``
   between levels; DEST's namespace prefix and delimiter are applied by its store);
2. SPECIAL-USE (RFC 6154) on both sides: a SOURCE folder marked \\Sent goes to the DEST
   folder marked \\Sent, whatever their names;
3. COMMON_NAMES, the usual and localized names of the special folders: a SOURCE folder
   whose role is known (by its attribute or its name) goes to the one DEST folder that
   has that role by its attribute or by its name, and the folders below it go with it
   (``Archive/2019`` -> ``Arkisto/2019``) unless DEST has them, or a SOURCE folder has
   their new name;
4. a level of a name that cannot exist on DEST (it holds DEST's hierarchy delimiter:
   ``a.b`` onto a server whose delimiter is ``.``) is escaped (escape_level: ``%2E``).

Every other folder keeps its name.  Steps 2 and 3 never pair two SOURCE folders with one
DEST folder, nor move a folder away from a DEST folder of its own name; a rule that maps
two folders to one is a ConfigError (exit 2).  The pairs are offered to
folders.map_folders as the remote store's own local names are: they count for folders
the state does not know under another name, so a pairing made once stays.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailsync.errors import ConfigError

if TYPE_CHECKING:
    from mailsync.state import FolderState, State
    from mailsync.stores.base import Store

#: The SPECIAL-USE attributes (RFC 6154) folders are paired by.  \Flagged is left out: a
#: view of flagged mail, not a folder of its own.
ROLES = ("\\Sent", "\\Trash", "\\Drafts", "\\Junk", "\\Archive", "\\All")

#: Usual and localized names of the special folders, compared case-insensitively.
#: Sources: the default folder names of Microsoft Exchange / Outlook in each language
#: (the well-known folders' display names: "Sent Items", "Gesendete Elemente",
#: "Éléments envoyés", ...); Apple Mail ("Sent Messages", "Deleted Messages"); Gmail
#: and Google Mail ("[Gmail]/Sent Mail", "[Google Mail]/Gesendet"); Thunderbird and
#: Dovecot's defaults ("Sent", "Trash", "Drafts", "Junk", "Archives"); German providers
#: (GMX, web.de: "Gesendet", "Papierkorb", "Entwürfe", "Spamverdacht"); Courier/Cyrus
#: setups with the INBOX. prefix (their names reach us without it, imap.py).
COMMON_NAMES: dict[str, tuple[str, ...]] = {
    "\\Sent": (
        "Sent",
        "Sent Items",
        "Sent Messages",
        "Sent Mail",
        "[Gmail]/Sent Mail",
        "[Google Mail]/Sent Mail",
        "[Google Mail]/Gesendet",
        "Gesendet",
        "Gesendete Objekte",
        "Gesendete Elemente",
        "Skickat",
        "Skickade objekt",
        "Éléments envoyés",
        "Envoyés",
        "Elementos enviados",
        "Enviados",
        "Posta inviata",
        "Verzonden items",
        "Verzonden",
        "Sendt",
        "Sendte elementer",
        "Wysłane",
        "Elementy wysłane",
    ),
    "\\Trash": (
        "Trash",
        "Deleted Items",
        "Deleted Messages",
        "Deleted",
        "Bin",
        "[Gmail]/Trash",
        "[Gmail]/Bin",
        "[Google Mail]/Papierkorb",
        "Papierkorb",
        "Gelöschte Elemente",
        "Gelöschte Objekte",
        "Corbeille",
        "Éléments supprimés",
        "Elementos eliminados",
        "Papelera",
        "Cestino",
        "Posta eliminata",
        "Verwijderde items",
        "Prullenbak",
        "Papperskorgen",
        "Borttagna objekt",
        "Kosz",
        "Elementy usunięte",
    ),
    "\\Drafts": (
        "Drafts",
        "[Gmail]/Drafts",
        "[Google Mail]/Entwürfe",
        "Entwürfe",
        "Brouillons",
        "Borradores",
        "Bozze",
        "Concepten",
        "Utkast",
        "Kladder",
        "Kopie robocze",
    ),
    "\\Junk": (
        "Junk",
        "Junk E-mail",
        "Junk Email",
        "Junk-E-Mail",
        "Spam",
        "[Gmail]/Spam",
        "[Google Mail]/Spam",
        "Spamverdacht",
        "Bulk Mail",
        "Courrier indésirable",
        "Correo no deseado",
        "Posta indesiderata",
        "Ongewenste e-mail",
        "Skräppost",
        "Wiadomości-śmieci",
    ),
    "\\Archive": ("Archive", "Archives", "Archiv", "Archivio", "Archivo", "Archief", "Arkiv"),
    "\\All": (
        "All Mail",
        "[Gmail]/All Mail",
        "[Google Mail]/All Mail",
        "[Google Mail]/Alle Nachrichten",
    ),
}


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


_ROLE_OF_NAME = {_fold(name): role for role, names in COMMON_NAMES.items() for name in names}


def role_by_name(name: str) -> str | None:
    """The special folder a name is the usual or a localized name of (COMMON_NAMES)."""
    return _ROLE_OF_NAME.get(_fold(name))


def folder_role(name: str, attribute: str | None) -> tuple[str, str] | None:
    """(role, how it is known: "SPECIAL-USE" or "name") of a folder with this name and
    SPECIAL-USE attribute: by the attribute (one of ROLES), else by the name
    (COMMON_NAMES); None if neither."""
    marked = next((a for a in ROLES if (attribute or "").lower() == a.lower()), None)
    if marked:
        return marked, "SPECIAL-USE"
    role = role_by_name(name)
    return (role, "name") if role is not None else None


# explicit rules -----------------------------------------------------------------------------
@dataclass(frozen=True)
class NameRules:
    """A job's explicit folder name rules, SOURCE name -> DEST name: `exact` from
    ``--map OLD=NEW``, `patterns` from a channel's ``rename`` (regular expression, its
    replacement), tried in order after `exact`."""

    exact: tuple[tuple[str, str], ...] = ()
    patterns: tuple[tuple[re.Pattern[str], str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns)

    def apply(self, name: str) -> tuple[str, str] | None:
        """(DEST name, which rule) for a SOURCE folder a rule names; None if none does.
        ConfigError if a replacement refers to a group its expression does not have,
        or makes no folder name."""
        for old, new in self.exact:
            if name == old:
                return new, f"--map {old}={new}"
        for pattern, replacement in self.patterns:
            if pattern.fullmatch(name) is None:
                continue
            rule = f"rename rule [{pattern.pattern!r}, {replacement!r}]"
            try:
                new = pattern.sub(replacement, name, count=1)
            except (re.error, IndexError) as error:
                raise ConfigError(f"{rule}: {error}")
            _check_name(new, f"{rule} maps {name!r} to {new!r}, which")
            return new, rule
        return None


def _check_name(name: str, what: str) -> None:
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts) or any(
        ord(c) < 32 or ord(c) == 127 for c in name
    ):
        raise ConfigError(f"{what} is not a folder name (levels separated by '/', none empty)")


def parse_map(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``--map OLD=NEW`` values -> (OLD, NEW) pairs; ConfigError naming a bad one.  The
    last ``=`` separates them (a folder name may hold ``=``, rarely)."""
    pairs = []
    for value in values:
        old, sep, new = value.rpartition("=")
        if not sep or not old or not new:
            raise ConfigError(f"--map {value!r}: write it as OLD=NEW, e.g. --map 'Sent Items=Sent'")
        for name in (old, new):
            _check_name(name, f"--map {value!r}: {name!r}")
        pairs.append((old, new))
    olds = Counter(old for old, _ in pairs)
    twice = sorted(old for old, n in olds.items() if n > 1)
    if twice:
        raise ConfigError(f"--map names {twice[0]!r} more than once")
    return tuple(pairs)


def compile_rename(rules: object, where: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    """A channel's ``rename`` value (a list of [regular expression, replacement]) ->
    compiled rules; ConfigError saying `where` and which rule is wrong."""
    if not isinstance(rules, list):
        raise ConfigError(f'{where}: rename must be a list of ["regex", "replacement"] pairs')
    out = []
    for number, rule in enumerate(rules, 1):
        if (
            not isinstance(rule, list)
            or len(rule) != 2
            or not all(isinstance(part, str) for part in rule)
        ):
            raise ConfigError(
                f'{where}: rename rule {number} must be ["regex", "replacement"], not {rule!r}'
            )
        try:
            pattern = re.compile(rule[0])
        except re.error as error:
            raise ConfigError(f"{where}: rename rule {number} {rule[0]!r}: {error}")
        out.append((pattern, rule[1]))
    return tuple(out)


# escaping ------------------------------------------------------------------------------------
def escape_level(level: str, reserved: str) -> str:
    """A folder level that holds a character DEST cannot have in one (its hierarchy
    delimiter: `reserved`) -> the same level with each such character, and each ``%``,
    written as ``%`` and two upper-case hex digits (``a.b`` -> ``a%2Eb``); unescape_level
    undoes it.  A level without such a character is left as it is."""
    if not any(c in level for c in reserved):
        return level
    return "".join(f"%{ord(c):02X}" if c in reserved or c == "%" else c for c in level)


def unescape_level(level: str) -> str:
    """escape_level undone (``%2E`` -> ``.``)."""
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), level)


def escape_name(name: str, reserved: str) -> str:
    return "/".join(escape_level(level, reserved) for level in name.split("/"))


# the pairing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Side:
    """What pair_names needs of one side: its folders, their SPECIAL-USE attributes
    (Store.special_folders), the characters its folder levels cannot hold
    (Store.reserved_in_names)."""

    names: Sequence[str]
    special: Mapping[str, str]
    reserved: str = ""


def pair_names(
    source: Side, dest: Side, rules: NameRules = NameRules()
) -> dict[str, tuple[str, str]]:
    """SOURCE folder -> (its DEST folder, why), for the SOURCE folders whose DEST folder
    has another name (the module's docstring says how).  ConfigError if rules map two
    SOURCE folders to one DEST folder."""
    out: dict[str, tuple[str, str]] = {}
    for name in source.names:
        ruled = rules.apply(name) if rules else None
        if ruled is not None and ruled[0] != name:
            out[name] = ruled
    targets: dict[str, str] = {}
    for name, (new, _) in out.items():
        if new in targets:
            raise ConfigError(
                f"folder rules map both {targets[new]!r} and {name!r} to {new!r}; "
                "map them to different folders"
            )
        targets[new] = name
    ruled_names = {name for name in source.names if rules and rules.apply(name) is not None}

    # Steps 2 and 3: roles.  The DEST folder of a role: the one with its attribute, else
    # the one folder whose name is the role's.
    def roles_of(side: Side) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for name in side.names:
            role = folder_role(name, side.special.get(name))
            if role is not None:
                kind, by = role
                found[name] = (
                    kind,
                    f"SPECIAL-USE {kind}" if by != "name" else f"a usual name of {kind}",
                )
        return found

    dest_roles = roles_of(dest)
    dest_of_role: dict[str, str] = {}
    for role in ROLES:
        by_attribute = [
            n for n, (r, why) in dest_roles.items() if r == role and why.startswith("SPECIAL")
        ]
        by_name = [n for n, (r, _) in dest_roles.items() if r == role]
        chosen = by_attribute if by_attribute else by_name
        if len(chosen) == 1:
            dest_of_role[role] = chosen[0]
    dest_names = set(dest.names)
    wanted: dict[str, list[tuple[str, str]]] = {}
    for name, (role, why) in roles_of(source).items():
        if name in ruled_names or name in dest_names or name == "INBOX":
            continue
        target = dest_of_role.get(role)
        if target is None or target == name:
            continue
        dest_why = dest_roles[target][1]
        reason = why if why == dest_why else f"{why} here, {dest_why} on DEST"
        if why == dest_why and why.startswith("SPECIAL"):
            reason = f"{why} on both sides"
        wanted.setdefault(target, []).append((name, reason))
    taken_by_source = set(source.names)
    for target, claims in wanted.items():
        if target in targets or (target in taken_by_source and target not in out):
            continue  # (a rule's, or a SOURCE folder of that name goes there itself)
        if len(claims) > 1:
            special = [c for c in claims if c[1].startswith("SPECIAL")]
            claims = special if len(special) == 1 else []
        for name, reason in claims:
            out[name] = (target, reason)
            targets[target] = name
    # The folders below a special folder go with it (Archive/2019 -> Arkisto/2019), unless
    # a rule names them, DEST has them under their own name, or the new name is taken.
    by_role = {name: out[name][0] for names in wanted.values() for name, _ in names if name in out}
    for name in source.names:
        if name in out or name in ruled_names or name in dest_names:
            continue
        parents = [p for p in by_role if name.startswith(p + "/")]
        if parents:
            parent = max(parents, key=len)
            target = by_role[parent] + name[len(parent) :]
            if target not in taken_by_source and target not in targets:
                out[name] = (target, f"below {parent}, which goes to {by_role[parent]}")
                targets[target] = name

    # Step 4: names DEST cannot hold.
    if dest.reserved:
        for name in source.names:
            current, why = out.get(name, (name, ""))
            escaped = escape_name(current, dest.reserved)
            if escaped != current:
                note = (
                    f"escaped: {''.join(sorted(set(dest.reserved)))!r} cannot be in a level on DEST"
                )
                out[name] = (escaped, f"{why}; {note}" if why else note)
    seen: dict[str, str] = {}
    for name in source.names:
        target = out.get(name, (name, ""))[0]
        if target in seen:
            raise ConfigError(
                f"folders {seen[target]!r} and {name!r} would both go to {target!r} on DEST; "
                "map one of them elsewhere with --map or a rename rule"
            )
        seen[target] = name
    return out


#: Why a SOURCE folder goes to the DEST folder a run before paired it with.
EARLIER_PAIRING = "paired on an earlier run"


def job_pairs(
    remote: Side,
    local: Side,
    rules: NameRules,
    known: Mapping[str, str],
    source_is_remote: bool = True,
) -> dict[str, tuple[str, str]]:
    """pair_names for a job, remote folder -> (local folder, why): SOURCE is the remote
    side (pull, sync) or the local side (push: the pairs are turned round).  `known`:
    remote -> local folder pairs of the state whose names differ; each still there
    stays as it is (a pairing made once is kept: nothing is copied twice because a
    folder appeared since), and no other folder is paired with its local folder."""
    if source_is_remote:
        source, dest, kept = remote, local, dict(known)
    else:
        source, dest = local, remote
        kept = {b: a for a, b in known.items()}
    kept = {s: d for s, d in kept.items() if s in source.names}
    rest = Side([n for n in source.names if n not in kept], source.special, source.reserved)
    taken = set(kept.values())
    dest_rest = Side([n for n in dest.names if n not in taken], dest.special, dest.reserved)
    pairs = {
        name: pair
        for name, pair in pair_names(rest, dest_rest, rules).items()
        if pair[0] not in taken
    }
    pairs.update((s, (d, EARLIER_PAIRING)) for s, d in kept.items())
    owner: dict[str, str] = {}
    for name in source.names:  # (a folder since made under a kept pairing's name)
        target = pairs.get(name, (name, ""))[0]
        if target in owner:
            first, second = sorted((owner[target], name))
            raise ConfigError(
                f"folders {first!r} and {second!r} would both go to {target!r} on DEST "
                f"(an earlier run paired one of them with it); give the other its own "
                f"folder with --map"
            )
        owner[target] = name
    if source_is_remote:
        return pairs
    return {dest_name: (name, why) for name, (dest_name, why) in pairs.items()}


def store_pairs(
    remote: Store,
    local: Store | None,
    names: Mapping[str, Iterable[str]],
    rows: Iterable[FolderState],
    rules: NameRules,
    direction: str,
    state: State | None,
) -> dict[str, tuple[str, str]]:
    """job_pairs for two stores: `names`, each side's ("a": remote, "b": local) folder
    names as listed; `rows`, the state's folders (`state`'s: a row that holds no
    message, as a dry run leaves, pairs nothing); `direction` the job's (push: SOURCE is
    the local side).  What sync.py and verify (channel.job_folder_map) both call.  No
    `local` store: one that does not exist yet (a dry run into a new DEST)."""
    known = {
        row.name_a: row.name_b
        for row in rows
        if row.name_a != row.name_b and state is not None and not state.holds_nothing(row.id)
    }
    return job_pairs(
        Side(sorted(names["a"]), remote.special_folders(), remote.reserved_in_names()),
        Side(
            sorted(names["b"]),
            local.special_folders() if local is not None else {},
            local.reserved_in_names() if local is not None else "",
        ),
        rules,
        known,
        source_is_remote=direction != "push",
    )
