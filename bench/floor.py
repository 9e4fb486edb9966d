"""The floor under any Python client's rerun: the least a rerun with nothing new can do.

    MAILSYNC_PASSWORD=... python bench/floor.py pop3 HOST PORT USER CAFILE
    MAILSYNC_PASSWORD=... python bench/floor.py imap HOST PORT USER CAFILE FOLDER...

A bare script on the standard library's ssl and socket, nothing else imported: a
verified TLS connection, a login, then what tells a client whether anything is new (POP3:
the whole UIDL listing; IMAP: STATUS of every folder), then QUIT/LOGOUT.  No state, no
config, no local files.  bench/run.py times it next to the tools' reruns, with the same
interpreter as mailsync, so the rerun table shows how much of a rerun any Python program
must spend here.  Exits 1 on any answer it does not expect.
"""

import os
import socket
import ssl
import sys


def main(argv: list[str]) -> int:
    protocol, host, port, user, cafile, *folders = argv
    password = os.environ["MAILSYNC_PASSWORD"]
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection((host, int(port)), timeout=30)
    sock = context.wrap_socket(raw, server_hostname=host)
    reader = sock.makefile("rb")

    def expect(prefix: bytes) -> bytes:
        line = reader.readline()
        if not line.startswith(prefix):
            raise SystemExit(f"floor: unexpected answer {line[:80]!r}")
        return line

    if protocol == "pop3":
        expect(b"+OK")
        sock.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
        expect(b"+OK")
        expect(b"+OK")
        sock.sendall(b"UIDL\r\n")
        expect(b"+OK")
        while reader.readline() not in (b".\r\n", b""):
            pass
        sock.sendall(b"QUIT\r\n")
        expect(b"+OK")
    else:
        expect(b"* OK")
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        sock.sendall(f'a LOGIN {user} "{quoted}"\r\n'.encode())
        while not reader.readline().startswith(b"a "):
            pass
        for n, folder in enumerate(folders):
            sock.sendall(f'b{n} STATUS "{folder}" (MESSAGES UIDNEXT UIDVALIDITY)\r\n'.encode())
            while not (line := reader.readline()).startswith(f"b{n} ".encode()):
                pass
            if not line.startswith(f"b{n} OK".encode()):
                raise SystemExit(f"floor: STATUS {folder}: {line[:80]!r}")
        sock.sendall(b"z LOGOUT\r\n")
        while not reader.readline().startswith(b"z "):
            pass
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
