"""Fetch only what a scraped URL list may fetch: http(s), public addresses, bounded responses.

A scraped URL list is hostile input: a URL (or a redirect from a harmless one) can point at
127.0.0.1, a private network, a link-local address, a cloud metadata service, or use another
scheme altogether (``file:///etc/passwd``, ``file:///dev/zero``, ``ftp://``, ``data:``). A
``Guard`` is one fetch policy with an opener of its own, never urllib's global one:

- **schemes**: only ``http`` and ``https``, for the first URL and for every redirect; the opener
  has no file, FTP, data or proxy handler at all, so nothing else can be reached by any path;
- **credentials**: a URL with userinfo (``http://user:pass@host/``, ``http://user@host/``, also
  percent-encoded) is refused, first URL or redirect, before any lookup or connection: credentials
  in a scraped list are never sent to a host (urllib would send them in the ``Host`` header and
  look up ``user:pass@host`` as a name). The host is what urllib connects to, after the ``@``;
- **addresses**: every address the host name resolves to is checked *before* a connection is
  opened (a redirect to 169.254.169.254 or 10.0.0.1 never sends a packet there; the connection
  goes to the checked address, not to a second lookup), and the peer the socket ended up
  connected to is checked again after. Allowed anyway: the addresses in ``fetch.allowed_hosts``,
  or everything with ``fetch.allow_private_networks``;
- **time**: urllib's timeout is per socket read, so a server that dribbles a byte just inside it
  could hold a download thread for ever. Every read of a response (status line, headers and body,
  redirects included) gets the per-read timeout or what is left of one deadline for the whole
  request, whichever is shorter;
- **size**: a response that announces or sends more than ``max_bytes`` fails at that byte;
- **connections**: a Guard keeps a connection open after a response read to its end (HTTP/1.1
  keep-alive) and sends its next request for the same scheme, host and port over it, from any
  thread, one request at a time: no new TCP (and TLS) handshake per image. Only a connection this
  Guard opened, and so checked, is reused; one whose response was not read to the end, failed, or
  that the server closed or wrote to while it was idle is closed instead; at most ``max_idle``
  stay open idle, none longer than ``idle_seconds``. ``Guard.close`` closes the idle ones.

img2dataset fetches with ``urllib.request.urlopen(request, timeout=...)`` from its own threads.
``patch_img2dataset`` points img2dataset's ``urllib`` (its module's binding, nobody else's) at
``urlopen`` below, and zxl gives img2dataset a timeout that carries its Guard
(``Guard.timeout``): the policy travels with each request, so two shards with different
policies in one worker, on any number of threads, each get their own, and a request that carries
no policy is refused rather than fetched unguarded. ``connect_to`` (curl's ``--connect-to``)
sends the connection for one host:port to another without changing the URL; the checks apply to
the address really connected to. Host names in ``fetch.allowed_hosts`` and ``connect_to`` match the
URL's parsed host (any case, IPv6 with or without brackets, in any spelling), never its netloc.
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import select
import socket
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request

SCHEMES = ("http", "https")
HEADER_ALLOWANCE = 64 * 1024  # per response, beside the body's byte cap
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


def scheme_refusal(url: str, redirect: bool = False) -> urllib.error.URLError | None:
    """The error for a URL whose scheme is not http or https, else None."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in SCHEMES:
        return None
    what = f"scheme {scheme}" if scheme else "a URL without a scheme"
    if redirect:
        return urllib.error.URLError(f"refused: a redirect to {what} (only http and https are followed)")
    return urllib.error.URLError(f"refused: {what} (only http and https are fetched)")


CREDENTIALS = "refused: credentials in the URL (user@…) are not sent; remove them from the list"
REDIRECT_CREDENTIALS = "refused: a redirect to a URL with credentials (user@…); credentials in a URL are not sent"


