"""XOAUTH2 and OAUTHBEARER (RFC 7628) as mailsync/oauth.py builds them, checked byte for
byte and against a real Dovecot whose oauth2 passdb asks the test authorization server
(tests/servers/oauth.py) about each token, over IMAP (imaplib) and POP3 (poplib)."""

from __future__ import annotations

import base64
import imaplib
import poplib

import pytest

from mailsync import oauth, oauth_login, sasl
from mailsync.errors import AuthError
from mailsync.net import SECRETS, mask_secrets
from mailsync.sasl import SaslConversation, parse_sasl_error


def test_xoauth2_initial_response_is_user_auth_bearer_with_ctrl_a_separators():
    assert sasl.xoauth2_response("alice@example.com", "ya29.TOKEN") == (
        b"user=alice@example.com\x01auth=Bearer ya29.TOKEN\x01\x01"
    )


def test_oauthbearer_initial_response_has_the_gs2_header_host_and_port():
    assert sasl.oauthbearer_response("alice@example.com", "TOKEN", "imap.example.com", 993) == (
        b"n,a=alice@example.com,\x01host=imap.example.com\x01port=993\x01auth=Bearer TOKEN\x01\x01"
    )


def test_oauthbearer_escapes_comma_and_equals_in_the_user_as_rfc_5801_says():
    response = sasl.oauthbearer_response("a,b=c", "T", "h", 1)
    assert response.startswith(b"n,a=a=2Cb=3Dc,\x01")


@pytest.mark.parametrize("bad", ["tok\x01en", "tok en\n"])
def test_a_token_that_would_break_the_framing_is_refused(bad):
    with pytest.raises(AuthError) as caught:
        sasl.xoauth2_response("alice", bad)
    assert bad not in str(caught.value)


def test_parse_sasl_error_reads_base64_and_plain_json():
    google = base64.b64encode(
        b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
    )
    error = parse_sasl_error(google)
    assert (error.status, error.schemes, error.scope) == (
        "401",
        "bearer",
        "https://mail.google.com/",
    )
    assert error.token_rejected and not error.insufficient_scope
    bearer = parse_sasl_error('{"status":"insufficient_scope","scope":"mail"}')
    assert bearer.insufficient_scope and not bearer.token_rejected
    assert parse_sasl_error(b"") is None
    assert parse_sasl_error(b"not base64 or json!") is None
    assert parse_sasl_error(base64.b64encode(b'["a list"]')) is None


def test_the_conversation_answers_an_error_challenge_as_each_mechanism_wants():
    xoauth2 = SaslConversation("XOAUTH2", "alice", "T0KEN-abc", "h", 1)
    assert xoauth2(b"") == xoauth2.initial
    assert xoauth2(b'{"status":"401"}') == b""  # never the token again
    assert xoauth2.error.status == "401"
    bearer = SaslConversation("OAUTHBEARER", "alice", "T0KEN-abc", "h", 1)
    assert bearer(b"") == bearer.initial
    assert bearer(b'{"status":"invalid_token"}') == b"\x01"  # RFC 7628 section 3.2.3
    assert "T0KEN-abc" in SECRETS and bearer.initial_base64 in SECRETS
    assert mask_secrets(f"> {bearer.initial_base64}") == "> ****"


@pytest.mark.parametrize(
    ("offered", "wanted", "chosen"),
    [
        (["PLAIN", "XOAUTH2", "OAUTHBEARER"], "auto", "OAUTHBEARER"),
        (["PLAIN", "XOAUTH2"], "auto", "XOAUTH2"),  # Microsoft 365
        (["PLAIN", "XOAUTH2", "OAUTHBEARER"], "xoauth2", "XOAUTH2"),
        (["PLAIN"], "auto", None),
        (["XOAUTH2"], "oauthbearer", None),
    ],
)
def test_choose_mechanism(offered, wanted, chosen):
    assert sasl.choose_mechanism(offered, wanted) == chosen


# -- against Dovecot ----------------------------------------------------------------------


def imap_authenticate(server, user, mechanism, token):
    """(result of AUTHENTICATE, the conversation) on a fresh plain IMAP connection."""
    client = imaplib.IMAP4(server.host, server.ports["imap"], timeout=30)
    conversation = SaslConversation(mechanism, user.name, token, server.host, server.ports["imap"])
    try:
        typ, data = client.authenticate(mechanism, conversation)
        client.select("INBOX")  # really logged in as the user
        client.logout()
        return "OK", conversation
    except imaplib.IMAP4.error as error:
        client.shutdown()
        return f"NO {error}", conversation


