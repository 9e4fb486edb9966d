"""Deterministic synthetic mail corpora for the benchmark (seeded random, no downloads).

Four shapes (``plan_*`` build the message list, ``write_maildir`` writes it):

``standard``
    N messages in INBOX, Sent and Archive/2019 (nested; ``Archive`` itself is a
    ``\\Noselect`` directory).  Sizes as in a real mailbox: text mails log-normal
    around a 4 KB median, about 6 % with one base64 attachment of 50 KB - 1.5 MB whose
    sizes are stretched so that the whole corpus reaches the requested megabytes.
    Plausible headers (Received, DKIM, From/To/Cc, Subject, Date, Message-ID,
    References), raw 8-bit UTF-8 and RFC 2047 subjects, bodies with ``From `` lines.
``big accounts``
    100,000 tiny messages (about 1 KB) in 50 folders, to time a rerun over many UIDs
    and folders without writing gigabytes.
``big message``
    INBOX with a few small messages and a folder ``Big`` holding one 50 MB message.
``pop``
    The standard size mix with every message in INBOX (default 5,000 messages,
    300 MiB), for the POP3 benchmark.

Every message is a pure function of (seed, folder, index): the same arguments give
byte-identical files.  Files are LF-terminated, as Dovecot's Maildir stores them, and
named like Dovecot names them (``TIME.MnPn.HOST,S=size,W=crlf-size[:2,FLAGS]``) so
Dovecot never has to read a file to learn its sizes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
KIB = 1024

TEXT_MEDIAN = 4 * KIB
TEXT_SIGMA = 0.75  # log-normal spread of text mails: 10 % under ~1.5 KB, 10 % over ~10 KB
TEXT_MIN, TEXT_MAX = 700, 120 * KIB
ATTACH_SHARE = 0.06
ATTACH_MIN, ATTACH_MAX = 50 * KIB, 1536 * KIB
BIG_MESSAGE_BYTES = 50 * MIB

STANDARD_FOLDERS = {"INBOX": 0.60, "Sent": 0.22, "Archive/2019": 0.18}

FIRST = [
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
    "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter",
    "Zoë", "José", "Søren", "Łukasz", "Ånge", "Mañana", "Chloé", "Björn", "Renée",
]  # fmt: skip
LAST = [
    "Smith", "Jones", "Müller", "García", "Nguyen", "Kowalski", "Rossi", "Dubois",
    "Johansson", "Novák", "O'Brien", "Tanaka", "Silva", "Fischer", "Martin", "Weiß",
]  # fmt: skip
DOMAINS = [
    "example.com", "example.org", "mail.example.net", "lists.example.org", "corp.example",
    "university.example.edu", "shop.example", "bank.example",
]  # fmt: skip
_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were their one all we can her has there been if more when "
    "will would who so no meeting report budget release server backup invoice schedule "
    "project deadline review draft attached please thanks regards question answer update "
    "monday tuesday friday weekend office team customer order shipping delivery payment "
    "account password reset security notice newsletter conference agenda minutes holiday "
    "travel hotel flight booking confirmation receipt ticket issue bug patch version build "
    "test failure success migration database network storage quota mailbox folder sync"
)
WORDS = _WORDS.split()
UTF8_WORDS = ["Grüße", "naïve", "café", "Straße", "smörgåsbord", "déjà", "vu", "façade",
              "€", "日本語", "Привет", "Καλημέρα", "ñandú", "Ærø", "crème", "brûlée"]  # fmt: skip
SUBJECT_8BIT = [
    "Grüße aus München", "Réunion de lundi", "Fwd: Straßenfest 2019", "Привет из Москвы",
    "Re: Café-Öffnungszeiten", "日本語のテスト", "Ærø ferry times", "Crème brûlée recipe",
]  # fmt: skip
SUBJECTS = [
    "Meeting notes", "Quarterly report", "Re: budget draft", "Invoice {n}",
    "Your order #{n} has shipped", "Weekly newsletter", "Fwd: conference agenda",
    "Re: Re: server migration", "Backup failed on host{n}", "Lunch on Friday?",
    "[dev] patch v{n} for review", "Password reset request", "Holiday schedule",
    "Flight booking confirmation {n}", "Re: bug {n}: crash on startup",
]  # fmt: skip
ATTACHMENTS = [
    ("application/pdf", "report-{n}.pdf"), ("image/jpeg", "IMG_{n}.jpg"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "budget-{n}.xlsx"),
    ("application/zip", "logs-{n}.zip"), ("image/png", "screenshot-{n}.png"),
]  # fmt: skip
TZ_OFFSETS = [0, 60, 120, -300, -240, 330, 540, -480]  # minutes


@dataclass
class Message:
    """One message to generate: everything needed to make its bytes deterministically."""

    folder: str
    index: int  # within the folder
    seed: int
    size: int  # target size in bytes (LF form); the real size is close
    kind: str  # text | attach | tiny | big
    date: float  # the Date header, seconds since the epoch
    arrival: float  # INTERNALDATE = file mtime
    flags: str  # Maildir info letters, "" = unseen
    in_new: bool  # unseen and still in new/


@dataclass
class Corpus:
    name: str
    description: str
    messages: list[Message]
    folders: list[str]
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def target_bytes(self) -> int:
        return sum(m.size for m in self.messages)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.folders, 0)
        for m in self.messages:
            out[m.folder] += 1
        return out


# -- planning -----------------------------------------------------------------------


def _lognormal_sizes(rng: random.Random, n: int) -> list[int]:
    mu = math.log(TEXT_MEDIAN)
    return [int(min(TEXT_MAX, max(TEXT_MIN, rng.lognormvariate(mu, TEXT_SIGMA)))) for _ in range(n)]


def _attachment_sizes(rng: random.Random, n: int, total: int) -> list[int]:
    """n sizes in [ATTACH_MIN, ATTACH_MAX] summing to about `total`: lo + span * u**a
    with `a` found by bisection (larger a = smaller sizes)."""
    us = [rng.random() for _ in range(n)]
    span = ATTACH_MAX - ATTACH_MIN

    def total_for(a: float) -> float:
        return sum(ATTACH_MIN + span * u**a for u in us)

    lo, hi = 0.01, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if total_for(mid) > total:
            lo = mid
        else:
            hi = mid
    a = (lo + hi) / 2
    return [int(ATTACH_MIN + span * u**a) for u in us]


def _split_folders(rng: random.Random, n: int, shares: dict[str, float]) -> list[str]:
    names = list(shares)
    counts = [int(n * shares[name]) for name in names]
    counts[0] += n - sum(counts)
    out = [name for name, c in zip(names, counts, strict=True) for _ in range(c)]
    rng.shuffle(out)
    return out


def _dates(rng: random.Random, folder: str, n: int) -> list[float]:
    if folder.startswith("Archive/") and folder[8:].isdigit():
        year = int(folder[8:])
        start, end = dt.datetime(year, 1, 1), dt.datetime(year + 1, 1, 1)
    else:
        start, end = dt.datetime(2020, 1, 1), dt.datetime(2025, 6, 1)
    a, b = start.replace(tzinfo=dt.UTC).timestamp(), end.replace(tzinfo=dt.UTC).timestamp()
    return sorted(rng.uniform(a, b) for _ in range(n))


def _flags(rng: random.Random, folder: str, age_rank: float) -> tuple[str, bool]:
    """(info letters, in new/).  Old mail is read; the newest INBOX mail partly not."""
    if folder == "Sent":
        return ("S" if rng.random() < 0.9 else "RS"), False
    r = rng.random()
    if age_rank > 0.97 and r < 0.5:  # the newest 3 %: half unread, some still in new/
        return "", rng.random() < 0.4
    if r < 0.03:
        return "FS", False
    if r < 0.12:
        return "RS", False
    if r < 0.15:
        return "", False
    return "S", False


def _messages_for(
    rng: random.Random, seed: int, folder_of: list[str], sizes: list[int], kinds: list[str]
) -> tuple[list[Message], list[str]]:
    by_folder: dict[str, list[int]] = {}
    for i, folder in enumerate(folder_of):
        by_folder.setdefault(folder, []).append(i)
    messages: list[Message] = []
    for folder in sorted(by_folder):
        idx = by_folder[folder]
        dates = _dates(rng, folder, len(idx))
        for j, (i, date) in enumerate(zip(idx, dates, strict=True)):
            flags, in_new = _flags(rng, folder, j / max(1, len(idx)))
            arrival = date + rng.uniform(2, 900)
            messages.append(
                Message(folder, j, seed, sizes[i], kinds[i], date, arrival, flags, in_new)
            )
    return messages, sorted(by_folder, key=lambda n: (n != "INBOX", n))


def plan_standard(seed: int, count: int, megabytes: float) -> Corpus:
    return _plan_sized("standard", seed, count, megabytes, STANDARD_FOLDERS)


def plan_pop(seed: int, count: int = 5000, megabytes: float = 300) -> Corpus:
    """A POP account: the standard account's size mix, everything in INBOX (POP3 sees
    nothing else).  5,000 messages / 300 MiB keeps the standard account's mean size."""
    return _plan_sized("pop", seed, count, megabytes, {"INBOX": 1.0})