def credentials_refusal(url: str, redirect: bool = False) -> urllib.error.URLError | None:
    """The error for a URL with userinfo (``user:pass@``, ``user@``, ``:pass@``, or an ``@`` that
    urllib would decode from ``%40`` into the host it connects to), else None. Only the netloc
    counts: an ``@`` in the path, query or fragment is not userinfo. The message never repeats
    the credentials."""
    netloc = urllib.parse.urlsplit(url.strip()).netloc
    if "@" in urllib.parse.unquote(netloc):
        return urllib.error.URLError(REDIRECT_CREDENTIALS if redirect else CREDENTIALS)
    return None


def host_key(host: str) -> str:
    """A host name or address as the policy compares it: brackets off, lower case, an IP address
    in its one short spelling (``[0:0::1]`` and ``::1`` are the same host)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


class Policy:
    def __init__(self, allowed_hosts: list[str], allow_private: bool):
        self.allow_private = allow_private
        self.allowed = set()
        for host in allowed_hosts:
            host = host_key(host)
            try:
                self.allowed.update(host_key(info[4][0]) for info in socket.getaddrinfo(host, None))  # pyright: ignore[reportArgumentType] - getaddrinfo gives IP addresses as str (typeshed allows int for other families)
            except OSError:
                self.allowed.add(host)

    def check(self, address: str) -> None:
        if self.allow_private or host_key(address) in self.allowed:
            return
        reason = why_refused(address)
        if reason:
            raise urllib.error.URLError(
                f"refused: {reason} (set fetch.allowed_hosts or fetch.allow_private_networks to fetch from it)"
            )


class ResponseTooLargeError(OSError):
    pass


class _Budget:
    """What one request (all its redirects together) may still take: time and bytes. A request and
    its hops run on one thread, so this needs no lock."""

    def __init__(self, seconds: float | None, max_bytes: int | None):
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.max_bytes = max_bytes
        self.read = 0
        self.headers = 0

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def late(self) -> TimeoutError:
        return TimeoutError(f"timed out: the response did not arrive whole within {self.seconds:g} s")

    def too_large(self, announced: int | None = None) -> ResponseTooLargeError:
        said = f"announces {announced} bytes" if announced is not None else f"sent more than {self.max_bytes} bytes"
        return ResponseTooLargeError(f"response too large: it {said}, over fetch.max_response_bytes={self.max_bytes}")

    def spend(self, n: int) -> None:
        self.read += n
        if self.max_bytes is not None and self.read > self.max_bytes + self.headers:
            raise self.too_large()

    def new_response(self) -> None:
        """Room for one more response's status line and headers on top of the cap (the socket's
        bytes are counted, and a read may take the headers and the body together)."""
        self.headers += HEADER_ALLOWANCE


class _BudgetReader(io.RawIOBase):
    """A response's socket reads: each within the per-read timeout, all within the budget."""

    def __init__(self, sock: socket.socket, budget: _Budget):
        self._sock = sock
        self._io = sock.makefile("rb", buffering=0)  # holds the socket open after urllib closes it
        self._per_read = sock.gettimeout()
        self._budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        left = self._budget.left()
        if left is not None and left <= 0:
            raise self._budget.late()
        by_deadline = left is not None and (self._per_read is None or left < self._per_read)
        self._sock.settimeout(left if by_deadline else self._per_read)
        try:
            n = self._io.readinto(buffer)
        except TimeoutError:
            if by_deadline:  # the deadline, not the per-read timeout, ran out
                raise self._budget.late() from None
            raise
        if n:
            self._budget.spend(n)
        return n

    def close(self) -> None:
        self._io.close()
        super().close()


