"""TLS options (--cert_chain, --tls_min_version, --tls_ciphers, --client_ca) and HSTS.

In memory: the options and contexts they build, and HSTS on the real site over a
transport that is or is not TLS. Then real gateways on loopback, probed with
Python's ssl module: intermediates sent, versions and ciphers negotiated,
client certificates demanded, HSTS on https only.

Certificates are generated here with C{cryptography}; no key is committed.
"""

import datetime
import http.client
import io
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect
from zope.interface import implementer

from nexusws import tap, tls, web
from nexusws.api import ApiRoot

LOOPBACK = "tcp:0:interface=127.0.0.1"
BIN = Path(sys.executable).parent
HOUR = datetime.timedelta(hours=1)


# --- a small PKI ----------------------------------------------------------------------


class Authority:
    """A CA (root, or intermediate when C{parent} is given) that issues certificates."""

    def __init__(self, name, parent=None):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer = parent or self
        self.cert = _build(self.name, self.key.public_key(), issuer.name if parent else self.name,
                           issuer.key if parent else self.key, ca=True)

    def issue(self, name, key=None, client=False):
        key = key or ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return _build(subject, key.public_key(), self.name, self.key, ca=False, client=client), key


def _build(subject, public_key, issuer, signing_key, ca, client=False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR).not_valid_after(now + 24 * HOUR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    elif client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def pem(*certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Files:
    """A root, an intermediate, a server certificate for 127.0.0.1, and their PEM files."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.root = Authority("Test Root")
        self.intermediate = Authority("Test Intermediate", self.root)
        self.leaf, leaf_key = self.intermediate.issue("127.0.0.1")
        self.cert = self.write("server.crt", pem(self.leaf))
        self.key = self.write("server.key", key_pem(leaf_key))
        self.chain = self.write("chain.pem", pem(self.intermediate.cert))
        self.fullchain = self.write("fullchain.pem", pem(self.leaf, self.intermediate.cert))
        self.root_pem = self.write("root.pem", pem(self.root.cert))

    def write(self, name, data):
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def client(self, authority, name="alice"):
        """A client certificate from C{authority}: (cert path, key path)."""
        cert, key = authority.issue(name, client=True)
        return self.write(f"{name}.crt", pem(cert)), self.write(f"{name}.key", key_pem(key))


@pytest.fixture
def pki(tmp_path):
    return Files(tmp_path)


def load(pki, **kwargs):
    return tls.load_certificate_options(pki.cert, pki.key, **kwargs)


def refused(*args):
    """The UsageError message of parsing C{args} (plus a port)."""
    with pytest.raises(usage.UsageError) as caught:
        tap.Options().parseOptions([*args, "0"])
    return str(caught.value)


# --- chain ---------------------------------------------------------------------------------


def test_cert_chain_adds_the_intermediate_after_the_certificate(pki):
    """--cert_chain's certificates are sent after the server certificate."""
    assert load(pki).extraCertChain == []
    assert load(pki, chain_path=pki.chain).extraCertChain == [pki.intermediate.cert]


def test_a_fullchain_file_as_cert_chain_does_not_send_the_certificate_twice(pki):
    """A chain file that starts with the server certificate itself ("fullchain") adds
    only the intermediates; the same file as --cert works as well."""
    assert load(pki, chain_path=pki.fullchain).extraCertChain == [pki.intermediate.cert]
    combined = tls.load_certificate_options(pki.fullchain, pki.key)
    assert combined.extraCertChain == [pki.intermediate.cert]


def test_chains_in_cert_and_in_cert_chain_are_joined_in_that_order(pki):
    """The chain after the certificate in --cert comes first, then --cert_chain's."""
    top = pki.write("root-only.pem", pem(pki.root.cert))
    options = tls.load_certificate_options(pki.fullchain, pki.key, chain_path=top)
    assert options.extraCertChain == [pki.intermediate.cert, pki.root.cert]


def test_a_chain_that_did_not_issue_the_certificate_is_refused_naming_the_file(pki):
    """A --cert_chain whose first certificate is not the server certificate's issuer
    (another CA's chain, or the root before the intermediate) stops start-up."""
    wrong = pki.write("wrong.pem", pem(pki.root.cert, pki.intermediate.cert))
    message = refused("--cert", pki.cert, "--key", pki.key, "--cert_chain", wrong)
    assert message == (
        f"--cert_chain {wrong!r}: chain certificate 'CN=Test Root' did not issue '127.0.0.1' "
        "(issued by 'CN=Test Intermediate'); give the chain in order, from the server certificate's issuer up"
    ).replace("'127.0.0.1'", "'CN=127.0.0.1'")


@pytest.mark.parametrize("option", ["--cert_chain", "--client_ca"])
def test_unreadable_or_non_pem_chain_and_ca_files_are_one_line_errors(pki, option):
    """--cert_chain and --client_ca: a missing file or one without PEM certificates
    stops parsing with one line naming the option and the file."""
    missing = str(pki.dir / "missing.pem")
    assert refused("--cert", pki.cert, "--key", pki.key, option, missing) == (
        f"{option} {missing!r}: cannot read: No such file or directory")
    assert refused("--cert", pki.cert, "--key", pki.key, option, pki.key) == (
        f"{option} {pki.key!r}: no PEM certificate in the file")


@pytest.mark.parametrize("args", [
    ["--cert_chain", "x.pem"], ["--client_ca", "ca.pem"], ["--tls_ciphers", "HIGH"], ["--tls_min_version", "1.3"],
])
def test_tls_options_without_cert_are_refused(args):
    """A TLS option without --cert would silently do nothing: it is an error."""
    assert refused(*args) == f"{args[0]} needs --cert"


# --- versions -----------------------------------------------------------------------------------


def test_min_version_1_3_disables_tls_1_2_and_the_default_keeps_it(pki):
    """--tls_min_version 1.3 turns TLS 1.2 off in the context; the default (1.2) leaves it on."""
    default = load(pki).getContext().set_options(0)
    strict = load(pki, min_version="1.3").getContext().set_options(0)
    assert not default & SSL.OP_NO_TLSv1_2 and default & SSL.OP_NO_TLSv1_1
    assert strict & SSL.OP_NO_TLSv1_2 and not strict & SSL.OP_NO_TLSv1_3


@pytest.mark.parametrize("value, parsed", [("1.2", "1.2"), ("1.3", "1.3"), ("TLSv1.3", "1.3")])
def test_min_version_values(pki, value, parsed):
    """--tls_min_version takes 1.2 or 1.3, also spelled TLSv1.3."""
    options = tap.Options()
    options.parseOptions(["--cert", pki.cert, "--key", pki.key, "--tls_min_version", value, "0"])
    assert options["tls_min_version"] == parsed


@pytest.mark.parametrize("value", ["1.1", "1.0", "2", "tls"])
def test_other_min_versions_are_refused(pki, value):
    """Anything but 1.2 and 1.3 (older versions included) is a one-line error."""
    assert refused("--cert", pki.cert, "--key", pki.key, "--tls_min_version", value) == (
        f"--tls_min_version: {value!r} is not a TLS version nexusws offers: give 1.2 or 1.3")


# --- ciphers ------------------------------------------------------------------------------------


def offered(options):
    """The TLS 1.2 ciphers a server context built from C{options} offers."""
    names = SSL.Connection(options.getContext(), None).get_cipher_list()
    return [n for n in names if not n.startswith("TLS_")]


def test_tls_ciphers_restricts_the_tls_1_2_ciphers_offered(pki):
    """--tls_ciphers replaces Twisted's TLS 1.2 cipher list with the string's choice."""
    assert len(offered(load(pki))) > 1
    assert offered(load(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")) == ["ECDHE-ECDSA-AES128-GCM-SHA256"]


@pytest.mark.parametrize("ciphers, message", [
    ("NO-SUCH-CIPHER", "OpenSSL selects no TLS 1.2 cipher from it"),
    ("TLS_AES_128_GCM_SHA256", "OpenSSL selects no TLS 1.2 cipher from it"),
    ("eNULL", "OpenSSL refuses it: no cipher match"),
    ("aRSA", "no TLS 1.2 cipher in it works with the key of --cert"),
])
def test_bad_cipher_strings_are_one_line_errors(pki, ciphers, message):
    """A string selecting no cipher, or only ciphers the (ECDSA) key cannot serve, stops
    parsing with one line naming --tls_ciphers and the string."""
    assert refused("--cert", pki.cert, "--key", pki.key, "--tls_ciphers", ciphers).startswith(
        f"--tls_ciphers {ciphers!r}: {message}")


def test_rsa_ciphers_are_accepted_with_an_rsa_key(pki):
    """The key check is by key type: aRSA ciphers suit an RSA certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, _ = pki.intermediate.issue("127.0.0.1", key=key)
    cert_path, key_path = pki.write("rsa.crt", pem(cert)), pki.write("rsa.key", key_pem(key))
    options = tls.load_certificate_options(cert_path, key_path, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    assert offered(options) == ["ECDHE-RSA-AES128-GCM-SHA256"]


def test_ciphers_with_min_version_1_3_are_refused(pki):
    """--tls_ciphers chooses TLS 1.2 ciphers: with --tls_min_version 1.3 it would be ignored."""
    assert refused("--cert", pki.cert, "--key", pki.key, "--tls_min_version", "1.3", "--tls_ciphers", "HIGH") == (
        "--tls_ciphers 'HIGH' chooses TLS 1.2 ciphers; it has no effect with --tls_min_version 1.3")


def test_bad_cipher_string_stops_a_real_start_with_exit_2_and_one_line(pki):
    """The console script refuses a bad --tls_ciphers before listening: exit 2, one line."""
    env = {k: v for k, v in os.environ.items() if k != "WEBSOCKETSERVER_SECURITY_TOKEN"}
    done = subprocess.run([str(BIN / "nexus-websocketserver"), "--cert", pki.cert, "--key", pki.key,
                           "--tls_ciphers", "NOPE", "--ws_listen", LOOPBACK],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=30)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2
    assert lines == ["nexus-websocketserver: error: --tls_ciphers 'NOPE': OpenSSL selects no TLS 1.2 cipher from it"]


# --- client certificates ------------------------------------------------------------------------


def test_client_ca_makes_the_server_demand_a_client_certificate(pki):
    """--client_ca sets VERIFY_PEER and VERIFY_FAIL_IF_NO_PEER_CERT; without it no
    certificate is asked for."""
    assert load(pki).getContext().get_verify_mode() == SSL.VERIFY_NONE
    mode = load(pki, client_ca_path=pki.root_pem).getContext().get_verify_mode()
    assert mode & SSL.VERIFY_PEER and mode & SSL.VERIFY_FAIL_IF_NO_PEER_CERT


def test_client_ca_names_are_sent_so_browsers_offer_the_right_certificate(pki):
    """The certificate request lists the --client_ca subjects."""
    context = load(pki, client_ca_path=pki.root_pem).getContext()
    names = SSL.Connection(context, None).get_client_ca_list()
    assert [n.CN for n in names] == ["Test Root"]


# --- HSTS in memory ----------------------------------------------------------------------------------


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """What twisted.web sees of a TLS connection: an L{ISSLTransport} (hence a TCP one)."""

    def setTcpNoDelay(self, enabled):
        pass

    def getPeerCertificate(self):
        return None


def get(site, target, secure):
    """Response (status, headers) of C{target} from C{site} over a transport that is TLS or not."""
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = TLSStringTransport() if secure else StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")

    class Sock:
        def makefile(self, *args):
            return io.BytesIO(transport.value())

    response = http.client.HTTPResponse(Sock())
    response.begin()
    return response.status, response.headers


@pytest.fixture
def site_with(tmp_path):
    def make(**limits):
        return web.make_site(str(tmp_path), ApiRoot(None), reactor=MemoryReactorClock(), **limits)
    return make


@pytest.mark.parametrize("target, status", [(b"/", 200), (b"/missing", 404), (b"/ansys", 302),
                                            (b"/v1/status", 200), (b"/v1/nope", 404)])
def test_every_https_response_carries_hsts_with_the_default_max_age(site_with, target, status):
    """Files, listings, redirects, errors and the API alike: Strict-Transport-Security on https."""
    code, headers = get(site_with(), target, secure=True)
    assert code == status
    assert headers["strict-transport-security"] == "max-age=31536000"


def test_plain_http_responses_never_carry_hsts(site_with):
    """Over plain http the header is absent (a browser would ignore it, and it would be a lie)."""
    for target in (b"/", b"/missing", b"/v1/status"):
        assert "strict-transport-security" not in get(site_with(hsts_max_age=600), target, secure=False)[1]


def test_hsts_max_age_is_configurable_and_0_disables_it(site_with):
    """--hsts_max_age N sets max-age=N; 0 sends no header at all."""
    assert get(site_with(hsts_max_age=600), b"/", secure=True)[1]["strict-transport-security"] == "max-age=600"
    assert "strict-transport-security" not in get(site_with(hsts_max_age=0), b"/", secure=True)[1]


def test_a_refused_head_over_https_carries_hsts_too(site_with):
    """The limits' own answers (here a 431) are https responses like any other."""
    code, headers = get(site_with(max_header_size=1024), b"/" + b"a" * 2000, secure=True)
    assert code == 414 and headers["strict-transport-security"] == "max-age=31536000"


# --- real gateways ----------------------------------------------------------------------------------


def exchange(port, context, request=b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"):
    """TLS-connect, send C{request}, read to EOF: (raw response, TLS socket's version and
    cipher), or the exception the handshake or the read raised."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(request)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data, s.version(), s.cipher()[0]
    except (ssl.SSLError, ConnectionError) as e:
        return e


def client_context(cafile, version=None, ciphers=None, cert=None):
    context = ssl.create_default_context(cafile=cafile)
    if ciphers:
        context.set_ciphers(ciphers)
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
    if cert:
        context.load_cert_chain(*cert)
    return context


@pytest.fixture
def start(gateway, pki, echo_port, tmp_path):
    """C{start(*tls_args)}: a gateway with pki's certificate, https and a tunnel to an echo server."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("secure")

    def run(*args):
        return gateway(["--cert", pki.cert, "--key", pki.key, "--ws_listen", LOOPBACK, "--http_directory",
                        str(site), "--http_listen", LOOPBACK, "--client_port", str(echo_port), *args], http=True)
    return run


def test_intermediate_from_cert_chain_lets_clients_trusting_only_the_root_verify(start, pki):
    """Without --cert_chain a client that trusts only the root cannot verify the server
    (the intermediate is missing); with it, both listeners verify."""
    bare = start()
    failed = exchange(bare.http_port, client_context(pki.root_pem))
    assert isinstance(failed, ssl.SSLCertVerificationError) and "unable to get local issuer" in str(failed)
    chained = start("--cert_chain", pki.chain)
    for port in (chained.http_port, chained.ws_port):
        assert not isinstance(exchange(port, client_context(pki.root_pem)), Exception)


def test_client_certificates_are_required_on_both_listeners(start, pki, tmp_path):
    """With --client_ca: a client certificate from that CA gets https and a wss tunnel;
    no certificate, or one from another CA, gets neither."""
    gw = start("--cert_chain", pki.chain, "--client_ca", pki.root_pem)
    good = pki.client(pki.intermediate, "alice")
    stranger = pki.client(Authority("Other CA"), "mallory")
    chain_for_good = (pki.write("alice-chain.crt", Path(good[0]).read_bytes() + pem(pki.intermediate.cert)),
                      good[1])

    answer = exchange(gw.http_port, client_context(pki.root_pem, cert=chain_for_good))
    assert not isinstance(answer, Exception) and answer[0].startswith(b"HTTP/1.1 200")
    with connect(f"wss://127.0.0.1:{gw.ws_port}", ssl=client_context(pki.root_pem, cert=chain_for_good),
                 proxy=None, open_timeout=10) as ws:
        ws.send(b"with certificate")
        assert ws.recv(timeout=10) == b"with certificate"

    for cert, alert in ((None, "CERTIFICATE_REQUIRED"), (stranger, "UNKNOWN_CA")):
        for port in (gw.http_port, gw.ws_port):
            answer = exchange(port, client_context(pki.root_pem, cert=cert))
            assert isinstance(answer, ssl.SSLError) and alert in str(answer), answer
        with pytest.raises(WebSocketException):
            with connect(f"wss://127.0.0.1:{gw.ws_port}", ssl=client_context(pki.root_pem, cert=cert),
                         proxy=None, open_timeout=10):
                pass
    gw.wait_for(r"https 127\.0\.0\.1 TLS failed: .*peer did not return a certificate")
    gw.wait_for(r"https 127\.0\.0\.1 TLS failed: .*certificate verify failed")


def test_min_version_1_3_refuses_a_tls_1_2_client(start, pki):
    """--tls_min_version 1.3: a TLS 1.2-only client fails the handshake on both listeners;
    a TLS 1.3 client connects. (The default accepts the same 1.2 client: see test_tls.)"""
    gw = start("--cert_chain", pki.chain, "--tls_min_version", "1.3")
    for port in (gw.http_port, gw.ws_port):
        old = exchange(port, client_context(pki.root_pem, ssl.TLSVersion.TLSv1_2))
        assert isinstance(old, ssl.SSLError) and "PROTOCOL_VERSION" in str(old).upper()
        assert exchange(port, client_context(pki.root_pem, ssl.TLSVersion.TLSv1_3))[1] == "TLSv1.3"


def test_tls_ciphers_decides_the_cipher_tls_1_2_clients_get(start, pki):
    """A TLS 1.2 client preferring AES256 gets it from the default gateway, but AES128 from
    one restricted with --tls_ciphers; a client offering only AES256 is refused there.
    TLS 1.3 clients keep OpenSSL's suites."""
    aes256, aes128 = "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"
    both = client_context(pki.root_pem, ssl.TLSVersion.TLSv1_2, ciphers=f"{aes256}:{aes128}")
    default = start("--cert_chain", pki.chain)
    assert exchange(default.http_port, both)[1:] == ("TLSv1.2", aes256)
    restricted = start("--cert_chain", pki.chain, "--tls_ciphers", aes128)
    for port in (restricted.http_port, restricted.ws_port):
        assert exchange(port, both)[1:] == ("TLSv1.2", aes128)
        only_256 = exchange(port, client_context(pki.root_pem, ssl.TLSVersion.TLSv1_2, ciphers=aes256))
        assert isinstance(only_256, ssl.SSLError) and "HANDSHAKE_FAILURE" in str(only_256).upper()
    assert exchange(restricted.http_port, client_context(pki.root_pem))[1] == "TLSv1.3"


def test_hsts_on_the_real_https_listener_and_not_on_plain_http(start, pki, gateway, tmp_path):
    """A real https answer carries Strict-Transport-Security with --hsts_max_age; a plain
    http gateway given the same option sends none."""
    gw = start("--cert_chain", pki.chain, "--hsts_max_age", "86400")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=client_context(pki.root_pem)))
    with opener.open(f"{gw.http_url}/index.html", timeout=10) as response:
        assert response.headers["Strict-Transport-Security"] == "max-age=86400"
    plain = gateway(["--ws_listen", LOOPBACK, "--http_directory", str(tmp_path / "site"), "--http_listen",
                     LOOPBACK, "--hsts_max_age", "86400"], http=True)
    assert plain.http_scheme == "http"
    plain_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with plain_opener.open(f"{plain.http_url}/index.html", timeout=10) as response:
        assert response.read() == b"secure"
        assert "Strict-Transport-Security" not in response.headers
