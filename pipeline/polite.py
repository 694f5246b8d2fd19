"""How fetch treats the hosts it downloads from: per-host limits across the run, 429/503 and
Retry-After, retries with backoff, and which failures are worth another try (docs/url-lists.md
"Hosts that throttle").

**In flight, across the run.** ``fetch.per_host_concurrency`` N is a run-wide semaphore per host
with N leases: a Dask ``distributed.Semaphore`` on a cluster (one per host, named by the run),
a process-wide one in an in-process run. The scheduler is not asked per request: a shard task
takes a lease for a host when its first download there starts, takes more (without waiting) up
to its thread count while its threads want them, and gives them back when the shard is done; its
downloads to that host then share the leases it holds, locally. At 1,000 images/s that is a few
scheduler messages per shard and host, not thousands a second, and the number in flight to a host
can never pass N, however many workers and threads run (each request runs under a lease held).

**Rate, across the run.** ``fetch.per_host_rate`` R is shared the same way: each lease carries at
most one request every N/R seconds (a lease just taken first waits that long, since its last holder
may have just used it), so the N leases together never carry more than R requests in any second.

**Throttling.** A ``429`` or ``503`` with ``Retry-After`` (seconds or an HTTP date) pauses every
download of this task to that host for as long as the host asks (the whole host, not one thread),
then the URL is tried again, while the URL's waits stay within ``fetch.max_retry_wait``. Without
``Retry-After`` a transient failure (a timeout, a reset or refused connection, 429, 5xx) is retried
``fetch.retries`` times after an exponential backoff with jitter (the whole host's for a 429, the
URL's alone otherwise). A host that always throttles ends
as rows ``failed_download`` with ``HTTP Error 429: Too Many Requests (retried N times over T s)``.

What a 404, a 403, an address refused by netguard or an undecodable image says is final: never
retried (``transient``).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import io
import json
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

THROTTLE_STATUS = (429, 503)
IDLE_LEASE_S = 0.5  # a lease no download of the task wanted for this long goes back to the run
RATE_MARGIN = 1.05  # requests leave 5% further apart than the rate allows: the network's jitter moves arrivals
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0  # seconds: 0.5, 1, 2, 4 … with jitter of ±50%
USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"  # img2dataset's
_TRANSIENT = re.compile(
    r"HTTP Error (408|425|429|5\d\d)\b|timed out|[Tt]imeout|Connection (reset|refused|aborted)|Remote end closed"
    r"|RemoteDisconnected|truncated: the connection closed|IncompleteRead|did not arrive whole|Temporary failure"
    r"|Network is unreachable|BrokenPipe|EOF occurred"
)


def transient(error: str | None) -> bool:
    """Whether a failed download's error is worth another try later (a timeout, a reset or refused
    connection, 429, 5xx), not a final answer (404, 403, a refused address, a hash mismatch)."""
    return bool(error) and not str(error).startswith("refused") and bool(_TRANSIENT.search(str(error)))


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or ''}:{parts.port}" if parts.port else (parts.hostname or "")


# --------------------------------------------------------------------------- leases


class LocalLeases:
    """N leases shared by every task of this process (an in-process run)."""

    _registry: dict[str, threading.BoundedSemaphore] = {}
    _lock = threading.Lock()

    def __init__(self, name: str, n: int):
        with self._lock:
            self.sem = self._registry.setdefault(name, threading.BoundedSemaphore(n))

    def acquire(self, timeout: float | None) -> bool:
        return self.sem.acquire(timeout=timeout) if timeout else self.sem.acquire(blocking=False)

    def release(self) -> None:
        self.sem.release()


class DaskLeases:
    """N leases shared by every worker of the cluster: a ``distributed.Semaphore`` (its leases are
    refreshed while held and expire when a worker dies), bound to the worker the task runs on, so
    that img2dataset's download threads (not Dask's task thread) can use it."""

    def __init__(self, name: str, n: int, worker):
        from distributed import Semaphore

        self.sem = Semaphore(max_leases=n, name=name, scheduler_rpc=worker.scheduler, loop=worker.loop)

    def acquire(self, timeout: float | None) -> bool:
        return bool(self.sem.acquire(timeout=timeout or 0))

    def release(self) -> None:
        self.sem.release()


def lease_source() -> Callable[[str, int], LocalLeases | DaskLeases]:
    """How to make run-wide leases, decided in the task's own thread: the cluster's semaphores when it
    runs in a Dask worker (Dask knows its worker only there, not in the download threads it starts),
    else this process's."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return LocalLeases
    return lambda name, n: DaskLeases(name, n, worker)


# --------------------------------------------------------------------------- one host in one task


@dataclass
class HostStats:
    requests: int = 0
    throttled: int = 0  # 429 and 503 answers
    waits: int = 0  # pauses on Retry-After or a backoff
    wait_seconds: float = 0.0
    retries: int = 0
    peak_in_flight: int = 0  # this task's

    def as_dict(self) -> dict:
        return {**self.__dict__, "wait_seconds": round(self.wait_seconds, 3)}