class _BudgetResponse(http.client.HTTPResponse):
    """A response read within its request's budget. ``release(reusable)`` is called once, when the
    response is done with its connection: reusable when its body was read to the end and the server
    keeps the connection open, not when it was closed early, failed or ends with the connection."""

    def __init__(self, sock, *args, budget: _Budget, release=None, **kwargs):
        self.budget, self._release, self._trailer_read = budget, release, False
        super().__init__(sock, *args, **kwargs)
        self.budget.new_response()
        self.fp.close()  # the plain reader http.client made; ours replaces it
        self.fp = io.BufferedReader(_BudgetReader(sock, self.budget))

    def begin(self):
        super().begin()
        length = self.getheader("Content-Length")
        if length and length.strip().isdigit() and self.budget.max_bytes is not None:
            if int(length) > self.budget.max_bytes:
                raise self.budget.too_large(int(length))

    def _read_and_discard_trailer(self):
        super()._read_and_discard_trailer()  # pyright: ignore[reportAttributeAccessIssue] - http.client's private step, the end of a chunked body
        self._trailer_read = True

    def _close_conn(self):
        whole = self._trailer_read if self.chunked else self.length == 0
        super()._close_conn()  # pyright: ignore[reportAttributeAccessIssue] - http.client's private step
        # 1xx (bar 100, which http.client skips) is not the final answer: the real one may follow
        self._done(whole and not self.will_close and self.status >= 200)

    def close(self):
        if self.fp is not None:  # before the body's end: its connection holds unread bytes
            self._done(False)
        super().close()

    def _done(self, reusable: bool) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(reusable)


