"""
The credentials of the authenticated scenarios: a C{mosquitto_passwd} password
file with one user, and a certificate hierarchy (root CA, intermediate, server
certificate for C{127.0.0.1}, device certificate) made by the test suite's
C{tests.certs.make_pki}, copied into the benchmark's temporary directory.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.processes import StartError

#: The one user of the password file, and its password (a throwaway: it exists
#: only in the benchmark's temporary directory and on wrk's command line).
USER = "bench"
PASSWORD = "bench-password"

_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Credentials:
    """
    What the authenticated scenarios use; every path is absolute.

    @ivar password_file: C{mosquitto_passwd -b} output for L{USER} (a C{$7$}
        hash with mosquitto_passwd's default 101 iterations).
    @ivar ca: the root CA certificate (C{[tls] client_ca}; clients trust it for
        the server too).
    @ivar server_chain: the server certificate and the intermediate (C{[tls] cert}).
    @ivar server_key: its key (C{[tls] key}).
    @ivar client_chain: the device certificate and the intermediate.
    @ivar client_key: its key.
    @ivar device: the device certificate's subject CN.
    """

    directory: Path
    password_file: Path
    ca: Path
    server_chain: Path
    server_key: Path
    client_chain: Path
    client_key: Path
    device: str

    @property
    def basic(self) -> str:
        """The base64 of C{USER:PASSWORD} (an C{Authorization: Basic} value)."""
        return base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode("ascii")

    @property
    def authorization(self) -> str:
        """The C{Authorization} header value for L{USER}."""
        return f"Basic {self.basic}"

    def relative(self, path: Path) -> str:
        """C{path} relative to L{directory} (the folder of the configurations)."""
        return str(path.relative_to(self.directory))


def make(directory: Path) -> Credentials:
    """
    Write the password file (C{directory/passwords}) and the certificates
    (C{directory/pki/}).

    @raise StartError: when C{mosquitto_passwd} fails.
    """
    password_file = directory / "passwords"
    mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    done = subprocess.run(
        [mosquitto_passwd, "-c", "-b", str(password_file), USER, PASSWORD],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    if done.returncode != 0 or not password_file.exists():
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise StartError(f"mosquitto_passwd failed: {output}")

    # The test suite's hierarchy; tests is not installed, but lives beside bench.
    if str(_ROOT) not in sys.path:
        sys.path.append(str(_ROOT))
    from tests.certs import DEVICE, make_pki

    pki = make_pki()
    target = directory / "pki"
    try:
        shutil.copytree(pki.directory, target)
    finally:
        pki.remove()
    return Credentials(
        directory=directory,
        password_file=password_file,
        ca=target / Path(pki.ca).name,
        server_chain=target / Path(pki.server_chain).name,
        server_key=target / Path(pki.server_key).name,
        client_chain=target / Path(pki.client_chain).name,
        client_key=target / Path(pki.client_key).name,
        device=DEVICE,
    )