class HostGate:
    """One host as one shard task sees it: the run-wide leases it holds, each a slot for one request
    in flight that, with a rate, is used at most once every N/R seconds (a lease just taken waits that
    long first: its last holder may have just used it), and the pause a Retry-After asked for."""

    def __init__(self, host: str, leases, limit: int, rate: float, want: int, log: Callable[[str], None]):
        self.host, self.leases, self.limit, self.rate, self.want, self.log = host, leases, limit, rate, want, log
        self.cond = threading.Condition()
        self.ready: list[float] = []  # per held lease: when it may carry its next request
        self.free: list[int] = []  # the held leases not carrying a request now
        self.returned: list[int] = []  # slots whose lease went back to the run (``_give_back_idle``)
        self.busy = self.waiting = 0
        self.idle_since: dict[int, float] = {}  # free leases: since when no download wanted them
        self.paused_until = 0.0
        self.acquiring = False
        self.spacing = RATE_MARGIN * limit / rate if rate and limit else 0.0
        self.stats = HostStats()

    def enter(self) -> int:
        """Wait for a slot (a free lease, ready, the host not paused); returns it, for ``leave``."""
        with self.cond:
            self.waiting += 1
            try:
                return self._enter()
            finally:
                self.waiting -= 1

    def held(self) -> int:
        return len(self.ready) - len(self.returned)

    def _enter(self) -> int:
        while True:
            now = time.monotonic()
            self._give_back_idle(now)
            if now < self.paused_until:
                self.cond.wait(self.paused_until - now)
                continue
            if self.leases is None:  # no limit on this host
                return self._take(-1)
            ready = [i for i in self.free if self.ready[i] <= now]
            if ready:
                slot = ready[0]
                self.free.remove(slot)
                self.idle_since.pop(slot, None)
                self.ready[slot] = now + self.spacing
                return self._take(slot)
            if not self.free and self.held() < self.want and not self.acquiring:
                self.acquiring = True  # one thread at a time asks for another lease, outside the lock
                self.cond.release()
                try:  # the first lease: wait for it (a second at a time); more: only if free now
                    got = self.leases.acquire(0 if self.held() else 1.0)
                finally:
                    self.cond.acquire()
                    self.acquiring = False
                if got:
                    slot = self.returned.pop() if self.returned else len(self.ready)
                    if slot == len(self.ready):
                        self.ready.append(0.0)
                    self.ready[slot] = time.monotonic() + self.spacing
                    self.free.append(slot)
                    self.cond.notify_all()
                continue
            soonest = min((self.ready[i] for i in self.free), default=now + 0.25)
            self.cond.wait(min(0.25, max(soonest - now, 0.001)))

    def _take(self, slot: int) -> int:
        self.busy += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.busy)
        return slot

    def leave(self, slot: int) -> None:
        with self.cond:
            self.busy -= 1
            if slot >= 0:
                self.free.append(slot)
                self.idle_since[slot] = time.monotonic()
            self._give_back_idle(time.monotonic())
            self.cond.notify_all()

    def _give_back_idle(self, now: float) -> None:
        """A lease no download of this task has wanted for IDLE_LEASE_S goes back to the run, so a task
        draining the end of its shard (or retrying a few rows) does not keep other tasks waiting. The
        last lease is kept while the task runs; each lease keeps its slot number (``ready``)."""
        if self.leases is None or self.waiting:
            return
        for slot in [i for i in self.free if now - self.idle_since.get(i, now) > IDLE_LEASE_S]:
            if len(self.free) + self.busy <= 1:
                break
            self.free.remove(slot)
            self.idle_since.pop(slot, None)
            self.ready[slot] = float("inf")  # no longer held
            self.returned.append(slot)
            self.leases.release()

    def pause(self, seconds: float, why: str) -> None:
        """Every download of this task to the host waits ``seconds`` (the host asked for it)."""
        with self.cond:
            until = time.monotonic() + seconds
            if until > self.paused_until + 0.5:  # a new pause, not the same one seen by another thread
                self.log(f"waiting {seconds:.1f} s for {self.host}: {why}")
            self.paused_until = max(self.paused_until, until)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            for _ in range(self.held()):
                self.leases.release()  # pyright: ignore[reportOptionalMemberAccess] - leases held only with leases
            self.ready, self.free, self.returned = [], [], []


# --------------------------------------------------------------------------- a shard's downloads


def stderr_log(message: str) -> None:
    print(f"zxl fetch: {message}", file=sys.stderr, flush=True)


