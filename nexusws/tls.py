"""TLS for both listeners: load --cert/--key once, fail start-up with one line."""

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

from nexusws.errors import StartupError


def _read(option, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise StartupError(f"{option} {path!r}: cannot read: {e.strerror}") from None


def _public_der(key):
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certificate_options(cert_path, key_path=None):
    """Build server TLS options from PEM files: TLS 1.2 minimum.

    C{cert_path} may hold the certificate followed by its chain; C{key_path},
    when not given, is looked for in C{cert_path} (a combined PEM file).

    @raise StartupError: one line naming the file at fault.
    """
    cert_pem = _read("--cert", cert_path)
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise StartupError(f"--cert {cert_path!r}: no PEM certificate in the file") from None
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

    # cryptography objects, not pyOpenSSL's deprecated X509/PKey: Twisted hands
    # them straight to pyOpenSSL's Context, which takes either.
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=certs[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    try:
        # Built now so that OpenSSL's objections (a key too weak for its
        # security level, say) stop start-up instead of every handshake.
        options.getContext()
    except SSL.Error as e:
        raise StartupError(f"--cert {cert_path!r}: OpenSSL refuses it: {_openssl_reason(e)}") from None
    return options


def _openssl_reason(error):
    reasons = [entry[-1] for entry in error.args[0] if entry] if error.args and error.args[0] else []
    return "; ".join(r for r in reasons if r) or str(error)


def wrap(factory, certificate_options):
    """Serve C{factory} over TLS (ws becomes wss, http becomes https)."""
    return TLSMemoryBIOFactory(certificate_options, False, factory)
