"""An IMAP server for tests: Debian's Dovecot 2.3 (``dovecot-imapd``), run from a temp dir.

Everything the server needs lives under its own directory: the configuration,
a self-signed CA and the server certificate it signed, a ``passwd-file`` per
user, maildirs, logs and Dovecot's runtime sockets. It listens on 127.0.0.1
only, plain IMAP and IMAPS each on a free port, and is stopped by PID, never by
name, so a machine's own Dovecot is never touched. ``stop()`` then ``start()``
brings it back on the same ports with the same mail: a server restart.

Run as root, Dovecot drops to ``mail`` for mail access and to its own
unprivileged users for the login processes (``.ci/system-packages test`` installs
the package, which creates them). As another user it runs every process as that
user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import grp
import imaplib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from jobwire.runtime.embedded import (
    LOOPBACK,
    EmbeddedServer,
    EmbeddedServerError,
    child_options,
    free_port,
    is_listening,
    log_tails,
    terminate_all,
    wait_started,
)

__all__ = ["DovecotServer", "ImapAccount", "ImapTestClient", "find_dovecot", "self_signed_ca"]

T = TypeVar("T")

_POLL_INTERVAL = 0.02
_DOMAIN = "jobwire.test"


def find_dovecot() -> str:
    """Path of the ``dovecot`` master binary (``/usr/sbin`` is often not on a user's PATH)."""
    for candidate in (shutil.which("dovecot"), "/usr/sbin/dovecot", "/usr/local/sbin/dovecot"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedServerError(
        "dovecot not found on PATH nor in /usr/sbin; install Debian's 'dovecot-imapd' "
        "(`.ci/system-packages test` does, as root)"
    )


@dataclass(frozen=True)
class ImapAccount:
    """One mailbox user on a test IMAP server: what a client needs to log in."""

    host: str
    port: int
    """Plain IMAP (no TLS)."""
    tls_port: int
    """IMAPS (TLS from the first byte)."""
    user: str
    password: str
    ca_pem: str
    """The CA certificate (PEM) the server's certificate is signed by."""


def self_signed_ca(directory: Path, host: str = LOOPBACK) -> tuple[Path, Path, Path]:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (a CA and the certificate it
    signed for ``host`` and ``localhost``) into ``directory``; return their paths.

    Made with the ``cryptography`` package when installed, else the ``openssl`` CLI.
    """
    ca, cert, key = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    try:
        _certificates_with_cryptography(ca, cert, key, host)
    except ImportError:
        _certificates_with_openssl(directory, ca, cert, key, host)
    key.chmod(0o600)
    return ca, cert, key


def _certificates_with_cryptography(ca: Path, cert: Path, key: Path, host: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobwire test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca.write_bytes(ca_cert.public_bytes(pem))
    cert.write_bytes(server_cert.public_bytes(pem))
    key.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _certificates_with_openssl(directory: Path, ca: Path, cert: Path, key: Path, host: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise EmbeddedServerError(
            "neither the 'cryptography' package nor the openssl CLI is available "
            "to make the test server's certificate"
        )
    ca_key = directory / "ca.key"
    san = f"subjectAltName=DNS:localhost,IP:{host}"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca), "-days", "30", "-subj", "/CN=jobwire test CA",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")  # fmt: skip
    csr = directory / "server.csr"
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")  # fmt: skip
    extensions = directory / "server.ext"
    extensions.write_text(
        f"{san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "30", "-extfile", str(extensions))  # fmt: skip


class DovecotServer(EmbeddedServer):
    """Dovecot serving IMAP and IMAPS on 127.0.0.1 from ``directory``.

    Ports are fixed at construction (free ones unless given), so a restart keeps
    them. Users are added with :meth:`add_user` at any time, each in a
    ``passwd-file`` of its own.
    """

    # Written at start: lets another process (a test run) use this server.
    INFO_FILE = "server.json"

    def __init__(
        self, directory: Path, imap_port: int | None = None, imaps_port: int | None = None
    ) -> None:
        self.directory = Path(directory).absolute()
        self.imap_port = imap_port if imap_port is not None else free_port()
        if imaps_port is None:
            # The kernel may hand out a port it just gave us again.
            imaps_port = free_port()
            while imaps_port == self.imap_port:
                imaps_port = free_port()
        self.imaps_port = imaps_port
        self.host = LOOPBACK
        self.log_path = self.directory / "dovecot.log"
        self.config_path = self.directory / "dovecot.conf"
        self.users_dir = self.directory / "users"
        self.mail_dir = self.directory / "mail"
        self.ca_path = self.directory / "ca.pem"
        self.auth_socket_path = self.directory / "run" / "auth-smtp"
        """Dovecot's SASL service for an SMTP server (PostfixServer's AUTH checks
        logins against these users)."""
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def attach(cls, directory: Path) -> DovecotServer | None:
        """The server another process started in ``directory``, if it still listens.

        It can be used and given users (their passwd-files are there) but not
        stopped: its process is not ours.
        """
        try:
            info = json.loads((Path(directory) / cls.INFO_FILE).read_text())
            server = cls(directory, int(info["imap_port"]), int(info["imaps_port"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        listening = is_listening(LOOPBACK, server.imap_port) and is_listening(
            LOOPBACK, server.imaps_port
        )
        return server if listening and server.ca_path.exists() else None

    @property
    def pid(self) -> int | None:
        """PID of the running master process (started by this object), None when stopped."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    def start(self, timeout: float = 10.0) -> None:
        """Write what is missing (config, certificates, folders), start the master
        in the foreground and return once both ports accept connections."""
        if self.running:
            raise EmbeddedServerError(f"dovecot already running (pid {self.pid})")
        binary = find_dovecot()
        for port in (self.imap_port, self.imaps_port):
            if is_listening(LOOPBACK, port):
                raise EmbeddedServerError(
                    f"cannot start dovecot: another process already listens on {LOOPBACK}:{port}"
                )
        self._prepare()
        offset = _file_size(self.log_path)
        with (self.directory / "dovecot.out").open("ab") as out:
            # -F: stay in the foreground, so this PID is the master's and stopping
            # it stops its children. A session of its own keeps a terminal's
            # Ctrl-C away from it.
            self._process = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session, and it dies with us (a killed test run).
                **child_options(),
            )
        try:
            wait_started(
                self._process,
                lambda: all(is_listening(LOOPBACK, p) for p in (self.imap_port, self.imaps_port)),
                name=f"dovecot on {self.imap_port}/{self.imaps_port}",
                timeout=timeout,
                tail=lambda: self._tail(offset),
            )
        except EmbeddedServerError:
            self.stop()
            raise
        (self.directory / self.INFO_FILE).write_text(
            json.dumps({"imap_port": self.imap_port, "imaps_port": self.imaps_port})
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master by PID, SIGKILL after ``timeout``; then the same for
        the processes it had started. Return once all are gone and the ports closed.
        Safe when not running.

        Dovecot's master exits within a second, but a logged-in session's process
        outlives it by about ten seconds before it says BYE; a restarted server
        should drop its clients at once, as ``systemctl restart`` does.
        """
        process, self._process = self._process, None
        if process is None:
            return
        terminate_all(
            process,
            _children(process.pid),
            (self.imap_port, self.imaps_port),
            name="dovecot",
            timeout=timeout,
        )

    def add_user(self, user: str | None = None, password: str | None = None) -> ImapAccount:
        """Add a mailbox user (``u<hex>@jobwire.test`` and a random password unless given)."""
        user = user or f"u{secrets.token_hex(5)}@{_DOMAIN}"
        password = password or secrets.token_urlsafe(16)
        if any(c in user + password for c in ":\n\r/") or user.startswith("."):
            raise ValueError("user names and passwords cannot hold ':', '/' or line breaks")
        self.users_dir.mkdir(parents=True, exist_ok=True)
        # One passwd-file per user: Dovecot notices a changed file by its mtime
        # in whole seconds, so users appended to one file within a second of its
        # last read would not be found; a new file is always read.
        passwd = self.users_dir / user
        passwd.write_text(f"{user}:{{PLAIN}}{password}::::::\n")
        # Read by Dovecot's auth process, which runs as its internal user; the
        # passwords are random and only for this throw-away server.
        passwd.chmod(0o644)
        return self.account(user, password)

    def account(self, user: str, password: str) -> ImapAccount:
        return ImapAccount(
            host=LOOPBACK,
            port=self.imap_port,
            tls_port=self.imaps_port,
            user=user,
            password=password,
            ca_pem=self.ca_pem,
        )

    def __repr__(self) -> str:
        return (
            f"DovecotServer(imap={self.imap_port}, imaps={self.imaps_port}, pid={self.pid}, "
            f"directory={str(self.directory)!r})"
        )

    # ------------------------------------------------------------ internals

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Dovecot's unprivileged login processes must reach the sockets under
        # run/; mkdtemp() makes directories 0700.
        self.directory.chmod(0o755)
        if not self.ca_path.exists():
            self_signed_ca(self.directory)
        self.users_dir.mkdir(exist_ok=True)
        self.mail_dir.mkdir(exist_ok=True)
        for folder in ("run", "state"):
            (self.directory / folder).mkdir(exist_ok=True)
        mail_uid, mail_gid = self._mail_owner()
        if os.geteuid() == 0:
            os.chown(self.mail_dir, mail_uid, mail_gid)
        self.config_path.write_text(self._config(mail_uid, mail_gid))

    def _mail_owner(self) -> tuple[int, int]:
        if os.geteuid() != 0:
            return os.geteuid(), os.getegid()
        try:
            return pwd.getpwnam("mail").pw_uid, grp.getgrnam("mail").gr_gid
        except KeyError:
            raise EmbeddedServerError("no 'mail' user or group to own the test maildirs") from None

    def _config(self, mail_uid: int, mail_gid: int) -> str:
        d = self.directory
        if os.geteuid() == 0:
            users = ""
        else:
            me = pwd.getpwuid(os.geteuid()).pw_name
            users = f"default_internal_user = {me}\ndefault_login_user = {me}\n"
        return f"""# Written by jobwire.testing.dovecot for tests; rewritten at every start.
base_dir = {d}/run
state_dir = {d}/state
instance_name = jobwire-test-{self.imap_port}
log_path = {self.log_path}
protocols = imap
listen = {LOOPBACK}
{users}first_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
mail_location = maildir:{self.mail_dir}/%u
mail_uid = {mail_uid}
mail_gid = {mail_gid}
disable_plaintext_auth = no
auth_mechanisms = plain login
ssl = yes
ssl_cert = <{d}/server.pem
ssl_key = <{d}/server.key
ssl_min_protocol = TLSv1.2
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.users_dir}/%u
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={self.mail_dir}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {LOOPBACK}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {LOOPBACK}
    port = {self.imaps_port}
    ssl = yes
  }}
  chroot =
}}
# Postfix (jobwire.testing.postfix) asks here whether an SMTP AUTH login is good.
service auth {{
  unix_listener {self.auth_socket_path} {{
    mode = 0666
  }}
}}
# The default chroot needs directories owned by root that the run dir is not.
service anvil {{
  chroot =
}}
# No statistics: at shutdown, login processes would wait 5 s for the stats
# process, which is already gone.
stats_writer_socket_path =
# Tests log in often and fast. A failed login still costs every later login
# from 127.0.0.1 a penalty (2 s, doubling up to 15 s, kept by anvil): tests of
# wrong passwords belong on a server of their own (dovecot_factory).
auth_failure_delay = 0
mail_max_userip_connections = 1000
"""

    def _tail(self, offset: int) -> str:
        return log_tails(
            [(self.log_path, offset), (self.directory / "dovecot.out", 0)],
            "(no log)",
        )


def _children(pid: int) -> list[int]:
    """PIDs of the processes ``pid`` started (Linux /proc; none elsewhere)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in task.read_text().split()]
    return found


