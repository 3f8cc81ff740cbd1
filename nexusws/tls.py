"""TLS for both listeners: load the files once, fail start-up with one line.

One L{CertificateOptions} serves wss and https alike: the certificate and key
(--cert/--key), intermediates (--cert_chain, after any chain already in
--cert), the minimum version (--tls_min_version), the TLS 1.2 ciphers
(--tls_ciphers; TLS 1.3 keeps OpenSSL's suites, all of them strong) and,
with --client_ca, required client certificates signed by that CA.
"""

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

from nexusws.errors import StartupError

#: --tls_min_version values.
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _read(option, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise StartupError(f"{option} {path!r}: cannot read: {e.strerror}") from None


def _read_certificates(option, path, pem=None):
    try:
        return x509.load_pem_x509_certificates(_read(option, path) if pem is None else pem)
    except ValueError:
        raise StartupError(f"{option} {path!r}: no PEM certificate in the file") from None


def _public_der(key):
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certificate_options(cert_path, key_path=None, *, chain_path=None, min_version="1.2",
                             ciphers=None, client_ca_path=None):
    """Build server TLS options from PEM files.

    C{cert_path} may hold the certificate followed by its chain; C{key_path},
    when not given, is looked for in C{cert_path} (a combined PEM file).
    C{chain_path} adds intermediates after that chain (a copy of the server
    certificate in it, as in a "fullchain" file, is dropped). C{min_version}
    is C{"1.2"} or C{"1.3"}; C{ciphers} an OpenSSL cipher string for TLS 1.2;
    C{client_ca_path} makes every client present a certificate signed by a CA
    in that file.

    @raise StartupError: one line naming the option and file at fault.
    """
    version = _min_version(min_version)
    cert_pem = _read("--cert", cert_path)
    certs = _read_certificates("--cert", cert_path, cert_pem)
    key_option, key_file = ("--key", key_path) if key_path else ("--cert", cert_path)
    key_pem = _read(key_option, key_file) if key_path else cert_pem
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise StartupError(
            f"{key_option} {key_file!r}: the private key is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        hint = "" if key_path else " (give the key with --key)"
        raise StartupError(f"{key_option} {key_file!r}: no usable PEM private key in the file{hint}") from None
    # Checked here rather than left to OpenSSL, whose error names neither file.
    if _public_der(key.public_key()) != _public_der(certs[0].public_key()):
        raise StartupError(f"{key_option} {key_file!r} does not match the certificate in --cert {cert_path!r}")
    chain = [("--cert", cert_path, c) for c in certs[1:]]
    if chain_path is not None:
        chain += [("--cert_chain", chain_path, c) for c in _read_certificates("--cert_chain", chain_path)
                  if c != certs[0]]
    _check_chain(certs[0], chain)
    client_cas = _read_certificates("--client_ca", client_ca_path) if client_ca_path else []

    # Twisted's trust root takes pyOpenSSL certificates only.
    trust = ssl.trustRootFromCertificates(
        [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in client_cas]) if client_cas else None
    try:
        # cryptography objects, not pyOpenSSL's deprecated X509/PKey: Twisted
        # hands them straight to pyOpenSSL's Context, which takes either.
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=certs[0],
            extraCertChain=[c for _, _, c in chain],
            raiseMinimumTo=version,
            acceptableCiphers=_acceptable_ciphers(ciphers, version),
            trustRoot=trust,
        )
    except ValueError:  # "yielded no usable ciphers"
        raise StartupError(f"--tls_ciphers {ciphers!r}: OpenSSL selects no TLS 1.2 cipher from it") from None
    try:
        # Built now so that OpenSSL's objections (a key too weak for its
        # security level, say) stop start-up instead of every handshake.
        context = options.getContext()
        # The CA names go into the certificate request, so that a browser
        # offers only the client certificates this gateway accepts.
        for ca in client_cas:
            context.add_client_ca(ca)
    except SSL.Error as e:
        reason = openssl_reason(e)
        if ciphers is not None and "cipher" in reason:
            raise StartupError(f"--tls_ciphers {ciphers!r}: OpenSSL refuses it: {reason}") from None
        raise StartupError(f"--cert {cert_path!r}: OpenSSL refuses it: {reason}") from None
    if ciphers is not None:
        _check_cipher_auth(ciphers, context, cert_path)
    return options


def parse_min_version(value):
    """--tls_min_version: C{"1.2"} or C{"1.3"} (also spelled C{TLSv1.3})."""
    text = str(value).strip().lower().removeprefix("tlsv")
    if text not in VERSIONS:
        raise ValueError(f"{value!r} is not a TLS version nexusws offers: give 1.2 or 1.3")
    return text


def _min_version(value):
    try:
        return VERSIONS[parse_min_version(value)]
    except ValueError as e:
        raise StartupError(f"--tls_min_version: {e}") from None


def _check_chain(leaf, chain):
    """Each chain certificate must have issued the one before it (by name)."""
    previous = leaf
    for option, path, cert in chain:
        if cert.subject != previous.issuer:
            raise StartupError(
                f"{option} {path!r}: chain certificate {cert.subject.rfc4514_string()!r} did not issue "
                f"{previous.subject.rfc4514_string()!r} (issued by {previous.issuer.rfc4514_string()!r}); "
                "give the chain in order, from the server certificate's issuer up"
            )
        previous = cert


def _acceptable_ciphers(ciphers, version):
    """Twisted's form of the --tls_ciphers string, or None for Twisted's default."""
    if ciphers is None:
        return None
    if version == ssl.TLSVersion.TLSv1_3:
        raise StartupError(
            f"--tls_ciphers {ciphers!r} chooses TLS 1.2 ciphers; it has no effect with --tls_min_version 1.3")
    try:
        return ssl.AcceptableCiphers.fromOpenSSLCipherString(ciphers)
    except (SSL.Error, UnicodeError):
        return ssl.AcceptableCiphers([])  # CertificateOptions says "no usable ciphers"


def _check_cipher_auth(ciphers, context, cert_path):
    """Refuse a cipher string with which no TLS 1.2 client can connect.

    OpenSSL accepts strings that select only ciphers the server's key cannot
    serve (C{aRSA} with an ECDSA key, say): TLS 1.2 clients would then all
    fail with "no shared cipher". A handshake in memory with a client
    offering every TLS 1.2 cipher finds that out now.
    """
    server = SSL.Connection(context, None)
    server.set_accept_state()
    client_context = SSL.Context(SSL.TLS_METHOD)
    client_context.set_min_proto_version(SSL.TLS1_2_VERSION)
    client_context.set_max_proto_version(SSL.TLS1_2_VERSION)
    client_context.set_cipher_list(b"ALL:@SECLEVEL=0")
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    for _ in range(4):  # ClientHello, ServerHello...: a few flights at most
        for sender, receiver in ((client, server), (server, client)):
            try:
                sender.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                if sender is server and "no shared cipher" in openssl_reason(e):
                    raise StartupError(
                        f"--tls_ciphers {ciphers!r}: no TLS 1.2 cipher in it works with the key "
                        f"of --cert {cert_path!r} (an RSA key needs aRSA ciphers, an EC key aECDSA)"
                    ) from None
                return  # anything else (a client certificate required...) is not ours to judge
            if server.get_cipher_name() is not None:
                return
            try:
                receiver.bio_write(sender.bio_read(1 << 16))
            except SSL.WantReadError:
                pass


def openssl_reason(error):
    """The reasons an L{SSL.Error} carries, on one line."""
    reasons = [entry[-1] for entry in error.args[0] if entry] if error.args and error.args[0] else []
    return "; ".join(r for r in reasons if r) or str(error)


def wrap(factory, certificate_options):
    """Serve C{factory} over TLS (ws becomes wss, http becomes https)."""
    return TLSMemoryBIOFactory(certificate_options, False, factory)
