"""OAuth2 in SASL: XOAUTH2 and OAUTHBEARER (RFC 7628) for IMAP AUTHENTICATE and POP3 AUTH.

* ``xoauth2_response()``, ``oauthbearer_response()``, ``initial_response()``: the
  initial client responses (before base64);
* ``SaslConversation``: the client side of one exchange (imaplib's authobject; the
  POP3 AUTH line and the answer to its ``+`` challenge);
* ``parse_sasl_error()``: the JSON a server sends as its challenge when it refuses a
  token, so a rejected token (get a new one, once) can be told from a missing scope
  (sign in again) and from other failures;
* ``choose_mechanism()``: what ``auth = "auto"`` picks from what the server offers.

Checked against Dovecot 2.3.19's oauth2 passdb (tests/oauth/test_sasl.py): a refused
XOAUTH2 token gets ``{"status":"401","schemes":"bearer","scope":...}``, a refused
OAUTHBEARER token ``{"status":"invalid_token"}``; Gmail sends the former; Microsoft 365
offers XOAUTH2 only and answers a bad token with a plain tagged NO.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

from mailsync.errors import AuthError
from mailsync.net import SECRETS, mask_secrets

XOAUTH2 = "XOAUTH2"
OAUTHBEARER = "OAUTHBEARER"
SASL_MECHANISMS = (OAUTHBEARER, XOAUTH2)  # the order auth = "auto" prefers them in


def _short(value: object, limit: int = 200) -> str:
    """Server text for a message: secrets masked, one line, at most `limit` characters."""
    text = " ".join(mask_secrets(str(value)).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _check_sasl_field(value: str, what: str) -> None:
    if "\x01" in value or not value.isprintable():
        raise AuthError(f"the {what} cannot go into an OAuth2 SASL message")


def xoauth2_response(user: str, token: str) -> bytes:
    """The XOAUTH2 initial client response, before base64: ``user=USER^Aauth=Bearer
    TOKEN^A^A`` (Google's and Microsoft's documentation of the mechanism)."""
    _check_sasl_field(user, "user name")
    _check_sasl_field(token, "access token")
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def _saslname(user: str) -> str:
    """RFC 5801 section 4: "," and "=" in the authorization identity escaped."""
    return user.replace("=", "=3D").replace(",", "=2C")


def oauthbearer_response(user: str, token: str, host: str, port: int) -> bytes:
    """The OAUTHBEARER initial client response, before base64 (RFC 7628 section 3.1):
    the GS2 header ``n,a=USER,`` then ``^Ahost=HOST^Aport=PORT^Aauth=Bearer TOKEN^A^A``."""
    _check_sasl_field(user, "user name")
    _check_sasl_field(token, "access token")
    _check_sasl_field(host, "host name")
    return (
        f"n,a={_saslname(user)},\x01host={host}\x01port={int(port)}\x01auth=Bearer {token}\x01\x01"
    ).encode()


def initial_response(mechanism: str, user: str, token: str, host: str, port: int) -> bytes:
    """The initial response of `mechanism` (XOAUTH2 or OAUTHBEARER), before base64."""
    if mechanism.upper() == XOAUTH2:
        return xoauth2_response(user, token)
    if mechanism.upper() == OAUTHBEARER:
        return oauthbearer_response(user, token, host, port)
    raise ValueError(f"not an OAuth2 SASL mechanism: {mechanism}")


@dataclass
class SaslError:
    """The JSON a server sends as its challenge when it refuses a token (RFC 7628
    section 3.2.2; XOAUTH2 sends the same object, with HTTP status codes as `status`)."""

    status: str
    schemes: str | None = None
    scope: str | None = None
    openid_configuration: str | None = None

    @property
    def token_rejected(self) -> bool:
        """The token itself was refused (expired, revoked, unknown): a new one may help.
        RFC 6750's invalid_token, or HTTP 401 in XOAUTH2's dialect."""
        return self.status.lower() in ("invalid_token", "401")

    @property
    def insufficient_scope(self) -> bool:
        """The token is fine but lacks the scope: only a new sign-in can help."""
        return self.status.lower() in ("insufficient_scope", "403")

    def __str__(self) -> str:
        text = f"status {self.status}"
        if self.scope:
            text += f", scope {self.scope}"
        return text


def parse_sasl_error(challenge: bytes | str) -> SaslError | None:
    """The server's error challenge (base64 as on the wire, or already decoded) as a
    SaslError; None when it is not one (an empty challenge, other text)."""
    if isinstance(challenge, str):
        challenge = challenge.encode("latin-1", "replace")
    challenge = challenge.strip()
    if not challenge:
        return None
    if not challenge.startswith(b"{"):
        try:
            challenge = base64.b64decode(challenge, validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        data = json.loads(challenge.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or "status" not in data:
        return None

    def text(key: str) -> str | None:
        value = data.get(key)
        return _short(value) if isinstance(value, str | int) else None

    return SaslError(
        status=text("status") or "",
        schemes=text("schemes"),
        scope=text("scope"),
        openid_configuration=text("openid-configuration"),
    )


class SaslConversation:
    """The client side of one XOAUTH2 or OAUTHBEARER exchange, as imaplib's
    ``authenticate(mechanism, authobject)`` calls it: called with each (decoded)
    challenge, it answers the first, empty one with the initial response; a later
    challenge is the server's error, which it records in `error` and acknowledges
    (XOAUTH2: an empty response; OAUTHBEARER: a lone ^A, RFC 7628 section 3.2.3), so
    the server ends the exchange with a tagged NO.  A POP3 client sends `initial`
    (base64) with AUTH and `acknowledge(challenge)` to a ``+`` line.  Both forms of
    the initial response are registered as secrets."""

    def __init__(self, mechanism: str, user: str, token: str, host: str, port: int):
        self.mechanism = mechanism.upper()
        self.initial = initial_response(self.mechanism, user, token, host, port)
        self.initial_base64 = base64.b64encode(self.initial).decode("ascii")
        SECRETS.add(token)
        SECRETS.add(self.initial_base64)
        self.error: SaslError | None = None
        self.challenges = 0

    def __call__(self, challenge: bytes) -> bytes:
        self.challenges += 1
        if self.challenges == 1 and not challenge:
            return self.initial
        return self.acknowledge(challenge)

    def acknowledge(self, challenge: bytes | str) -> bytes:
        """Record the error challenge and return the response that ends the exchange."""
        self.error = parse_sasl_error(challenge)
        return b"\x01" if self.mechanism == OAUTHBEARER else b""


def choose_mechanism(offered: Iterable[str], wanted: str = "auto") -> str | None:
    """The SASL mechanism to use: `wanted` ("xoauth2", "oauthbearer") when the server
    offers it, or with "auto" OAUTHBEARER (the standard) before XOAUTH2 (all Microsoft
    365 offers); None when the server offers neither it nor them."""
    offered_upper = {m.upper() for m in offered}
    choices = SASL_MECHANISMS if wanted == "auto" else (wanted.upper(),)
    for mechanism in choices:
        if mechanism in offered_upper:
            return mechanism
    return None
