"""The instance certificate and protected settings, the way Azure delivers them (spec §1.5).

On Azure the platform encrypts an extension's `protectedSettings` to a certificate whose private key the
guest agent keeps as `<lib>/<THUMBPRINT>.crt` and `.prv`; the settings file names the thumbprint, and the
handler decrypts with `openssl smime -inform DER -decrypt -recip <crt> -inkey <prv>` (the Python helper
library finds the files through the agent's lib dir, the Go one through `configFolder/../../<thumb>.crt`).
The agent itself never decrypts. So here: one self-signed RSA 2048 certificate per instance in its lib
dir, and CMS enveloped data (DER, base64) that openssl can open with exactly that command.

Only the control plane and tests import this module (it needs `cryptography`); the guest agent does not,
which keeps the instance's init process fast to start.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from scaleset.guest.files import write_file_atomically

CERTIFICATE_SUBJECT = "scaleset instance protected settings"
# Long enough never to expire under a running instance; nothing checks validity on decrypt anyway.
CERTIFICATE_LIFETIME = timedelta(days=3650)


def certificate_paths(lib_dir: Path, thumbprint: str) -> tuple[Path, Path]:
    """Where the agent keeps a certificate and its key: `<lib>/<THUMB>.crt`, `<lib>/<THUMB>.prv`."""
    return lib_dir / f"{thumbprint}.crt", lib_dir / f"{thumbprint}.prv"


def thumbprint_of(cert_pem: bytes) -> str:
    """Uppercase hex SHA-1 of the DER certificate, the form Azure's settings files carry."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der).hexdigest().upper()  # a fingerprint as Azure defines it, not a security hash


def make_instance_certificate(lib_dir: Path, *, now: datetime | None = None) -> str:
    """Make a fresh key pair and self-signed certificate in `lib_dir`; return its thumbprint.

    The key is written first and with mode 0600 from its first byte, so the certificate a handler can
    see always has its key beside it.
    """
    issued = now or datetime.now(UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERTIFICATE_SUBJECT)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued - timedelta(minutes=5))
        .not_valid_after(issued + CERTIFICATE_LIFETIME)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    thumbprint = thumbprint_of(cert_pem)
    lib_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = certificate_paths(lib_dir, thumbprint)
    write_file_atomically(key_path, key_pem.decode("ascii"), mode=0o600)
    write_file_atomically(cert_path, cert_pem.decode("ascii"), mode=0o644)
    return thumbprint


def encrypt_protected_settings(settings: Mapping[str, Any], cert_pem: bytes) -> str:
    """Base64 of DER CMS enveloped data holding the settings as compact JSON, for `cert_pem`'s key.

    Binary mode: without it the content would be canonicalised to CRLF line ends, and the handler
    would decrypt something other than the JSON we encrypted.
    """
    certificate = x509.load_pem_x509_certificate(cert_pem)
    plaintext = json.dumps(dict(settings), separators=(",", ":")).encode("utf-8")
    envelope = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(plaintext)
        .add_recipient(certificate)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    return base64.b64encode(envelope).decode("ascii")


def decrypt_protected_settings(protected: str, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """What a handler sees after decrypting: the settings object (for tests and tools)."""
    certificate = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("protected settings keys are RSA keys")
    plaintext = pkcs7.pkcs7_decrypt_der(base64.b64decode(protected), certificate, key, [])
    settings = json.loads(plaintext)
    if not isinstance(settings, dict):
        raise ValueError("protected settings must decrypt to a JSON object")
    return settings


def decrypt_with_lib(protected: str, lib_dir: Path, thumbprint: str) -> dict[str, Any]:
    """Decrypt the way a handler does: with the certificate files the thumbprint names in `lib_dir`."""
    cert_path, key_path = certificate_paths(lib_dir, thumbprint)
    return decrypt_protected_settings(protected, cert_path.read_bytes(), key_path.read_bytes())
