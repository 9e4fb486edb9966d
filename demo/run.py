"""mailsync demo: a real pull from a local IMAP server into ./demo-mail.

Run by ``make demo`` with the project's venv python (which has mailsync and pymap):

1. make a throwaway CA and a server certificate for 127.0.0.1 (TLS is verified, as always);
2. start pymap (in-memory ``dict`` backend) on a free port of 127.0.0.1, STARTTLS on;
3. seed it over IMAP with 300 deterministic sample messages in four folders;
4. ``mailsync pull`` the account into ./demo-mail;
5. change the server (5 new messages, 3 marked read) and pull again: only that is synced;
6. ``mailsync list`` and ``mailsync verify``;
7. stop the server (also on failure or Ctrl-C) and remove the temporary files.

Nothing outside the repository's ./demo-mail and a temporary directory is touched: the
state, the config lookup and the password all stay local to this run.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import random
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEST = "./demo-mail"  # relative to ROOT; every command runs there
USER, PASSWORD = "demouser", "demopass"
HOST = "127.0.0.1"
SEED = 20240601

_color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None


def heading(step: int, text: str) -> None:
    line = f"==> [{step}/7] {text}"
    print(f"\n\033[1m{line}\033[0m" if _color else f"\n{line}", flush=True)


def note(text: str) -> None:
    print(f"    {text}", flush=True)


class DemoError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# -- 1. certificates -------------------------------------------------------------------


def make_certificates(where: Path) -> tuple[Path, Path, Path] | None:
    """(ca.pem, server.pem, server.key) for 127.0.0.1, valid for a day; None if neither
    the cryptography package nor the openssl command is available."""
    try:
        return _certs_cryptography(where)
    except ImportError:
        pass
    if shutil.which("openssl"):
        return _certs_openssl(where)
    return None


def _certs_cryptography(where: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailsync demo CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = where / "ca.pem", where / "server.pem", where / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _certs_openssl(where: Path) -> tuple[Path, Path, Path]:
    ca, ca_key = where / "ca.pem", where / "ca.key"
    cert, key, csr, ext = (where / n for n in ("server.pem", "server.key", "server.csr", "ext"))
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n"
    )
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *newkey, "-keyout", ca_key, "-out", ca, "-days", "1"]
        + [
            "-subj",
            "/CN=mailsync demo CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
        ]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
        ["req", "-new", *newkey, "-keyout", key, "-out", csr, "-subj", f"/CN={HOST}"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", "1"]
        + ["-days", "1", "-extfile", ext, "-out", cert],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


# -- 2. the server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """pymap with the in-memory backend, its output in a log file; stop() always works."""

    def __init__(self, workdir: Path, certs: tuple[Path, Path, Path] | None):
        self.port = free_port()
        self.log_path = workdir / "pymap.log"
        command = [str(BIN / "pymap"), "--host", HOST, "--port", str(self.port)]
        if certs:
            command += ["--cert", str(certs[1]), "--key", str(certs[2])]
        else:
            command.append("--no-tls")
        command += ["dict", "--demo-user", USER, "--demo-password", PASSWORD]
        self.command = command
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C reaches only us, and we stop the server in order.
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.log_path.parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"pymap exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as sock:
                    if sock.recv(200).startswith(b"* OK"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise DemoError(f"pymap did not answer on {HOST}:{self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            return "    (no log)"
        return "\n".join("    | " + line for line in text) or "    (empty log)"


# -- 3. sample mail --------------------------------------------------------------------

ME = ("Demo User", "demouser@example.com")
PEOPLE = [
    ("Alice Martin", "alice@example.org"),
    ("Bob Chen", "bob.chen@example.net"),
    ("Zoë Müller", "zoe@example.de"),
    ("José Álvarez", "jose@example.es"),
    ("Łukasz Wiśniewski", "lukasz@example.pl"),
    ("Søren Dahl", "soren@example.dk"),
    ("Priya Raman", "priya@example.in"),
    ("李雷", "lilei@example.cn"),
    ("Fatima Haddad", "fatima@example.com"),
    ("GitLab", "noreply@gitlab.example.com"),
    ("Billing", "billing@shop.example.com"),
]
LIST_PEOPLE = [
    ("Guido", "guido@python.example"),
    ("Raymond H.", "raymond@python.example"),
    ("Łukasz L.", "ambv@python.example"),
    ("Brett", "brett@python.example"),
    ("Petr Viktorin", "encukou@python.example"),
]
SUBJECTS = [
    "Lunch on {day}?",
    "Re: quarterly report",
    "Invoice {n} for your order",
    "Meeting notes {day}",
    "Fwd: photos from the trip",
    "Build #{n} failed on main",
    "Your parcel is on its way",
    "Re: Re: flat viewing on {day}",
    "Question about the {thing}",
    "Draft of the {thing} proposal",
    "Grüße aus München",
    "Café on {day} — ça marche ?",
    "Příští týden: {thing}",
    "会议安排 {n}",
]
LIST_SUBJECTS = [
    "[Python-Dev] PEP {n}: {thing}",
    "[Python-Dev] Re: PEP {n}: {thing}",
    "[Python-Dev] Summary of Python tracker issues",
    "[Python-Dev] Re: free-threading and the {thing}",
]
THINGS = ["budget", "garden", "backup", "typing", "release", "GIL", "roadmap", "migration"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_WORDS = (
    "the a we should maybe next week plan backup server mail sync notes draft "
    "release list message folder archive please check attached thanks again soon "
    "meeting agenda budget review report numbers figures idea change later today "
    "tomorrow update issue patch version build test quickly finally really"
)
WORDS = _WORDS.split()
FROM_LINES = [
    "From what I remember, the deadline moved to Friday.",
    "From now on the backups run every night.",
    "From the minutes:",
]
ATTACHMENTS = [  # (folder index, size in KB, file name, content type)
    ("INBOX", 50, "scan-0001.pdf", "application/pdf"),
    ("INBOX", 180, "holiday.jpg", "image/jpeg"),
    ("INBOX", 500, "slides-v3.pdf", "application/pdf"),
    ("Sent", 120, "report-Q3.xlsx", "application/vnd.ms-excel"),
    ("Sent", 75, "Grüße.png", "image/png"),
    ("Archive/2024", 300, "contract-signed.pdf", "application/pdf"),
    ("Archive/2024", 64, "receipt.pdf", "application/pdf"),
]


def encoded_word(text: str) -> str:
    """RFC 2047 for non-ASCII text (the classic way)."""
    if text.isascii():
        return text
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def address(person: tuple[str, str], raw_utf8: bool) -> str:
    name, email = person
    if name.isascii():
        return f'"{name}" <{email}>' if "." in name else f"{name} <{email}>"
    return f"{name if raw_utf8 else encoded_word(name)} <{email}>"


class Sample:
    """Deterministic mail: the same 300 messages (bytes, flags, dates) on every run."""

    def __init__(self, seed: int = SEED):
        self.rng = random.Random(seed)
        self.counter = 0

    def body(self, from_line: bool) -> str:
        rng = self.rng
        paragraphs = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(12, 70))]
            text = " ".join(words).capitalize() + "."
            paragraphs.append(textwrap.fill(text, 72))
        if from_line:  # at the start of a line: mbox must escape it, Maildir keeps it
            paragraphs.insert(rng.randint(0, len(paragraphs)), rng.choice(FROM_LINES))
        return "\n\n".join(paragraphs) + "\n\n-- \nsent from the mailsync demo\n"

    def message(
        self,
        sender: tuple[str, str],
        to: tuple[str, str],
        subject: str,
        date: dt.datetime,
        *,
        extra_headers: tuple[tuple[str, str], ...] = (),
        attachment: tuple[int, str, str] | None = None,
    ) -> bytes:
        rng = self.rng
        self.counter += 1
        raw_utf8 = rng.random() < 0.3  # RFC 6532 8-bit headers; the rest RFC 2047
        headers = [
            ("Return-Path", f"<{sender[1]}>"),
            ("From", address(sender, raw_utf8)),
            ("To", address(to, raw_utf8)),
            ("Subject", subject if raw_utf8 else encoded_word(subject)),
            ("Date", date.strftime("%a, %d %b %Y %H:%M:%S %z")),
            ("Message-ID", f"<demo.{self.counter:04d}.{date:%Y%m%d}@mailsync.example>"),
            *extra_headers,
            ("MIME-Version", "1.0"),
        ]
        text = self.body(from_line=rng.random() < 0.08)
        if attachment is None:
            headers += [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Transfer-Encoding", "8bit"),
            ]
            body = text
        else:
            size_kb, filename, ctype = attachment
            boundary = f"=_demo_{self.counter:04d}"
            payload = base64.encodebytes(rng.randbytes(size_kb * 1024)).decode()
            headers.append(("Content-Type", f'multipart/mixed; boundary="{boundary}"'))
            disposition = (
                f'attachment; filename="{filename}"'
                if filename.isascii()
                else f"attachment; filename*=utf-8''{quote(filename)}"
            )
            body = (
                "This is a multi-part message in MIME format.\n\n"
                f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n"
                f"Content-Transfer-Encoding: 8bit\n\n{text}\n"
                f"--{boundary}\nContent-Type: {ctype}\nContent-Disposition: {disposition}\n"
                f"Content-Transfer-Encoding: base64\n\n{payload}--{boundary}--\n"
            )
        head = "".join(f"{name}: {value}\n" for name, value in headers)
        return (head + "\n" + body).replace("\n", "\r\n").encode()

    def folders(self) -> dict[str, list[tuple[bytes, list[bytes], dt.datetime]]]:
        """{folder: [(message, flags, internaldate)]}, 300 messages in all."""
        rng = self.rng
        plan = {"INBOX": 120, "Sent": 50, "Archive/2024": 80, "Lists/python": 50}
        starts = {
            "INBOX": dt.datetime(2025, 1, 2, 8, 0, tzinfo=dt.UTC),
            "Sent": dt.datetime(2024, 6, 1, 9, 0, tzinfo=dt.UTC),
            "Archive/2024": dt.datetime(2024, 1, 3, 7, 30, tzinfo=dt.UTC),
            "Lists/python": dt.datetime(2024, 11, 1, 6, 0, tzinfo=dt.UTC),
        }
        attach = {}
        for folder, size, name, ctype in ATTACHMENTS:
            attach.setdefault(folder, []).append((size, name, ctype))
        out = {}
        for folder, count in plan.items():
            when = starts[folder]
            spots = set(rng.sample(range(count), len(attach.get(folder, []))))
            pending = list(attach.get(folder, []))
            messages = []
            for i in range(count):
                when += dt.timedelta(hours=rng.randint(1, 60), minutes=rng.randint(0, 59))
                zone = dt.timezone(dt.timedelta(hours=rng.choice([-5, 0, 1, 2, 5, 8])))
                sent = when.astimezone(zone)
                fill = {"day": rng.choice(DAYS), "n": rng.randint(100, 9999)}
                fill["thing"] = rng.choice(THINGS)
                extra: tuple[tuple[str, str], ...] = ()
                if folder == "Lists/python":
                    sender, to = (
                        rng.choice(LIST_PEOPLE),
                        ("python-dev", "python-dev@python.example"),
                    )
                    subject = rng.choice(LIST_SUBJECTS).format(**fill)
                    extra = (
                        ("List-Id", "<python-dev.python.example>"),
                        ("List-Post", "<mailto:python-dev@python.example>"),
                        ("Precedence", "list"),
                    )
                elif folder == "Sent":
                    sender, to = ME, rng.choice(PEOPLE[:9])
                    subject = "Re: " + rng.choice(SUBJECTS).format(**fill)
                else:
                    sender, to = rng.choice(PEOPLE), ME
                    subject = rng.choice(SUBJECTS).format(**fill)
                data = self.message(
                    sender,
                    to,
                    subject,
                    sent,
                    extra_headers=extra,
                    attachment=pending.pop() if i in spots else None,
                )
                arrival = when + dt.timedelta(seconds=rng.randint(2, 90))
                messages.append((data, self.flags(folder, i, count), arrival))
            out[folder] = messages
        return out

    def flags(self, folder: str, index: int, count: int) -> list[bytes]:
        rng = self.rng
        if folder == "Sent":
            return [b"\\Seen"]
        unread_tail = {"INBOX": 25, "Lists/python": 12}.get(folder, 0)
        flags = [] if index >= count - unread_tail else [b"\\Seen"]
        if folder != "Lists/python" and rng.random() < 0.15:
            flags.append(b"\\Answered")
        if rng.random() < 0.07:
            flags.append(b"\\Flagged")
        return flags

    def new_mail(self) -> list[tuple[str, bytes, dt.datetime]]:
        """The 5 messages that arrive between the two pulls."""
        when = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
        out = []
        for i, folder in enumerate(["INBOX", "INBOX", "INBOX", "Lists/python", "Lists/python"]):
            when += dt.timedelta(minutes=17 * (i + 1))
            if folder == "INBOX":
                sender, subject, extra = PEOPLE[i], f"New: {SUBJECTS[i + 10]}", ()
                to = ME
            else:
                sender, to = LIST_PEOPLE[i], ("python-dev", "python-dev@python.example")
                subject = f"[Python-Dev] New thread {i}: the {THINGS[i]}"
                extra = (("List-Id", "<python-dev.python.example>"),)
            fill = {"day": "Friday", "n": 42, "thing": "backup"}
            data = self.message(sender, to, subject.format(**fill), when, extra_headers=extra)
            out.append((folder, data, when + dt.timedelta(seconds=5)))
        return out


def imap_connect(port: int, ca: Path | None):
    from imapclient import IMAPClient

    client = IMAPClient(HOST, port=port, ssl=False, timeout=30)
    # imaplib writes an APPEND literal and its closing CRLF separately: without this,
    # Nagle's algorithm and delayed ACKs add ~40 ms to every message.
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ca is not None:
        client.starttls(ssl.create_default_context(cafile=str(ca)))
    client.login(USER, PASSWORD)
    return client


def seed(port: int, ca: Path | None, sample: Sample) -> tuple[int, int]:
    client = imap_connect(port, ca)
    try:
        existing = {name for _, _, name in client.list_folders()}
        total = size = 0
        for folder, messages in sample.folders().items():
            if folder not in existing:
                client.create_folder(folder)
            for data, flags, arrival in messages:
                client.append(folder, data, flags, arrival)
                size += len(data)
            total += len(messages)
            note(f"{folder:<13} {len(messages):>3} messages")
        return total, size
    finally:
        client.logout()


def change_server(port: int, ca: Path | None, sample: Sample) -> list[str]:
    """Append 5 new messages and mark the 3 oldest unread INBOX messages read; returns
    the Message-IDs of those 3."""
    client = imap_connect(port, ca)
    try:
        for folder, data, arrival in sample.new_mail():
            client.append(folder, data, [], arrival)
        note("appended 3 messages to INBOX and 2 to Lists/python")
        client.select_folder("INBOX")
        uids = sorted(client.search(["UNSEEN"]))[:3]
        response = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        client.add_flags(uids, [b"\\Seen"])
        ids = []
        for uid in uids:
            header = response[uid][b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode()
            ids.append(header.partition(":")[2].strip())
        note(f"marked 3 INBOX messages read (UIDs {', '.join(map(str, uids))})")
        return ids
    finally:
        client.logout()


# -- checks on the local copy ----------------------------------------------------------


def local_flags(message_ids: list[str]) -> dict[str, str]:
    """Message-ID -> the Maildir info letters of its file in ./demo-mail/INBOX."""
    found = {}
    inbox = ROOT / DEST / "INBOX"
    for sub in ("cur", "new"):
        for path in (inbox / sub).iterdir():
            with open(path, "rb") as handle:
                head = handle.read(4096).split(b"\n\n", 1)[0].decode("utf-8", "replace")
            for mid in message_ids:
                if f"Message-ID: {mid}" in head:
                    found[mid] = path.name.partition(":2,")[2] if sub == "cur" else ""
    return found


# -- the demo --------------------------------------------------------------------------


def run_mailsync(env: dict, *args: str) -> None:
    command = [str(BIN / "mailsync"), *args]
    shown = " ".join(shlex.quote(a) for a in ["mailsync", *args])
    print(f"    $ {shown}", flush=True)
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    if code != 0:
        raise DemoError(f"mailsync {args[2] if len(args) > 2 else args[0]} exited {code}", code)


def on_signal(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    started = time.monotonic()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    for tool in ("mailsync", "pymap"):
        if not (BIN / tool).exists():
            print(f"demo: {BIN / tool} is missing; run it with `make demo`", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="mailsync-demo-"))
    server = None
    problems: list[str] = []  # checks that failed; reported (and exit 1) at the end
    try:
        heading(1, "Throwaway CA and server certificate for 127.0.0.1")
        certs = make_certificates(workdir)
        if certs:
            note(f"CA {certs[0]} (trusted by this demo only, via cafile=)")
        else:
            note("WARNING: neither the cryptography package nor openssl is available:")
            note("the demo runs WITHOUT TLS (tls=none), the password crosses in clear")
        ca = certs[0] if certs else None

        heading(2, "Start a local IMAP server (pymap, in-memory)")
        server = Server(workdir, certs)
        server.start()
        tls = "STARTTLS with a verified certificate" if certs else "no TLS"
        note(f"pymap listening on {HOST}:{server.port} ({tls})")
        query = f"cafile={quote(str(ca))}" if ca else "tls=none"
        url = f"imap://{USER}@{HOST}:{server.port}?{query}"

        heading(3, "Seed the server with 300 sample messages over IMAP")
        sample = Sample()
        t0 = time.monotonic()
        total, size = seed(server.port, ca, sample)
        note(f"{total} messages, {size / 1e6:.1f} MB, in {time.monotonic() - t0:.1f} s")

        state_dir = workdir / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSYNC_", "XDG_"))}
        # The password for this server only; no user config, state or password command.
        env.update(
            MAILSYNC_PASSWORD=PASSWORD,
            XDG_CONFIG_HOME=str(workdir / "config"),
            XDG_STATE_HOME=str(workdir / "xdg-state"),
        )
        if os.path.lexists(ROOT / DEST):
            shutil.rmtree(ROOT / DEST)
        common = ["--state-dir", str(state_dir)]

        heading(4, f"First pull: everything into {DEST}")
        t0 = time.monotonic()
        run_mailsync(env, *common, "pull", "--progress", url, DEST)
        note(f"took {time.monotonic() - t0:.1f} s")

        heading(5, "Change the server, then pull again (incremental)")
        marked = change_server(server.port, ca, sample)
        t0 = time.monotonic()
        run_mailsync(env, *common, "-v", "pull", "--progress", url, DEST)
        note(f"took {time.monotonic() - t0:.1f} s")
        flags = local_flags(marked)
        unread = [mid for mid in marked if "S" not in flags.get(mid, "")]
        if unread:
            problems.append(
                f"{len(unread)} of the 3 messages marked read on the server are still unread "
                f"in {DEST} after the second pull: {', '.join(unread)}"
            )
            note(f"CHECK FAILED: {problems[-1]}")
        else:
            note(f"checked: the 3 messages marked read on the server are read in {DEST}")

        heading(6, "What is in the backup, and is it complete?")
        run_mailsync(env, *common, "list", DEST)
        run_mailsync(env, *common, "verify", url, DEST)

        heading(7, "Stop the server")
        server.stop()
        note(f"pymap stopped; demo done in {time.monotonic() - started:.0f} s")
        note(f"the backup stays in {DEST} (Maildir); `make clean` removes it")
        if problems:
            raise DemoError("; ".join(problems))
        return 0
    except DemoError as error:
        print(f"\ndemo: FAILED: {error}", file=sys.stderr)
        if server is not None and server.proc is not None and not problems:
            print(f"demo: pymap log:\n{server.log_tail()}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a seeding or certificate problem: say what, then clean up
        print(f"\ndemo: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        if server is not None and server.proc is not None:
            print(f"demo: pymap log:\n{server.log_tail()}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
