"""Refuse to fetch from this machine's or the cloud's own network (SSRF), redirects included.

A scraped URL list is hostile input: a URL (or a redirect from a harmless one) can point at
127.0.0.1, a private network, a link-local address or a cloud metadata service. img2dataset
fetches with ``urllib.request.urlopen``, so zxl installs, in the worker process, an opener whose
HTTP and HTTPS connections check the address they actually connected to — after DNS, for every
hop of a redirect, so neither a redirect nor DNS rebinding gets around it. A refused request
fails with an error that names the address and the setting that would allow it.

Allowed anyway: the addresses in ``fetch.allowed_hosts`` (the demo allows 127.0.0.1 only), or
everything with ``fetch.allow_private_networks``.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
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


def _connection(base: type, policy: Policy) -> type:
    class Guarded(base):
        def connect(self):
            super().connect()
            try:
                policy.check(self.sock.getpeername()[0])
            except urllib.error.URLError:
                self.close()
                raise

    return Guarded


def install(allowed_hosts: list[str], allow_private: bool) -> None:
    """Make this process's ``urllib.request.urlopen`` refuse private addresses (see above)."""
    policy = Policy(allowed_hosts, allow_private)
    http_conn = _connection(http.client.HTTPConnection, policy)
    https_conn = _connection(http.client.HTTPSConnection, policy)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_conn, req, context=self._context)

    urllib.request.install_opener(urllib.request.build_opener(HTTPHandler, HTTPSHandler))


@contextlib.contextmanager
def guarded(allowed_hosts: list[str], allow_private: bool):
    """``install`` for the length of a block, then the process's previous opener again."""
    previous = urllib.request._opener  # noqa: SLF001 - urllib keeps its global opener here
    install(allowed_hosts, allow_private)
    try:
        yield
    finally:
        urllib.request.install_opener(previous)
