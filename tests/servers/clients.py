"""What the private test servers (dovecot.py, cyrus.py, courier.py) share on the client
side: a verifying TLS context for their private CA, a logged-in IMAP client for seeding
and inspecting, and mailsync's URL for a user."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imapclient import IMAPClient

CLIENT_TIMEOUT = 30.0


class IMAPClients:
    """Mixed into a server class that has ``host``, ``ports`` (scheme -> port, with
    "imap" plain and "imaps" implicit TLS) and ``cafile``."""

    host: str
    ports: dict[str, int]
    cafile: Any

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    def imap(self, user, *, tls: bool = False) -> IMAPClient:
        """Logged in over the plain port (``tls=True``: imaps, verified); use it as a
        context manager so it logs out."""
        from imapclient import IMAPClient

        if tls:
            client = IMAPClient(
                self.host,
                port=self.ports["imaps"],
                ssl=True,
                ssl_context=self.ssl_context(),
                timeout=CLIENT_TIMEOUT,
            )
        else:
            client = IMAPClient(
                self.host, port=self.ports["imap"], ssl=False, timeout=CLIENT_TIMEOUT
            )
        client.login(user.name, user.password)
        return client

    def url(self, scheme: str, user) -> str:
        return f"{scheme}://{user.name}@{self.host}:{self.ports[scheme]}"
