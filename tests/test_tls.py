"""TLS: --cert/--key turn ws into wss and http into https on the same ports,
TLS 1.2 at least, and bad files stop start-up with one line naming the file.

Certificates are generated here with C{cryptography}; no key is committed."""

import os
import socket
import ssl
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from websockets.exceptions import InvalidMessage
from websockets.sync.client import connect

from nexusws import tap, tls
from nexusws.errors import StartupError
from support.tls import make_cert, pem_key

BIN = Path(sys.executable).parent
COMMANDS = {
    "cli": [str(BIN / "nexus-websocketserver")],
    "twistd": [str(BIN / "twistd"), "-n", "--pidfile=", "nexusws"],
}
LOOPBACK = "tcp:0:interface=127.0.0.1"


@pytest.fixture
def cert(tmp_path):
    return make_cert(tmp_path)


def client_context(cert_path, version=None):
    """A client context trusting only C{cert_path}, optionally pinned to one TLS version."""
    context = ssl.create_default_context(cafile=str(cert_path))
    if version is not None:
        # Let the client offer old versions at all (Python warns that they are
        # deprecated): refusing them is the server's job.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
    return context


# --- loading the files (in memory) ---------------------------------------------------


def test_cert_and_key_files_load(cert):
    """A PEM certificate and its PEM key give server TLS options."""
    options = tls.load_certificate_options(str(cert[0]), str(cert[1]))
    assert options.getContext() is not None


def test_combined_pem_needs_no_key_option(tmp_path, cert):
    """--cert alone may name one file holding the certificate and then the key."""
    combined = tmp_path / "combined.pem"
    combined.write_bytes(cert[0].read_bytes() + cert[1].read_bytes())
    assert tls.load_certificate_options(str(combined)).getContext() is not None


def test_tls_versions_below_1_2_are_disabled_in_the_context(cert):
    """The server context itself disables TLS 1.0 and 1.1 (whatever OpenSSL's defaults)."""
    context = tls.load_certificate_options(str(cert[0]), str(cert[1])).getContext()
    flags = context.set_options(0)  # ORs nothing in, returns the options in force
    assert flags & SSL.OP_NO_TLSv1 and flags & SSL.OP_NO_TLSv1_1
    assert not flags & SSL.OP_NO_TLSv1_2 and not flags & SSL.OP_NO_TLSv1_3