def _plan_sized(
    name: str, seed: int, count: int, megabytes: float, shares: dict[str, float]
) -> Corpus:
    rng = random.Random(f"{name}/{seed}")
    target = int(megabytes * MIB)
    sizes = _lognormal_sizes(rng, count)
    n_attach = max(1, round(count * ATTACH_SHARE))
    # Attachment mails replace text mails; they carry whatever bytes the text lacks.
    order = list(range(count))
    rng.shuffle(order)
    attach_idx = set(order[:n_attach])
    text_bytes = sum(s for i, s in enumerate(sizes) if i not in attach_idx)
    needed = max(0, target - text_bytes)
    notes = []
    while needed > n_attach * ATTACH_MAX and n_attach < count:
        n_attach += 1  # too few attachments to reach the size: use more of them
        attach_idx.add(order[n_attach - 1])
        text_bytes -= sizes[order[n_attach - 1]]
        needed = target - text_bytes
    if n_attach != round(count * ATTACH_SHARE):
        notes.append(f"{n_attach} attachment mails ({n_attach / count:.1%}) to reach the size")
    attach_sizes = _attachment_sizes(rng, n_attach, max(needed, n_attach * ATTACH_MIN))
    kinds = ["text"] * count
    for i, size in zip(sorted(attach_idx), attach_sizes, strict=True):
        sizes[i], kinds[i] = size, "attach"
    folder_of = _split_folders(rng, count, shares)
    messages, folders = _messages_for(rng, seed, folder_of, sizes, kinds)
    where = f"{len(folders)} folders" if len(folders) > 1 else "1 folder"
    description = (
        f"{count:,} messages, {sum(sizes) / MIB:,.0f} MiB in {where} "
        f"({', '.join(folders)}); text mails log-normal, median {TEXT_MEDIAN // KIB} KB; "
        f"{n_attach} ({n_attach / count:.1%}) with a base64 attachment of "
        f"{ATTACH_MIN // KIB} KB - {ATTACH_MAX // KIB} KB"
    )
    return Corpus(name, description, messages, folders, seed, notes)