def pop3_authenticate(server, user, mechanism, token):
    """(+OK/-ERR line, the conversation) for AUTH with an initial response (RFC 5034)."""
    client = poplib.POP3(server.host, server.ports["pop3"], timeout=30)
    conversation = SaslConversation(mechanism, user.name, token, server.host, server.ports["pop3"])
    try:
        client._putcmd(f"AUTH {mechanism} {conversation.initial_base64}")
        line, _ = client._getline()
        if line.startswith(b"+ ") or line == b"+":
            reply = conversation.acknowledge(line[2:])
            client._putcmd(base64.b64encode(reply).decode())
            line, _ = client._getline()
        if line.startswith(b"+OK"):
            client.stat()  # really logged in
        return line.decode(), conversation
    finally:
        client.close()


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_dovecot_accepts_a_token_from_the_authorization_server_over_imap(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mechanism
):
    client = oauth_server.add_client()
    access, _ = oauth_server.issue(dovecot_oauth2_user.name, client)
    result, conversation = imap_authenticate(
        dovecot_oauth2_server, dovecot_oauth2_user, mechanism, access
    )
    assert result == "OK"
    assert conversation.error is None
    introspections = [r for r in oauth_server.requests if r.path == "/introspect"]
    assert introspections[-1].fields["token"] == access


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
@pytest.mark.parametrize("ending", ["expire", "revoke"])
def test_dovecot_refuses_an_ended_token_over_imap_and_the_challenge_says_so(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mechanism, ending
):
    client = oauth_server.add_client()
    access, refresh_token = oauth_server.issue(dovecot_oauth2_user.name, client)
    if ending == "expire":
        oauth_server.expire(access)
    else:
        oauth_server.revoke(refresh_token)  # takes its access tokens along
    result, conversation = imap_authenticate(
        dovecot_oauth2_server, dovecot_oauth2_user, mechanism, access
    )
    assert result.startswith("NO ")
    assert "AUTHENTICATIONFAILED" in result
    assert conversation.error is not None and conversation.error.token_rejected
    assert access not in result


def test_dovecot_refuses_a_token_of_another_user(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server
):
    client = oauth_server.add_client()
    access, _ = oauth_server.issue("somebody-else", client)
    result, conversation = imap_authenticate(
        dovecot_oauth2_server, dovecot_oauth2_user, "XOAUTH2", access
    )
    assert result.startswith("NO ")


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_dovecot_accepts_and_refuses_tokens_over_pop3(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server, mechanism
):
    client = oauth_server.add_client()
    access, _ = oauth_server.issue(dovecot_oauth2_user.name, client)
    line, conversation = pop3_authenticate(
        dovecot_oauth2_server, dovecot_oauth2_user, mechanism, access
    )
    assert line.startswith("+OK"), line
    oauth_server.expire(access)
    line, conversation = pop3_authenticate(
        dovecot_oauth2_server, dovecot_oauth2_user, mechanism, access
    )
    assert line.startswith("-ERR"), line
    assert conversation.error is not None and conversation.error.token_rejected


def test_dovecot_accepts_a_token_from_each_login_flow(
    dovecot_oauth2_server, dovecot_oauth2_user, oauth_server
):
    """The tokens mailsync's own flows obtain (device code, browser, refresh) open the
    mailbox: the whole chain from the grant to the IMAP login."""
    registered = oauth_server.add_client()
    name = dovecot_oauth2_user.name
    provider = oauth.provider(
        "custom",
        token_url=oauth_server.token_url,
        device_url=oauth_server.device_url,
        authorize_url=oauth_server.authorize_url,
    )
    client = oauth.OAuthClient(
        store="s", user=name, provider=provider, client_id=registered.client_id,
        scopes=("mail",), grant=oauth.DEVICE_CODE,
    )  # fmt: skip
    shown = []

    def approve(seconds):
        oauth_server.approve_device(shown[0].user_code, name)

    device = oauth_login.device_login(client, shown.append, sleep=approve)
    browser = oauth_login.browser_login(
        client, lambda t: None, open_browser=oauth_server.browser(name), timeout=30
    )
    refreshed = oauth.refresh(client, browser.refresh_token)
    for tokens in (device, browser, refreshed):
        result, _ = imap_authenticate(
            dovecot_oauth2_server, dovecot_oauth2_user, "OAUTHBEARER", tokens.access_token
        )
        assert result == "OK"
