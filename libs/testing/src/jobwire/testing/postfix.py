"""A mail server for tests that really delivers: Debian's Postfix, run from a temp dir,
writing into the maildirs of a :class:`~jobwire.testing.dovecot.DovecotServer`.

A private instance: its configuration (``main.cf``, ``master.cf``), queue, data,
certificates and log all live under its own directory, and it is started with
``master -c DIR``; the machine's ``main.cf``/``master.cf`` are never used and the
system's instance is never started. It listens on 127.0.0.1 only: SMTP (with
STARTTLS offered) and SMTPS (TLS from the first byte) each on a free port, with a
certificate signed by a CA of its own (:attr:`PostfixServer.ca_pem`), and AUTH
(PLAIN, LOGIN; over TLS only, optional) checked by Dovecot against its users. It looks
nothing up in DNS and relays nowhere: a recipient outside its domains is refused
at RCPT (554 relay access denied), as is an unknown user of its domains (550
5.1.1). Every accepted message lands in the INBOX of a Dovecot user, where a test
reads it over IMAP.

Delivery is Postfix's own ``virtual`` agent writing straight into the maildir
Dovecot reads (``maildir:MAIL/%u``, as ``mail:mail``), not LMTP to Dovecot: it
needs nothing from Dovecot (no LMTP listener, no auth lookups), and whether a
recipient exists is a table lookup inside ``smtpd``, so an unknown user is
refused at RCPT time. With LMTP ``smtpd`` would accept any address and bounce
later, unless recipient verification probes were set up, which answer 450 first.

Postfix runs as root only (its daemons drop to ``postfix``); ``.ci/system-packages
test`` installs it. The master runs in the foreground as our child, so its PID is
the one in ``queue/pid/master.pid``, and it is stopped by that PID, never by name.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from jobwire.runtime.embedded import (
    LOOPBACK,
    EmbeddedServer,
    EmbeddedServerError,
    child_options,
    free_port,
    is_listening,
    log_tails,
    pid_alive,
    terminate_all,
    wait_started,
)
from jobwire.testing.dovecot import DovecotServer, ImapAccount, self_signed_ca

__all__ = ["DOMAINS", "PostfixServer", "find_postfix", "session_processes"]

DOMAINS = ("cases.test", "client.test")
"""Mail domains a server accepts unless told others: the case system's side and a
customer's ("external") side."""

_POLL_INTERVAL = 0.02
_LOCAL_PART = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}")
_DOMAIN_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