def big_account_folders() -> dict[str, float]:
    """50 folders: INBOX, Sent, Drafts, 15 yearly archives, 20 lists, 12 projects, with
    Zipf-like shares (INBOX biggest)."""
    names = ["INBOX", "Sent", "Drafts"]
    names += [f"Archive/{y}" for y in range(2010, 2025)]
    names += [f"Lists/list-{i:02d}" for i in range(1, 21)]
    names += [f"Projects/p{i:02d}" for i in range(1, 13)]
    weights = [1 / (rank + 2) ** 0.6 for rank in range(len(names))]
    total = sum(weights)
    return {name: w / total for name, w in zip(names, weights, strict=True)}


def plan_big_accounts(seed: int, count: int = 100_000) -> Corpus:
    rng = random.Random(f"big/{seed}")
    shares = big_account_folders()
    sizes = [rng.randint(600, 1500) for _ in range(count)]
    folder_of = _split_folders(rng, count, shares)
    messages, folders = _messages_for(rng, seed, folder_of, sizes, ["tiny"] * count)
    description = (
        f"{count:,} tiny messages (0.6 - 1.5 KB, {sum(sizes) / MIB:,.0f} MiB) in "
        f"{len(folders)} folders (INBOX has {sum(1 for f in folder_of if f == 'INBOX'):,}); "
        "tiny on purpose, to keep disk and time sane: this variant measures the rerun"
    )
    return Corpus("big-accounts", description, messages, folders, seed)


def plan_big_message(seed: int) -> Corpus:
    rng = random.Random(f"bigmsg/{seed}")
    folder_of = ["INBOX"] * 10 + ["Big"]
    sizes = _lognormal_sizes(rng, 10) + [BIG_MESSAGE_BYTES]
    kinds = ["text"] * 10 + ["big"]
    messages, folders = _messages_for(rng, seed, folder_of, sizes, kinds)
    description = (
        f"INBOX with 10 text mails and a folder Big with one {BIG_MESSAGE_BYTES // MIB} MiB "
        "message (one base64 attachment)"
    )
    return Corpus("big-message", description, messages, folders, seed)


# -- rendering ----------------------------------------------------------------------


