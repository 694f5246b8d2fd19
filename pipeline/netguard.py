"""Refuse to fetch from this machine's or the cloud's own network (SSRF), redirects included.

A scraped URL list is hostile input: a URL (or a redirect from a harmless one) can point at
127.0.0.1, a private network, a link-local address or a cloud metadata service. img2dataset
fetches with ``urllib.request.urlopen``, so zxl installs, in the worker process, an opener whose
HTTP and HTTPS connections check the address they actually connected to — after DNS, for every
hop of a redirect, so neither a redirect nor DNS rebinding gets around it. A refused request
fails with an error that names the address and the setting that would allow it.

The address is checked twice: every address the host name resolves to is checked *before* a
connection is opened (a redirect to 169.254.169.254 or 10.0.0.1 never sends a packet there; the
connection goes to the checked address, not to a second lookup), and the peer the socket ended
up connected to is checked again after.

Allowed anyway: the addresses in ``fetch.allowed_hosts`` (the demo allows 127.0.0.1 only), or
everything with ``fetch.allow_private_networks``.

The same opener bounds the time a response may take as a whole (``response_deadline``):
urllib's timeout is per socket read, so a server that dribbles a byte just inside it could hold
a download thread for ever. Every read of a response (status line, headers and body) gets the
per-read timeout or what is left of the deadline, whichever is shorter, and a response still
arriving at the deadline fails with a ``TimeoutError`` that says so.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import socket
import time
import urllib.error
import urllib.request

# Cloud metadata services that are not covered by the link-local / private checks.
METADATA = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}


def why_refused(address: str) -> str | None:
    """Why an IP address must not be fetched from, or None for a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip in METADATA or ip == ipaddress.ip_address("169.254.169.254"):
        return f"{ip} is a cloud metadata address"
    for test, kind in (
        (ip.is_unspecified, "an unspecified"),
        (ip.is_loopback, "a loopback"),
        (ip.is_link_local, "a link-local"),
        (ip.is_multicast, "a multicast"),
        (ip.is_private, "a private-network"),
        (ip.is_reserved, "a reserved"),
    ):
        if test:
            return f"{ip} is {kind} address"
    return None


class Policy:
    def __init__(self, allowed_hosts: list[str], allow_private: bool):
        self.allow_private = allow_private
        self.allowed = set()
        for host in allowed_hosts:
            try:
                self.allowed.update(info[4][0] for info in socket.getaddrinfo(host, None))
            except OSError:
                self.allowed.add(host)

    def check(self, address: str) -> None:
        if self.allow_private or address in self.allowed:
            return
        reason = why_refused(address)
        if reason:
            raise urllib.error.URLError(
                f"refused: {reason} (set fetch.allowed_hosts or fetch.allow_private_networks to fetch from it)"
            )


class _DeadlineReader(io.RawIOBase):
    """A response's socket reads: each within the per-read timeout, all within one deadline."""

    def __init__(self, sock: socket.socket, seconds: float):
        self._sock = sock
        self._io = sock.makefile("rb", buffering=0)  # holds the socket open after urllib closes it
        self._per_read = sock.gettimeout()
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def _late(self) -> TimeoutError:
        return TimeoutError(f"timed out: the response did not arrive whole within {self._seconds:g} s")

    def readinto(self, buffer) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._late()
        by_deadline = self._per_read is None or left < self._per_read
        self._sock.settimeout(left if by_deadline else self._per_read)
        try:
            return self._io.readinto(buffer)
        except TimeoutError:
            if by_deadline:  # the deadline, not the per-read timeout, ran out
                raise self._late() from None
            raise

    def close(self) -> None:
        self._io.close()
        super().close()


def _response_class(seconds: float) -> type:
    class DeadlineResponse(http.client.HTTPResponse):
        def __init__(self, sock, *args, **kwargs):
            super().__init__(sock, *args, **kwargs)
            self.fp.close()  # the plain reader http.client made; ours replaces it
            self.fp = io.BufferedReader(_DeadlineReader(sock, seconds))

    return DeadlineResponse


def _connection(base: type, policy: Policy, response_deadline: float | None) -> type:
    class Guarded(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = self._checked_connection
            if response_deadline:
                self.response_class = _response_class(response_deadline)

        def _checked_connection(self, address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):  # noqa: SLF001
            """socket.create_connection, but only ever to addresses the policy allows."""
            host, port = address
            allowed, refusal = [], None
            for *_, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
                try:
                    policy.check(sockaddr[0])
                except urllib.error.URLError as e:
                    refusal = refusal or e
                    continue
                allowed.append(sockaddr[0])
            if not allowed:
                raise refusal or OSError(f"{host} resolves to no address")
            error = None
            for ip in allowed:  # connect to the address checked, not to a second lookup's answer
                try:
                    return socket.create_connection((ip, port), timeout, source_address)
                except OSError as e:
                    error = e
            raise error

        def connect(self):
            super().connect()
            try:
                policy.check(self.sock.getpeername()[0])
            except urllib.error.URLError:
                self.close()
                raise

    return Guarded


def install(allowed_hosts: list[str], allow_private: bool, response_deadline: float | None = None) -> None:
    """Make this process's ``urllib.request.urlopen`` refuse private addresses (see above).

    ``response_deadline``: seconds a response may take from the request sent to its last byte
    (None: no bound but urllib's per-read timeout).
    """
    policy = Policy(allowed_hosts, allow_private)
    http_conn = _connection(http.client.HTTPConnection, policy, response_deadline)
    https_conn = _connection(http.client.HTTPSConnection, policy, response_deadline)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_conn, req, context=self._context)

    urllib.request.install_opener(urllib.request.build_opener(HTTPHandler, HTTPSHandler))


@contextlib.contextmanager
def guarded(allowed_hosts: list[str], allow_private: bool, response_deadline: float | None = None):
    """``install`` for the length of a block, then the process's previous opener again."""
    previous = urllib.request._opener  # noqa: SLF001 - urllib keeps its global opener here
    install(allowed_hosts, allow_private, response_deadline)
    try:
        yield
    finally:
        urllib.request.install_opener(previous)
