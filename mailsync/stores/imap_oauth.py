"""OAuth2 logins on an IMAP connection: AUTHENTICATE XOAUTH2 or OAUTHBEARER (RFC 7628)
with an access token from a store's token source (tokens.py), the mechanism chosen from
what the server offers (sasl.choose_mechanism), the initial response sent with the
command where the server offers SASL-IR (RFC 4959).  imap_connection.py calls
token_login() in place of LOGIN when the store has a token source.

Through imaplib rather than imapclient's oauth2_login: the server's error challenge
(the JSON a refused token gets, sasl.parse_sasl_error) must be read and answered so that
a refused token can be renewed once (tokens.login_with_token) and a missing scope told
apart.  imaplib logs the command line (masked by imap_connection.redact: AUTHENTICATE and
all after it) and only the size of each continuation answer.
"""

from __future__ import annotations

import base64
import binascii
import imaplib
import logging
from typing import TYPE_CHECKING

from mailsync.errors import AuthError
from mailsync.net import Endpoint, mask_secrets
from mailsync.sasl import SaslConversation, choose_mechanism
from mailsync.tokens import SASL_AUTH, TokenRejected, TokenSource, login_with_token

if TYPE_CHECKING:
    from imapclient import IMAPClient

log = logging.getLogger("mailsync")


class _SaslAnswers:
    """imaplib's literal for AUTHENTICATE: a bound method (imaplib tells a callable
    literal from bytes by that), which answers each continuation (base64) with the
    conversation's response (base64)."""

    def __init__(self, conversation: SaslConversation):
        self.conversation = conversation

    def answer(self, challenge: bytes) -> bytes:
        try:
            decoded = base64.b64decode(challenge or b"")
        except (binascii.Error, ValueError):
            decoded = challenge
        return base64.b64encode(self.conversation(decoded))


def _said(value: object) -> str:
    """Server text for an error: one line, every secret masked."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(mask_secrets(text).split())[:300]


def token_login(client: IMAPClient, endpoint: Endpoint, auth: str, tokens: TokenSource) -> None:
    """Log `client` (connected, not yet authenticated, TLS unless tls=none was asked
    for) in with a token of `tokens`: `auth` is "xoauth2" or "oauthbearer", or with
    "auto" the mechanism the server offers (OAUTHBEARER before XOAUTH2).  A refused token
    is renewed once; a second refusal, or a server offering neither mechanism, is
    AuthError (exit 3); a dropped connection passes through as imaplib's abort."""
    ep = endpoint
    offered = {_said(c).upper() for c in client.capabilities()}
    mechanisms = [c[len("AUTH=") :] for c in offered if c.startswith("AUTH=")]
    mechanism = choose_mechanism(mechanisms, auth if auth in SASL_AUTH else "auto")
    if mechanism is None:
        wanted = auth.upper() if auth in SASL_AUTH else "XOAUTH2 or OAUTHBEARER"
        raise AuthError(
            f"{ep.display}: the server does not offer {wanted} (AUTH=); it cannot take "
            "an OAuth2 token" + ("" if auth == "auto" else '; try auth = "auto"')
        )
    imap = client._imap
    initial_response = "SASL-IR" in offered

    def attempt(token: str) -> None:
        conversation = SaslConversation(mechanism, ep.user, token, ep.host, ep.port)
        imap.literal = _SaslAnswers(conversation).answer
        try:
            if initial_response:
                conversation.challenges = 1  # the initial response went with the command
                tag = imap._command("AUTHENTICATE", mechanism, conversation.initial_base64)
            else:
                tag = imap._command("AUTHENTICATE", mechanism)
            typ, data = imap._command_complete("AUTHENTICATE", tag)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as error:  # BAD
            raise TokenRejected(_said(error), conversation.error)
        finally:
            imap.literal = None
        if typ != "OK":
            raise TokenRejected(_said(data[-1] if data else typ), conversation.error)
        imap.state = "AUTH"
        client._cached_capabilities = None  # (what imapclient kept from before the login)

    login_with_token(tokens, attempt, ep.display)
    log.debug("%s: logged in with an OAuth2 token (%s)", ep.display, mechanism)