@dataclass
class Politeness:
    """What a shard's downloads obey (``fetch.*``), and what they record: per host, and attempts per row."""

    run_id: str  # names the run-wide semaphores
    per_host_concurrency: int = 0
    per_host_rate: float = 0.0
    retries: int = 0
    max_retry_wait: float = 60.0
    threads: int = 16
    hash_check: Callable[[int, bytes], str | None] | None = None
    log: Callable[[str], None] = stderr_log
    seed: int = 0
    leases: Callable[[str, int], LocalLeases | DaskLeases] = field(default_factory=lease_source)
    gates: dict[str, HostGate] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gate(self, host: str) -> HostGate:
        with self.lock:
            if host not in self.gates:
                n = self.per_host_concurrency
                leases = self.leases(f"zxl-fetch-{self.run_id}-{n}-{host}", n) if n else None
                want = min(n, self.threads) if n else self.threads
                self.gates[host] = HostGate(host, leases, n, self.per_host_rate, want, self.log)
            return self.gates[host]

    def close(self) -> None:
        for gate in self.gates.values():
            gate.close()

    def host_stats(self) -> dict[str, dict]:
        return {host: gate.stats.as_dict() for host, gate in sorted(self.gates.items())}

    def download(self, key: int, url: str, timeout, user_agent_token, disallowed) -> tuple[io.BytesIO | None,
                                                                                          str | None]:  # fmt: skip
        """The body of ``url`` (or None and why), after as many polite tries as the settings allow."""
        gate = self.gate(host_of(url))
        rng = random.Random(f"{self.seed}-{key}")
        tries, waited, started = 0, 0.0, time.monotonic()
        while True:
            slot = gate.enter()
            try:
                tries += 1
                body, error, status, after = fetch_once(url, timeout, user_agent_token, disallowed)
            finally:
                gate.leave(slot)
            with gate.cond:
                gate.stats.requests += 1
                gate.stats.throttled += status in THROTTLE_STATUS
            if body is not None and self.hash_check is not None:
                error = self.hash_check(key, body)
                body = None if error else body
            if body is not None:
                self.attempts[key] = tries
                return io.BytesIO(body), None
            assert error is not None
            wait = None
            if status in THROTTLE_STATUS and after is not None:
                wait = after if waited + after <= self.max_retry_wait else None
                if wait is not None:
                    gate.pause(wait, f"Retry-After {after:g}")
            elif transient(error) and tries <= self.retries:
                wait = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (tries - 1)) * rng.uniform(0.5, 1.5)
                if status == 429:  # too many requests, no Retry-After: the whole host backs off
                    gate.pause(wait, "backoff")
                else:
                    time.sleep(wait)
            if wait is None:
                self.attempts[key] = tries
                if tries > 1:
                    error = f"{error} (retried {tries - 1} times over {time.monotonic() - started:.0f} s)"
                return None, error
            waited += wait
            with gate.cond:
                gate.stats.waits += 1
                gate.stats.wait_seconds += wait
                gate.stats.retries += 1


def fetch_once(url: str, timeout, user_agent_token, disallowed) -> tuple[bytes | None, str | None, int | None,
                                                                          float | None]:  # fmt: skip
    """One request through the shard's Guard (the timeout carries it): (body, error, HTTP status,
    Retry-After seconds). Errors read as img2dataset's download_image writes them."""
    from img2dataset.downloader import is_disallowed

    agent = USER_AGENT + (f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
                          if user_agent_token else "")  # fmt: skip
    try:
        request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
        with timeout.guard.open(request, timeout) as r:
            if disallowed and is_disallowed(r.headers, user_agent_token, disallowed):
                return None, "Use of image disallowed by X-Robots-Tag directive", r.status, None
            return r.read(), None, r.status, None
    except urllib.error.HTTPError as e:
        after = retry_after(e.headers.get("Retry-After")) if e.headers is not None else None
        e.close()
        return None, str(e), e.code, after
    except Exception as e:  # noqa: BLE001 - a failed download is this row's data
        return None, str(e), None, None


def patch_img2dataset() -> None:
    """img2dataset's ``download_image`` replaced by one that asks the shard's ``Politeness`` (which
    the timeout carries, beside its Guard); idempotent. img2dataset's threads, resizer and writer
    stay its own; it is given ``retries=0``, since the retries happen here."""
    import img2dataset.downloader as downloader

    if getattr(downloader.download_image, "zxl_polite", False):
        return

    def download_image(row, timeout, user_agent_token, disallowed_header_directives):
        key, url = row
        polite: Politeness | None = getattr(timeout, "politeness", None)
        if polite is None:
            raise RuntimeError("zxl's fetch hands img2dataset a timeout that carries its Politeness")
        stream, error = polite.download(key, url, timeout, user_agent_token, disallowed_header_directives)
        return key, stream, error

    download_image.zxl_polite = True  # pyright: ignore[reportFunctionMemberAccess] - a marker on our own function
    downloader.download_image = download_image


def merge_host_stats(parts: list[dict[str, dict]]) -> dict[str, dict]:
    """Per-host counts of several shards added up (peak_in_flight: the largest)."""
    total: dict[str, Counter] = {}
    peaks: dict[str, int] = {}
    for part in parts:
        for host, s in part.items():
            total.setdefault(host, Counter()).update({k: v for k, v in s.items() if k != "peak_in_flight"})
            peaks[host] = max(peaks.get(host, 0), s.get("peak_in_flight", 0))
    return {h: {**{k: round(v, 3) if isinstance(v, float) else v for k, v in c.items()},
                "peak_in_flight_per_task": peaks[h]} for h, c in sorted(total.items())}  # fmt: skip


def dumps(stats: dict) -> str:
    return json.dumps(stats, sort_keys=True)
