"""Which folders a job covers, and which local folder each remote folder pairs with.

A job's folders are chosen by its patterns (--folders, a channel's ``folders``: globs,
``!`` excludes, later patterns win) or, where the channel maps folders (``folder =
"POP/provider"``: the remote INBOX goes to that local folder), by that map alone.  A
remote folder's local folder has the same name, except where the channel maps it, or
where the state keeps another local name for it: a remote folder renamed (by its folder
id, or by the name an older mailsync gave it) whose local folder could not follow
(renames.py says when it moves and when it stays), or where the remote store gives it
another local name (Store.local_names: Gmail's special folders, by SPECIAL-USE, become
Sent, Trash, Drafts, Junk, Archive) and the state knows it under no other.  Folders the
remote store calls redundant (Store.redundant_folders: Gmail's Important and Starred)
are covered only when a pattern is their name.

map_folders() is the one place that says this.  The sync (sync.py, after following the
renames of this run) and verify (on the state as the last sync left it) both ask it, so
they pair the same folders by construction.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mailsync.state import FolderState


def matches(name: str, pattern: str) -> bool:
    """Whether folder `name` matches glob `pattern`, or is the pattern itself (Gmail's
    ``[Gmail]/Starred`` is no glob of itself: ``[...]`` is a set of characters)."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def select_folders(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """Glob patterns, '!' negates, later matches win; unmatched names are left out.
    Exclusions alone exclude from every folder (`--folders '!Trash'` is every folder
    but Trash, not none: a migration that selects nothing would call itself complete)."""
    if patterns and all(p.startswith("!") for p in patterns):
        patterns = ["*", *patterns]
    chosen = []
    for name in names:
        keep = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            if matches(name, pattern[1:] if negate else pattern):
                keep = not negate
        if keep:
            chosen.append(name)
    return sorted(set(chosen), key=lambda n: (n != "INBOX", n))


def unmatched_patterns(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The patterns that match none of `names` (a '!' pattern: that exclude none), so a
    typo in --folders or a channel's folders is said, not silently nothing."""
    names = list(names)
    return [
        pattern
        for pattern in patterns
        if not any(matches(name, pattern.removeprefix("!")) for name in names)
    ]


def pattern_warnings(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """One sentence per folder pattern that matches nothing (see unmatched_patterns)."""
    return [
        f"folder pattern {pattern!r} "
        + ("excludes no folder" if pattern.startswith("!") else "matches no folder")
        for pattern in unmatched_patterns(names, patterns)
    ]


@dataclass(frozen=True)
class FolderMap:
    """Remote folder name -> local folder name, and which remote folders a job covers."""

    #: The channel's map (remote name -> local name: folder = "..." maps INBOX); with
    #: one, only its folders are covered and the patterns do not count.
    channel_map: Mapping[str, str] = field(default_factory=dict)
    patterns: Sequence[str] = ("*",)
    #: Remote name -> the local name the state keeps for it, where they differ.
    kept: Mapping[str, str] = field(default_factory=dict)
    #: Remote name -> the local name its store gives it (Store.local_names: Gmail's
    #: [Gmail]/Sent Mail -> Sent), for folders the state does not know otherwise.
    given: Mapping[str, str] = field(default_factory=dict)
    #: Remote folders left out unless a pattern names them exactly, and why
    #: (Store.redundant_folders: Gmail's Important and Starred).
    redundant: Mapping[str, str] = field(default_factory=dict)

    def local_name(self, name: str) -> str:
        return self.channel_map.get(name) or self.kept.get(name) or self.given.get(name) or name

    def remote_names(self) -> dict[str, str]:
        """Local name -> its remote folder, where they differ (other local folders: the
        same name)."""
        out = {local: name for name, local in self.given.items()}
        out.update((local, name) for name, local in self.kept.items())
        return out

    def choose(self, candidates: Iterable[str], present: Callable[[str], bool]) -> list[str]:
        """The remote folders covered, INBOX first: the channel map's, or those of
        `candidates` the patterns select (a redundant folder only if a pattern is its
        name); of them, those `present` says are there."""
        if self.channel_map:
            chosen = sorted(self.channel_map)
        else:
            chosen = [
                name
                for name in select_folders(candidates, self.patterns)
                if name not in self.redundant or name in self.patterns
            ]
        return [name for name in chosen if present(name)]

    def left_out(self, candidates: Iterable[str]) -> dict[str, str]:
        """The redundant folders among `candidates` that choose() leaves out, and why."""
        if self.channel_map:
            return {}
        return {
            name: why
            for name, why in self.redundant.items()
            if name in candidates and name not in self.patterns
        }

    def warnings(self, candidates: Collection[str]) -> list[str]:
        """The patterns that match none of `candidates` (none with a channel map)."""
        return [] if self.channel_map else pattern_warnings(candidates, self.patterns)


def follows(
    folder: FolderState,
    channel_map: Mapping[str, str],
    former: Mapping[str, str],
    renamed: Collection[int],
    counts: Mapping[str, int],
) -> bool:
    """Whether the folder's local name should be its remote name: its remote folder was
    renamed (by id: it has one; by the namespace change: `former`, remote name -> the
    name an older mailsync gave it; or this run: `renamed`, folder ids), and the channel
    does not map it elsewhere (folder = ...).  `counts`: how many states each remote
    name has (one that has several is left alone)."""
    return (
        folder.name_a != "INBOX"
        and folder.name_a not in channel_map
        and counts[folder.name_a] == 1
        and (
            folder.id in renamed
            or bool(folder.ident_a)
            or former.get(folder.name_a) == folder.name_b
        )
    )


def map_folders(
    channel_map: Mapping[str, str] | None,
    patterns: Sequence[str],
    rows: Sequence[FolderState],
    former: Mapping[str, str],
    renamed: Collection[int] = (),
    given: Mapping[str, str] | None = None,
    redundant: Mapping[str, str] | None = None,
) -> FolderMap:
    """THE folder mapping of a job: its channel map and patterns, and from the state's
    folders (`rows`) the local names kept for renamed remote folders (see follows();
    `former`: the remote store's former_names(); `renamed`: ids of folders this run
    renamed).  A local folder that did move has the remote name again: nothing to keep.
    `given`, `redundant`: the remote store's local_names() and redundant_folders().  A
    given local name counts for a remote folder the state knows under no other local
    name (one synced before under its own name keeps it: nothing is copied twice), and
    whose local folder no other remote folder of the state has."""
    counts = Counter(f.name_a for f in rows)
    channel_map = dict(channel_map or {})
    kept = {
        f.name_a: f.name_b
        for f in rows
        if f.name_b != f.name_a and follows(f, channel_map, former, renamed, counts)
    }
    local_of = {(f.name_a, f.name_b) for f in rows}
    local_owner = {f.name_b: f.name_a for f in rows}
    chosen = {
        name: local
        for name, local in (given or {}).items()
        if (counts[name] == 0 or (name, local) in local_of) and local_owner.get(local, name) == name
    }
    return FolderMap(channel_map, tuple(patterns or ("*",)), kept, chosen, dict(redundant or {}))