def find_postfix() -> str:
    """Path of the ``postfix`` command (``/usr/sbin`` is often not on a user's PATH)."""
    for candidate in (shutil.which("postfix"), "/usr/sbin/postfix", "/usr/local/sbin/postfix"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedServerError(
        "postfix not found on PATH nor in /usr/sbin; install Debian's 'postfix' "
        "(`.ci/system-packages test` does, as root, without configuring the system's instance)"
    )


class PostfixServer(EmbeddedServer):
    """Postfix accepting mail for ``domains`` on 127.0.0.1, delivering into ``dovecot``.

    Ports are fixed at construction (free ones unless given), so ``stop()`` then
    ``start()`` brings it back on the same ports with its queue and mailboxes.
    Mailboxes are added with :meth:`add_mailbox` at any time, also while running.
    """

    def __init__(
        self,
        directory: Path,
        dovecot: DovecotServer,
        *,
        domains: Iterable[str] = DOMAINS,
        smtp_port: int | None = None,
        smtps_port: int | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.dovecot = dovecot
        self.domains = tuple(domain.lower() for domain in domains)
        for domain in self.domains:
            if not _DOMAIN_NAME.fullmatch(domain):
                raise ValueError(f"not a domain name: {domain!r}")
        self.host = LOOPBACK
        self.smtp_port = smtp_port if smtp_port is not None else free_port()
        if smtps_port is None:
            # The kernel may hand out a port it just gave us again.
            smtps_port = free_port()
            while smtps_port == self.smtp_port:
                smtps_port = free_port()
        self.smtps_port = smtps_port
        self.config_dir = self.directory / "etc"
        self.queue_dir = self.directory / "queue"
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "postfix.log"
        self.ca_path = self.directory / "ca.pem"
        self.mailboxes_path = self.config_dir / "mailboxes"
        self.pid_file = self.queue_dir / "pid" / "master.pid"
        self._process: subprocess.Popen[bytes] | None = None
        # add_mailbox rewrites one table; tests may call it from several threads.
        self._mailboxes_lock = threading.Lock()

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
        """The CA certificate (PEM) the server's certificate is signed by."""
        return self.ca_path.read_text()

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration, let ``postfix check`` set up the queue, start the
        master in the foreground and return once both ports accept connections."""
        if self.running:
            raise EmbeddedServerError(f"postfix already running (pid {self.pid})")
        if os.geteuid() != 0:
            raise EmbeddedServerError("the test Postfix runs as root only")
        postfix = find_postfix()
        for port in (self.smtp_port, self.smtps_port):
            if is_listening(LOOPBACK, port):
                raise EmbeddedServerError(
                    f"cannot start postfix: another process already listens on {LOOPBACK}:{port}"
                )
        self._prepare()
        # Creates the queue's folders with the owners and modes Postfix wants, and
        # says what is wrong with the configuration: the master itself reports its
        # start-up errors only to syslog, which a test machine may not have.
        self._run(postfix, "-c", str(self.config_dir), "check")
        daemon_dir = self._run(
            "postconf", "-c", str(self.config_dir), "-h", "daemon_directory"
        ).strip()
        offset = _file_size(self.log_path)
        with (self.directory / "master.out").open("ab") as out:
            # The master stays in the foreground unless asked to wait for itself
            # (-w), so this PID is the master's; as the leader of a session of its
            # own it passes our SIGTERM on to every daemon it started.
            self._process = subprocess.Popen(
                [f"{daemon_dir}/master", "-c", str(self.config_dir), "-s"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                **child_options(),
            )
        try:
            wait_started(
                self._process,
                lambda: all(is_listening(LOOPBACK, p) for p in (self.smtp_port, self.smtps_port)),
                name=f"postfix's master on {self.smtp_port}/{self.smtps_port}",
                timeout=timeout,
                tail=lambda: self._tail(offset),
            )
        except EmbeddedServerError:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master by PID (it passes the signal on to its daemons), SIGKILL
        after ``timeout``; then the same for any process of its session still alive.
        Return once all are gone and the ports closed. Safe when not running."""
        process, self._process = self._process, None
        if process is None:
            return
        # Every daemon of this instance is in the master's session (start_new_session).
        terminate_all(
            process,
            session_processes(process.pid),
            (self.smtp_port, self.smtps_port),
            name="postfix",
            timeout=timeout,
        )

    def add_mailbox(
        self, address: str | None = None, *, domain: str | None = None, password: str | None = None
    ) -> ImapAccount:
        """Make ``address`` (``u<hex>@domain`` unless given; ``domain`` defaults to the
        first of :attr:`domains`) a mailbox: a Dovecot user whose INBOX receives what
        Postfix accepts for it. Returns that user's IMAP login.

        Seen by every SMTP connection opened after this returns: a running ``smtpd``
        notices the replaced table before it accepts its next connection and
        restarts, so no reload is needed.
        """
        if address is None:
            address = f"u{secrets.token_hex(5)}@{domain or self.domains[0]}"
        local, _, address_domain = address.lower().rpartition("@")
        if not _LOCAL_PART.fullmatch(local) or address_domain not in self.domains:
            raise ValueError(
                f"{address!r} is not a plain lower-case address in one of {self.domains}"
            )
        address = f"{local}@{address_domain}"
        account = self.dovecot.add_user(address, password)
        if not self.mailboxes_path.exists():
            # Before the first start: postmap needs the configuration too.
            self._prepare()
        with self._mailboxes_lock:
            lines = self.mailboxes_path.read_text()
            # The value is the maildir under virtual_mailbox_base; its trailing
            # slash makes Postfix write a maildir, not an mbox file.
            entry = f"{address} {address}/\n"
            if entry not in lines.splitlines(keepends=True):
                self._write_mailboxes(lines + entry)
        return account

    def __repr__(self) -> str:
        return (
            f"PostfixServer(smtp={self.smtp_port}, smtps={self.smtps_port}, pid={self.pid}, "
            f"directory={str(self.directory)!r})"
        )

    # ------------------------------------------------------------ internals

    def _prepare(self) -> None:
        for folder in (self.directory, self.config_dir, self.queue_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # The daemons run as 'postfix' and must reach the queue; mkdtemp() makes
        # directories 0700.
        self.directory.chmod(0o755)
        self.data_dir.mkdir(exist_ok=True)
        os.chown(self.data_dir, pwd.getpwnam("postfix").pw_uid, -1)
        if not self.ca_path.exists():
            self_signed_ca(self.directory)
        self.dovecot.mail_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (("main.cf", self._main_cf()), ("master.cf", self._master_cf())):
            path = self.config_dir / name
            path.write_text(text)
            # Every Postfix program rereads a configuration file until its mtime
            # is in the past (it might be half-written): seconds at each start.
            # Ours is complete.
            past = time.time() - 2
            os.utime(path, (past, past))
        if not self.mailboxes_path.with_suffix(".db").exists():
            with self._mailboxes_lock:
                self._write_mailboxes("")

    def _write_mailboxes(self, text: str) -> None:
        """Replace the mailbox table (text and its hash file) in one rename each.

        Postfix daemons check their open tables before each new connection and
        restart when one changed: by its mtime in whole seconds (two changes in
        one second would be missed) or by its link count dropping to zero. A
        renamed-over file always has the latter, and is never seen half-written.
        """
        staged = self.mailboxes_path.with_name("mailboxes.next")
        staged.write_text(text)
        # Written after the text, so never older than it (Postfix warns otherwise).
        self._run("postmap", "-c", str(self.config_dir), f"hash:{staged}")
        staged.replace(self.mailboxes_path)
        staged.with_name("mailboxes.next.db").replace(self.mailboxes_path.with_name("mailboxes.db"))

    def _mail_owner(self) -> tuple[int, int]:
        # The owner Dovecot gives its maildirs (DovecotServer as root uses 'mail').
        try:
            return pwd.getpwnam("mail").pw_uid, grp.getgrnam("mail").gr_gid
        except KeyError:
            raise EmbeddedServerError("no 'mail' user or group to own the test maildirs") from None

    def _main_cf(self) -> str:
        uid, gid = self._mail_owner()
        refuse = "error:5.7.1 this test server delivers only to its own domains"
        return f"""# Written by jobwire.testing.postfix for tests; rewritten at every start.
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {self.log_path}
maillog_file_prefixes = {self.directory}
myhostname = mail.jobwire.test
mydomain = jobwire.test
myorigin = $myhostname
inet_interfaces = {LOOPBACK}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# No local delivery, no aliases, nothing relayed: every domain is virtual.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
smtpd_relay_restrictions = reject_unauth_destination
default_transport = {refuse}
relay_transport = {refuse}
# No DNS: no reverse lookup of clients (each would cost a timeout offline), no MX.
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
virtual_mailbox_domains = {", ".join(self.domains)}
virtual_mailbox_base = {self.dovecot.mail_dir}
virtual_mailbox_maps = hash:{self.mailboxes_path}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = {min(uid, 100)}
smtputf8_enable = yes
# AUTH (PLAIN, LOGIN) with the Dovecot users' logins, offered only over TLS.
# Optional: a recipient in our domains is taken without it, as from any MTA.
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {self.dovecot.auth_socket_path}
smtpd_tls_auth_only = yes
smtpd_tls_security_level = may
smtpd_tls_cert_file = {self.directory}/server.pem
smtpd_tls_key_file = {self.directory}/server.key
smtpd_tls_received_header = yes
biff = no
delay_warning_time = 0
"""

    def _master_cf(self) -> str:
        # No chroot anywhere: a chroot would need copies of system files under the queue.
        return f"""# Written by jobwire.testing.postfix for tests; rewritten at every start.
# service type  private unpriv chroot wakeup maxproc command
{LOOPBACK}:{self.smtp_port} inet n - n - - smtpd
{LOOPBACK}:{self.smtps_port} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

    def _run(self, *command: str) -> str:
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=30, check=False
            )
        except FileNotFoundError:
            raise EmbeddedServerError(
                f"{command[0]} not found (install Debian's 'postfix')"
            ) from None
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"{' '.join(command)} failed with code {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    def _tail(self, offset: int) -> str:
        return log_tails(
            [(self.log_path, offset), (self.directory / "master.out", 0)],
            "(no log; Postfix reports start-up errors to syslog only)",
        )


def session_processes(session: int) -> list[int]:
    """PIDs of the live processes in session ``session`` (Linux /proc; none elsewhere)."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            # Fields after the parenthesised command name: state ppid pgrp session ...
            if int(text[text.rindex(")") + 2 :].split()[3]) == session:
                pid = int(stat.parent.name)
                if pid_alive(pid):
                    found.append(pid)
    return found


def _file_size(path: Path) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return 0