def _file_size(path: Path) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return 0


class ImapTestClient:
    """What a test does to a mailbox (append, create folders, read flags), from async code.

    Built on the standard library's blocking ``imaplib``, each call in a worker
    thread: the test side shares no code, and so no bug, with the aioimaplib client
    the email listener uses. Folder names are plain ASCII here.
    """

    def __init__(self, account: ImapAccount, *, tls: bool = False) -> None:
        self.account = account
        self.tls = tls
        self._imap: imaplib.IMAP4 | None = None
        self._lock = threading.Lock()

    async def __aenter__(self) -> Self:
        await self._run(self._connect)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._run(self._logout)

    async def append(self, raw: bytes, folder: str = "INBOX", flags: Iterable[str] = ()) -> int:
        """Append one message; its UID (Dovecot answers APPENDUID)."""
        [uid] = await self.append_many([raw], folder, flags)
        return uid

    async def append_many(
        self, raws: Iterable[bytes], folder: str = "INBOX", flags: Iterable[str] = ()
    ) -> list[int]:
        messages, flag_list = list(raws), " ".join(flags)

        def append() -> list[int]:
            imap, uids = self._session(), []
            for raw in messages:
                typ, data = imap.append(
                    _quote(folder), f"({flag_list})" if flag_list else None, None, raw
                )
                _check(typ, data, "APPEND")
                found = re.search(rb"APPENDUID \d+ (\d+)", _first(data))
                if found is None:
                    raise EmbeddedServerError(f"APPEND without APPENDUID: {data!r}")
                uids.append(int(found.group(1)))
            return uids

        return await self._run(append)

    async def create(self, folder: str) -> None:
        await self._command("CREATE", lambda imap: imap.create(_quote(folder)))

    async def delete(self, folder: str) -> None:
        """Delete ``folder`` (INBOX cannot be: empty it instead)."""
        await self._command("DELETE", lambda imap: imap.delete(_quote(folder)))

    async def uidvalidity(self, folder: str = "INBOX") -> int:
        def status() -> int:
            typ, data = self._session().status(_quote(folder), "(UIDVALIDITY)")
            _check(typ, data, "STATUS")
            found = re.search(rb"UIDVALIDITY (\d+)", _first(data))
            assert found is not None, data
            return int(found.group(1))

        return await self._run(status)

    async def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID → flags of every message in ``folder`` (read-only, flags unchanged)."""

        def fetch() -> dict[int, set[str]]:
            imap = self._session()
            _check(*imap.select(_quote(folder), readonly=True), "EXAMINE")
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
            _check(typ, data, "FETCH")
            found: dict[int, set[str]] = {}
            for line in data:
                if not isinstance(line, bytes):
                    continue
                match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", line)
                if match:
                    # \\Recent belongs to the session, not to the message.
                    flags = set(match.group(2).decode().split()) - {"\\Recent"}
                    found[int(match.group(1))] = flags
            imap.close()
            return found

        return await self._run(fetch)

    async def count(self, folder: str = "INBOX") -> int:
        return len(await self.flags(folder))

    async def messages(self, folder: str = "INBOX") -> dict[int, bytes]:
        """UID → raw message (as stored, headers and body) of every message in
        ``folder``; read-only, so flags (``\\Seen``) stay as they were."""

        def fetch() -> dict[int, bytes]:
            imap = self._session()
            _check(*imap.select(_quote(folder), readonly=True), "EXAMINE")
            typ, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            _check(typ, data, "FETCH")
            found: dict[int, bytes] = {}
            for item in data:
                # imaplib gives (b'1 (UID 7 BODY[] {123}', b'<literal>') per message.
                if isinstance(item, tuple):
                    match = re.search(rb"UID (\d+)", item[0])
                    if match:
                        found[int(match.group(1))] = item[1]
            imap.close()
            return found

        return await self._run(fetch)

    # ------------------------------------------------------------ internals

    def _connect(self) -> None:
        account = self.account
        if self.tls:
            context = ssl.create_default_context(cadata=account.ca_pem)
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                account.host, account.tls_port, ssl_context=context, timeout=30
            )
        else:
            imap = imaplib.IMAP4(account.host, account.port, timeout=30)
        try:
            imap.login(account.user, account.password)
        except BaseException:
            imap.shutdown()
            raise
        self._imap = imap

    def _logout(self) -> None:
        imap, self._imap = self._imap, None
        if imap is not None:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()

    def _session(self) -> imaplib.IMAP4:
        if self._imap is None:
            raise EmbeddedServerError("ImapTestClient used outside `async with`")
        return self._imap

    async def _command(
        self, name: str, call: Callable[[imaplib.IMAP4], tuple[str, list[bytes | None]]]
    ) -> None:
        def run() -> None:
            _check(*call(self._session()), name)

        await self._run(run)

    async def _run(self, call: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return call()

        return await asyncio.to_thread(locked)


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _first(data: list[bytes | None] | list[bytes]) -> bytes:
    return next((item for item in data if isinstance(item, bytes)), b"")


def _check(typ: str, data: list[bytes | None] | list[bytes], command: str) -> None:
    if typ != "OK":
        raise EmbeddedServerError(f"IMAP {command} failed: {typ} {_first(data)!r}")


def main() -> None:
    """Run a test server in the foreground until Ctrl-C, so that test runs reuse it:
    ``python -m jobwire.testing.dovecot DIR`` then ``JOBWIRE_TEST_IMAP_DIR=DIR pytest``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    server = DovecotServer(args.directory)
    server.start()
    print(f"{server!r}\nexport JOBWIRE_TEST_IMAP_DIR={server.directory}", flush=True)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