def _encode_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def _person(rng: random.Random, encode: bool = True) -> tuple[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    name = f"{first} {last}"
    addr = (
        f"{first.lower().encode('ascii', 'ignore').decode()}."
        f"{last.lower().encode('ascii', 'ignore').decode().replace(chr(39), '')}"
        f"@{rng.choice(DOMAINS)}"
    )
    if not name.isascii() and encode:
        name = _encode_word(name)
    elif "'" in name:
        name = f'"{name}"'
    return name, addr


def _date_header(ts: float, rng: random.Random) -> str:
    offset = dt.timedelta(minutes=rng.choice(TZ_OFFSETS))
    when = dt.datetime.fromtimestamp(int(ts), dt.timezone(offset))
    return when.strftime("%a, %d %b %Y %H:%M:%S %z")


def _msgid(rng: random.Random, domain: str) -> str:
    return f"<{rng.getrandbits(64):016x}.{rng.getrandbits(32):08x}@{domain}>"


def _text_lines(rng: random.Random, nbytes: int, utf8: bool, from_lines: bool) -> list[str]:
    lines: list[str] = []
    size = 0
    while size < nbytes:
        r = rng.random()
        if r < 0.08:
            line = ""
        elif from_lines and r < 0.11:
            line = rng.choice(
                ["From the desk of the director:", "From what I remember, yes.",
                 ">From the archive", "From: forwarded message below"]
            )  # fmt: skip
        elif r < 0.16:
            line = "> " + " ".join(rng.choices(WORDS, k=rng.randint(5, 11)))
        else:
            words = rng.choices(WORDS, k=rng.randint(7, 13))
            if utf8 and rng.random() < 0.3:
                words[rng.randrange(len(words))] = rng.choice(UTF8_WORDS)
            line = " ".join(words)
            line = line[0].upper() + line[1:] + "."
        lines.append(line)
        size += len(line.encode()) + 1
    return lines


def _headers(rng: random.Random, m: Message) -> tuple[list[str], bool]:
    """Header lines (without the MIME ones) and whether the subject is raw 8-bit."""
    sender, sender_addr = _person(rng)
    rcpt, rcpt_addr = _person(rng)
    if m.folder == "Sent":
        sender, sender_addr = "Bench User", "bench.user@example.com"
    domain = sender_addr.split("@", 1)[1]
    h: list[str] = []
    if m.folder != "Sent":
        h.append(f"Return-Path: <{sender_addr}>")
        h.append("Delivered-To: bench.user@example.com")
        for hop in range(rng.randint(1, 3)):
            ip = f"192.0.2.{rng.randint(1, 254)}"
            h.append(
                f"Received: from mx{hop}.{domain} (mx{hop}.{domain} [{ip}])\n"
                f"\tby mail.example.com (Postfix) with ESMTPS id {rng.getrandbits(40):010X}\n"
                f"\tfor <bench.user@example.com>; {_date_header(m.arrival, rng)}"
            )
        if rng.random() < 0.5:
            sig = base64.b64encode(rng.randbytes(256)).decode()
            h.append(
                f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=sel1;\n"
                f"\th=from:to:subject:date:message-id; bh={sig[:44]};\n"
                f"\tb={sig[44:120]}\n\t {sig[120:]}"
            )
    h.append(f"From: {sender} <{sender_addr}>")
    h.append(f"To: {rcpt} <{rcpt_addr}>")
    if rng.random() < 0.25:
        cc = ", ".join(f"{n} <{a}>" for n, a in (_person(rng) for _ in range(rng.randint(1, 4))))
        h.append(f"Cc: {cc}")
    raw8 = False
    r = rng.random()
    if r < 0.08:
        subject = rng.choice(SUBJECT_8BIT)  # raw 8-bit UTF-8, as many clients send it
        raw8 = True
    elif r < 0.14:
        subject = _encode_word(rng.choice(SUBJECT_8BIT))
    else:
        subject = rng.choice(SUBJECTS).format(n=rng.randint(100, 99999))
    h.append(f"Subject: {subject}")
    h.append(f"Date: {_date_header(m.date, rng)}")
    h.append(f"Message-ID: {_msgid(rng, domain)}")
    if rng.random() < 0.3:
        refs = [_msgid(rng, rng.choice(DOMAINS)) for _ in range(rng.randint(1, 6))]
        h.append(f"In-Reply-To: {refs[-1]}")
        h.append("References: " + "\n\t".join(refs))
    if rng.random() < 0.2:
        h.append(f"List-Id: <dev.{rng.choice(DOMAINS)}>")
        h.append("List-Unsubscribe: <mailto:dev-leave@lists.example.org>")
    h.append(f"User-Agent: {rng.choice(['Mutt/2.2.9', 'Thunderbird/115.3', 'Roundcube 1.6'])}")
    return h, raw8


def render(m: Message) -> bytes:
    """The message's bytes (LF line ends), a pure function of the Message."""
    key = f"{m.seed}/{m.folder}/{m.index}"
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    if m.kind == "tiny":
        h = [
            f"From: {_person(rng)[1]}",
            "To: bench.user@example.com",
            f"Subject: {rng.choice(SUBJECTS).format(n=m.index)}",
            f"Date: {_date_header(m.date, rng)}",
            f"Message-ID: {_msgid(rng, 'tiny.example')}",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=us-ascii",
        ]
        head = "\n".join(h) + "\n\n"
        body = "\n".join(_text_lines(rng, max(50, m.size - len(head)), False, False)) + "\n"
        return (head + body).encode()
    h, raw8 = _headers(rng, m)
    utf8 = raw8 or rng.random() < 0.15
    h.append("MIME-Version: 1.0")
    head_len = sum(len(x.encode()) + 1 for x in h) + 120
    if m.kind == "text":
        cte = "8bit" if utf8 else "7bit"
        charset = "utf-8" if utf8 else "us-ascii"
        h.append(f"Content-Type: text/plain; charset={charset}; format=flowed")
        h.append(f"Content-Transfer-Encoding: {cte}")
        lines = _text_lines(rng, max(120, m.size - head_len), utf8, rng.random() < 0.15)
        return ("\n".join(h) + "\n\n" + "\n".join(lines) + "\n").encode()
    # attach / big: multipart/mixed with a short text part and one base64 attachment
    boundary = f"=-bench-{rng.getrandbits(48):012x}"
    ctype, fname = rng.choice(ATTACHMENTS)
    fname = fname.format(n=rng.randint(1, 9999))
    text = "\n".join(_text_lines(rng, rng.randint(300, 2500), utf8, False))
    head_len += len(text.encode()) + 400
    encoded_len = max(1000, m.size - head_len)
    raw_len = encoded_len * 57 // 77  # base64: 57 raw bytes per 76-char line + LF
    payload = base64.encodebytes(rng.randbytes(raw_len)).decode("ascii")
    h.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
    parts = [
        "\n".join(h),
        "",
        "This is a multi-part message in MIME format.",
        "",
        f"--{boundary}",
        f"Content-Type: text/plain; charset={'utf-8' if utf8 else 'us-ascii'}",
        f"Content-Transfer-Encoding: {'8bit' if utf8 else '7bit'}",
        "",
        text,
        "",
        f"--{boundary}",
        f'Content-Type: {ctype}; name="{fname}"',
        f'Content-Disposition: attachment; filename="{fname}"',
        "Content-Transfer-Encoding: base64",
        "",
        payload.rstrip("\n"),
        "",
        f"--{boundary}--",
        "",
    ]
    return "\n".join(parts).encode()


# -- writing a Maildir tree ---------------------------------------------------------


@dataclass
class Written:
    messages: int = 0
    bytes: int = 0
    seen: int = 0
    per_folder: dict[str, int] = field(default_factory=dict)


def write_maildir(corpus: Corpus, root: Path, host: str = "bench") -> Written:
    """Write the corpus as a LAYOUT=fs Maildir tree (ROOT/INBOX, ROOT/Archive/2019, ...),
    file mtimes = INTERNALDATE, Dovecot-style names with S= and W= sizes."""
    out = Written()
    for folder in corpus.folders:
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    for n, m in enumerate(corpus.messages, 1):
        data = render(m)
        size, vsize = len(data), len(data) + data.count(b"\n")
        base = f"{int(m.arrival)}.M{n}P{os.getpid()}.{host},S={size},W={vsize}"
        if m.in_new:
            path = root / m.folder / "new" / base
        else:
            path = root / m.folder / "cur" / f"{base}:2,{m.flags}"
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (m.arrival, m.arrival))
        out.messages += 1
        out.bytes += size
        out.seen += "S" in m.flags
        out.per_folder[m.folder] = out.per_folder.get(m.folder, 0) + 1
    return out


def iter_sizes(corpus: Corpus) -> Iterator[int]:
    for m in corpus.messages:
        yield len(render(m))


if __name__ == "__main__":  # quick look: python bench/corpus.py [N] [MB]
    import statistics
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    mb = float(sys.argv[2]) if len(sys.argv) > 2 else 120
    c = plan_standard(1, n, mb)
    sizes = list(iter_sizes(c))
    print(c.description)
    print(f"real: {sum(sizes) / MIB:.1f} MiB, median {statistics.median(sizes) / KIB:.1f} KiB")
    print(c.counts())
