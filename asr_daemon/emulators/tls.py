"""A self-signed certificate for ``asr-daemon emulate --tls``, so clients that insist on ``wss://`` or
``https://`` (Tiro's sample, Yating's SDK) connect unchanged except for trusting it.

Made with the ``openssl`` command: the daemon does not depend on the ``cryptography`` package, and the
command is on every system the daemon runs on (Raspberry Pi OS, Debian, the container image). The key is an
EC P-256 key, valid for 30 days, for ``localhost``, ``127.0.0.1``, ``::1`` and the host the emulator listens on.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL_TIMEOUT = 30.0
VALID_DAYS = 30


class CertificateError(RuntimeError):
    """The certificate could not be made (no ``openssl``, or it failed)."""


@dataclass(frozen=True)
class SelfSignedCertificate:
    certificate: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.certificate))


def subject_alt_names(hosts: list[str]) -> str:
    names: list[str] = []
    for host in ["localhost", "127.0.0.1", "::1", *hosts]:
        if not host or host in ("0.0.0.0", "::"):
            continue
        try:
            entry = f"IP:{ipaddress.ip_address(host)}"
        except ValueError:
            entry = f"DNS:{host}"
        if entry not in names:
            names.append(entry)
    return ",".join(names)


def make_certificate(directory: Path, hosts: list[str] | None = None) -> SelfSignedCertificate:
    """Write ``emulator.crt`` and ``emulator.key`` into ``directory`` (which should be private)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("--tls needs the openssl command (apt install openssl)")
    certificate, key = directory / "emulator.crt", directory / "emulator.key"
    command = [
        openssl,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        str(VALID_DAYS),
        "-subj",
        "/CN=asr-daemon emulator",
        "-addext",
        f"subjectAltName={subject_alt_names(hosts or [])}",
        "-keyout",
        str(key),
        "-out",
        str(certificate),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=OPENSSL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertificateError(f"openssl failed: {exc}") from None
    if result.returncode != 0 or not certificate.is_file():
        raise CertificateError(f"openssl failed: {result.stderr.strip()[-300:]}")
    key.chmod(0o600)
    return SelfSignedCertificate(certificate, key)