def _connection(base: type, guard: Guard) -> type:
    class Guarded(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = self._checked_connection

        def _checked_connection(
            self,
            address: tuple[str, int],
            timeout=socket._GLOBAL_DEFAULT_TIMEOUT,  # noqa: SLF001  # pyright: ignore[reportAttributeAccessIssue] - http.client's private sentinel, not in typeshed
            source_address=None,
        ):
            """socket.create_connection, but only ever to addresses the policy allows."""
            host, port = guard.connect_to.get((host_key(address[0]), address[1]), address)
            allowed, refusal = [], None
            for *_, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
                try:
                    guard.policy.check(sockaddr[0])  # pyright: ignore[reportArgumentType] - getaddrinfo gives IP addresses as str (typeshed allows int for other families)
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
            assert error is not None  # allowed is not empty: every address was tried and failed
            raise error

        def connect(self):
            super().connect()
            try:
                guard.policy.check(self.sock.getpeername()[0])
            except urllib.error.URLError:
                self.close()
                raise

    return Guarded


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (it would follow ftp://), but only to http and https."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri")
        if target is not None:
            refusal = scheme_refusal(urllib.parse.urljoin(req.full_url, target.strip()), redirect=True)
            if refusal is not None:
                fp.close()
                raise refusal
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.zxl_budget = req.zxl_budget  # pyright: ignore[reportAttributeAccessIssue] - zxl's own attribute on urllib's Request; one budget for the request and all its hops
            new.zxl_redirected = True  # pyright: ignore[reportAttributeAccessIssue] - zxl's own attribute on urllib's Request
        return new


def _readable(sock: socket.socket) -> bool:
    """Whether an idle socket has something to read (the server closed it, or sent what nobody asked for)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class GuardedTimeout(float):
    """A urllib timeout (seconds per read) that carries the Guard its request must go through."""

    guard: Guard

    def __new__(cls, seconds: float, guard: Guard):
        self = super().__new__(cls, seconds)
        self.guard = guard
        return self


class Guard:
    """One fetch policy and its own opener (see the module docstring).

    ``response_deadline``: seconds a request may take from the first byte sent to the last byte
    of its final response, redirects included (None: no bound but urllib's per-read timeout).
    ``max_bytes``: the most a request's responses may hold (None: no bound).
    ``connect_to``: {(host, port): (host2, port2)}, where to connect instead.
    ``max_idle``: the most connections kept open while idle, all hosts together (the oldest goes);
    ``idle_seconds``: how long one may sit idle before it is closed instead of reused.
    """

    def __init__(
        self,
        allowed_hosts: list[str] | tuple[str, ...] = (),
        allow_private: bool = False,
        response_deadline: float | None = None,
        max_bytes: int | None = None,
        connect_to: dict[tuple[str, int], tuple[str, int]] | None = None,
        max_idle: int = 32,
        idle_seconds: float = 30.0,
    ):
        self.policy = Policy(list(allowed_hosts), allow_private)
        # (scheme, host:port) → [(connection, when it went idle)], oldest first
        self._idle: dict[tuple[str, str], list[tuple[http.client.HTTPConnection, float]]] = {}
        self.max_idle, self.idle_seconds = max_idle, idle_seconds
        self._lock = threading.Lock()
        self._closed = False
        self.response_deadline, self.max_bytes = response_deadline, max_bytes
        self.connect_to = {(host_key(h), p): (host_key(h2), p2) for (h, p), (h2, p2) in (connect_to or {}).items()}
        http_conn, https_conn = (
            _connection(http.client.HTTPConnection, self),
            _connection(http.client.HTTPSConnection, self),
        )

        def checked(req):
            """Every request, first or redirected, just before its connection: never one that
            would carry credentials (urllib connects to ``req.host``, the netloc percent-decoded)."""
            refusal = credentials_refusal(req.full_url, getattr(req, "zxl_redirected", False))
            if refusal is None and "@" in req.host:
                refusal = urllib.error.URLError(CREDENTIALS)
            if refusal is not None:
                raise refusal
            return req

        guard = self

        class HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return guard._request(http_conn, checked(req))

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return guard._request(https_conn, checked(req), context=self._context)  # pyright: ignore[reportAttributeAccessIssue] - HTTPSHandler's own SSL context, private in typeshed

        self.opener = urllib.request.OpenerDirector()
        for handler in (
            HTTPHandler(),
            HTTPSHandler(),
            urllib.request.HTTPDefaultErrorHandler(),
            _RedirectHandler(),
            urllib.request.HTTPErrorProcessor(),
            urllib.request.UnknownHandler(),
        ):
            self.opener.add_handler(handler)

    def _request(self, conn_class: type, req: urllib.request.Request, **conn_args) -> http.client.HTTPResponse:
        """urllib's ``do_open``, on a kept-alive connection to the same scheme, host and port when one
        is idle (it went through this policy when it connected), else on a new one. The connection
        goes back when its response has been read to the end; anything else closes it. A server may
        close an idle connection just as a request leaves on it (HTTP/1.1 lets it, without a word):
        a kept-alive connection that is closed before one byte of the answer arrives is not an answer,
        and the request goes once more, on a new connection (as browsers do)."""
        if not req.host:
            raise urllib.error.URLError("no host given")
        key = (req.type, req.host)
        headers = dict(req.unredirected_hdrs)
        headers.update({k: v for k, v in req.headers.items() if k not in headers})
        headers = {name.title(): value for name, value in headers.items()}
        budget: _Budget = req.zxl_budget  # pyright: ignore[reportAttributeAccessIssue] - zxl's own attribute on urllib's Request
        for fresh in (False, True):
            conn = None if fresh else self._take(key)
            reused = conn is not None
            if conn is None:
                conn = conn_class(req.host, timeout=req.timeout, **conn_args)
            elif conn.sock is not None:
                conn.sock.settimeout(req.timeout)
            release = functools.partial(self._release, key, conn)
            # http.client calls response_class as a class; a partial carries this request's budget
            conn.response_class = functools.partial(_BudgetResponse, budget=budget, release=release)  # pyright: ignore[reportAttributeAccessIssue]
            try:
                try:
                    conn.request(req.get_method(), req.selector, req.data, headers)
                except OSError as err:
                    if reused and isinstance(err, (BrokenPipeError, ConnectionResetError)):
                        conn.close()  # the server had closed it: the request never reached it
                        continue
                    raise urllib.error.URLError(err) from err  # as urllib says it: <urlopen error …>
                r = conn.getresponse()
                # http.client remembers the response only to refuse a request before it is read;
                # the pool hands the connection out only once it is, and the reference would make a
                # cycle (connection → response → release → connection) that holds the socket of a
                # response dropped unread until the garbage collector runs.
                setattr(conn, "_HTTPConnection__response", None)  # noqa: B010 - its private name
            except http.client.RemoteDisconnected:
                conn.close()
                if reused:  # closed by the server as the request left: not one byte of an answer
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            r.url = req.get_full_url()  # pyright: ignore[reportAttributeAccessIssue] - urllib's own attributes on its responses
            r.msg = r.reason  # pyright: ignore[reportAttributeAccessIssue]
            return r
        raise AssertionError("unreachable: the second try is on a fresh connection")

    def _take(self, key: tuple[str, str]) -> http.client.HTTPConnection | None:
        """An idle connection for ``key`` that has not sat idle past ``idle_seconds`` and that the
        server has not closed meanwhile (a readable idle socket is an end of file or bytes nobody
        asked for: either way it is closed), or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn, since = idle.pop() if idle else (None, 0.0)
                if idle == []:
                    del self._idle[key]
            if conn is None:
                return None
            fresh = time.monotonic() - since <= self.idle_seconds
            if fresh and conn.sock is not None and not _readable(conn.sock):
                return conn
            conn.close()

    def _release(self, key: tuple[str, str], conn: http.client.HTTPConnection, reusable: bool) -> None:
        to_close = [conn]
        if reusable and conn.sock is not None:
            with self._lock:
                if not self._closed:
                    self._idle.setdefault(key, []).append((conn, time.monotonic()))
                    to_close = []
                    if sum(map(len, self._idle.values())) > self.max_idle:  # the one idle longest goes
                        oldest = min(self._idle, key=lambda k: self._idle[k][0][1])
                        to_close.append(self._idle[oldest].pop(0)[0])
                        if not self._idle[oldest]:
                            del self._idle[oldest]
        for done in to_close:
            done.close()

    def close(self) -> None:
        """Close the idle connections; requests after this one still work, on connections of their own."""
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn, _ in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def timeout(self, seconds: float) -> GuardedTimeout:
        """What to hand img2dataset as its timeout so that its requests go through this Guard."""
        return GuardedTimeout(seconds, self)

    def open(self, url: str | urllib.request.Request, timeout: float = 10.0):
        """Like ``urllib.request.urlopen``, through this policy only."""
        full_url = url.full_url if isinstance(url, urllib.request.Request) else url
        refusal = scheme_refusal(full_url) or credentials_refusal(full_url)
        if refusal is not None:  # before any lookup or connection
            raise refusal
        req = url if isinstance(url, urllib.request.Request) else urllib.request.Request(url)
        req.zxl_budget = _Budget(self.response_deadline, self.max_bytes)  # pyright: ignore[reportAttributeAccessIssue] - zxl's own attribute on urllib's Request
        return self.opener.open(req, timeout=float(timeout))


def urlopen(url, data=None, timeout=None, **_):
    """``urllib.request.urlopen`` for img2dataset: only through the Guard its timeout carries."""
    if not isinstance(timeout, GuardedTimeout):
        raise urllib.error.URLError("refused: a request without a zxl fetch policy (netguard.Guard.timeout)")
    if data is not None:
        raise urllib.error.URLError("refused: zxl fetches with GET only")
    return timeout.guard.open(url, timeout)


def patch_img2dataset() -> None:
    """Point img2dataset's downloader (only it) at ``urlopen`` above; idempotent."""
    import img2dataset.downloader as downloader

    if getattr(downloader.urllib, "zxl_guarded", False):
        return
    request = types.SimpleNamespace(Request=urllib.request.Request, urlopen=urlopen)
    downloader.urllib = types.SimpleNamespace(request=request, zxl_guarded=True)
