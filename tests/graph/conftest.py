"""Fixtures for the Graph tests: ``fake_graph`` (a FakeGraph over plain HTTP with one
delegated token, ``fake_graph.token``) and ``fake_graph_tls`` (the same over HTTPS with a
certificate from a private CA, ``fake_graph_tls.cafile``); ``oauth_server`` (the tests'
OAuth2 authorization server, tests/servers/oauth.py) for tokens ``fake_graph.trust()`` accepts."""

import ssl

import pytest
from fakegraph import FakeGraph
from servers.oauth import oauth_server  # noqa: F401 - a fixture for the tests here


@pytest.fixture
def fake_graph():
    with FakeGraph() as server:
        server.token = server.add_token()
        yield server


@pytest.fixture
def fake_graph_tls(tmp_path):
    from servers.dovecot import make_certificates

    (tmp_path / "tls").mkdir()
    cafile, certfile, keyfile = make_certificates(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    with FakeGraph(ssl_context=context) as server:
        server.token = server.add_token()
        server.cafile = cafile
        yield server