def _bad_files(tmp_path, cert):
    other_cert, other_key = make_cert(tmp_path, "other")
    not_pem = tmp_path / "notpem.txt"
    not_pem.write_text("this is not PEM\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(cert[1].read_bytes(), password=None)
    encrypted.write_bytes(pem_key(key, b"secret"))
    return {
        "missing cert": ((tmp_path / "missing.crt", cert[1]), "--cert {cert!r}: cannot read: No such file or directory"),
        "cert is a directory": ((tmp_path, cert[1]), "--cert {cert!r}: cannot read: Is a directory"),
        "missing key": ((cert[0], tmp_path / "missing.key"), "--key {key!r}: cannot read: No such file or directory"),
        "cert not PEM": ((not_pem, cert[1]), "--cert {cert!r}: no PEM certificate in the file"),
        "key not PEM": ((cert[0], not_pem), "--key {key!r}: no usable PEM private key in the file"),
        "key is a cert": ((cert[0], other_cert), "--key {key!r}: no usable PEM private key in the file"),
        "no key in cert file": ((cert[0], None), "--cert {cert!r}: no usable PEM private key in the file (give the key with --key)"),
        "encrypted key": ((cert[0], encrypted), "--key {key!r}: the private key is encrypted"),
        "mismatched key": ((cert[0], other_key), "--key {key!r} does not match the certificate in --cert {cert!r}"),
    }


BAD_CASES = ["missing cert", "cert is a directory", "missing key", "cert not PEM", "key not PEM",
             "key is a cert", "no key in cert file", "encrypted key", "mismatched key"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_tls_files_are_one_line_errors_naming_the_file(tmp_path, cert, case):
    """Each bad --cert/--key file is a StartupError, and a UsageError from Options, naming it."""
    (cert_path, key_path), template = _bad_files(tmp_path, cert)[case]
    expected = template.format(cert=str(cert_path), key=str(key_path))
    with pytest.raises(StartupError) as caught:
        tls.load_certificate_options(str(cert_path), key_path and str(key_path))
    assert str(caught.value).startswith(expected)
    args = ["--cert", str(cert_path)] + (["--key", str(key_path)] if key_path else []) + ["0"]
    with pytest.raises(usage.UsageError) as caught:
        tap.Options().parseOptions(args)
    assert str(caught.value).startswith(expected)


def test_cert_makes_both_listeners_secure(tmp_path, cert):
    """With --cert/--key, makeService reports wss and https for the same listen strings."""
    options = tap.Options()
    options.parseOptions(["--cert", str(cert[0]), "--key", str(cert[1]), "--http_directory", str(tmp_path),
                          "--http_listen", "tcp:0", "--ws_listen", "tcp:0"])
    listeners = list(tap.makeService(options, MemoryReactorClock()))[1:]
    assert [(l.scheme, l.description) for l in listeners] == [("wss", "tcp:0"), ("https", "tcp:0")]


def test_ssl_endpoint_string_is_secure_and_excludes_cert(cert):
    """An ssl: listen string is reported as wss; combining it with --cert is refused."""
    ssl_listen = f"ssl:0:interface=127.0.0.1:certKey={cert[0]}:privateKey={cert[1]}"
    options = tap.Options()
    options.parseOptions(["--ws_listen", ssl_listen])
    assert list(tap.makeService(options, MemoryReactorClock()))[1].scheme == "wss"
    with pytest.raises(usage.UsageError, match="does its own TLS"):
        tap.Options().parseOptions(["--cert", str(cert[0]), "--key", str(cert[1]), "--ws_listen", ssl_listen])


# --- a real gateway over TLS -----------------------------------------------------------


@pytest.fixture
def tls_gateway(gateway, cert, echo_port, tmp_path):
    """A console-script gateway with --cert/--key, an HTTP directory and an echo backend."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>secure</p>")
    gw = gateway(["--cert", str(cert[0]), "--key", str(cert[1]), "--ws_listen", LOOPBACK,
                  "--http_directory", str(site), "--http_listen", LOOPBACK,
                  "--client_port", str(echo_port)], http=True)
    return gw, cert[0]


def test_wss_tunnel_and_https_get(tls_gateway):
    """With --cert/--key the tunnel is wss:// and the files are served over https://."""
    gw, cert_path = tls_gateway
    assert (gw.ws_scheme, gw.http_scheme) == ("wss", "https")
    with connect(gw.ws_url, ssl=client_context(cert_path), proxy=None, open_timeout=10) as ws:
        ws.send(b"over tls")
        assert ws.recv(timeout=10) == b"over tls"
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=client_context(cert_path))
    )
    with opener.open(f"{gw.http_url}/index.html", timeout=10) as response:
        assert response.read() == b"<p>secure</p>"


def test_plain_ws_is_not_served_on_the_tls_port(tls_gateway):
    """The TLS listener does not also answer plain ws:// (same port, TLS only)."""
    gw, _ = tls_gateway
    with pytest.raises(InvalidMessage, match="did not receive a valid HTTP response"):
        with connect(f"ws://127.0.0.1:{gw.ws_port}", proxy=None, open_timeout=5):
            pass


@pytest.mark.parametrize(
    "version, accepted",
    [(ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True), (ssl.TLSVersion.TLSv1_3, True)],
    ids=["TLSv1.1", "TLSv1.2", "TLSv1.3"],
)
def test_tls_handshake_needs_at_least_1_2(tls_gateway, version, accepted):
    """A TLS 1.1-only client is refused; TLS 1.2 and 1.3 clients complete the handshake.

    (OpenSSL's default security level refuses TLS 1.1 too; the in-memory test
    above pins that our own context disables it.)
    """
    gw, cert_path = tls_gateway
    context = client_context(cert_path, version)
    for port in (gw.ws_port, gw.http_port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            if accepted:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
                    assert tls_socket.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                                    ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
            else:
                with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
                    context.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.parametrize("via", ["cli", "twistd"])
def test_mismatched_key_stops_a_real_start_with_one_line(via, tmp_path, cert):
    """A key that does not match the certificate: exit 2 and one line naming both files."""
    _, other_key = make_cert(tmp_path, "other")
    env = {k: v for k, v in os.environ.items() if k != "WEBSOCKETSERVER_SECURITY_TOKEN"}
    done = subprocess.run([*COMMANDS[via], "--cert", str(cert[0]), "--key", str(other_key), "--ws_listen", LOOPBACK],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=30)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2
    assert lines == [f"{'nexus-websocketserver' if via == 'cli' else 'twistd nexusws'}: error: "
                     f"--key {str(other_key)!r} does not match the certificate in --cert {str(cert[0])!r}"]
