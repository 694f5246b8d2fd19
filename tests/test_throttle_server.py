"""zxl.throttle_server: the throttling test host itself, spoken to with urllib from a few threads."""

import datetime as dt
import email.utils
import http.client
import threading
import time
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from zxl.throttle_server import ThrottleServer, jpeg_images


@pytest.fixture(scope="module")
def images():
    return jpeg_images(6, size=(32, 24), seed=3)


def _get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body), for an error status too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - 127.0.0.1 only
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def _together(urls: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    """Every URL from its own thread, released at once."""
    barrier = threading.Barrier(len(urls))
    out: list = [None] * len(urls)

    def one(i: int) -> None:
        barrier.wait()
        out[i] = _get(urls[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_jpeg_images_are_distinct_and_deterministic(images):
    assert list(images) == [f"/{i:04d}.jpg" for i in range(6)]
    assert len(set(images.values())) == 6
    assert all(b.startswith(b"\xff\xd8") for b in images.values())
    assert jpeg_images(6, size=(32, 24), seed=3) == images
    assert jpeg_images(6, size=(32, 24), seed=4) != images


def test_serves_images_and_404(images, tmp_path):
    with ThrottleServer(images, hold_s=0) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:") and srv.port > 0
        assert srv.urls(2) == [srv.base_url + "/0000.jpg", srv.base_url + "/0001.jpg"]
        status, headers, body = _get(srv.url("/0001.jpg"))
        assert (status, headers["Content-Type"], body) == (200, "image/jpeg", images["/0001.jpg"])
        assert headers["Content-Length"] == str(len(body))
        assert _get(srv.url("/nope.jpg"))[0] == 404
        s = srv.stats()
        assert (s["requests"], s["served"], s["not_found"], s["throttled"]) == (2, 1, 1, 0)
        assert s["per_path"] == {"/0001.jpg": 1, "/nope.jpg": 1} and s["per_path_ok"] == {"/0001.jpg": 1}
        urls = srv.write_urls(tmp_path / "urls.parquet", 3)
        assert pq.read_table(urls)["url"].to_pylist() == srv.urls(3)


def test_loopback_only(images):
    for host in ("0.0.0.0", "10.0.0.1", "example.org"):
        with pytest.raises(ValueError, match="loopback"):
            ThrottleServer(images, host=host)


def test_in_flight_cap_answers_429_at_once(images):
    with ThrottleServer(images, max_in_flight=2, hold_s=0.6) as srv:
        t0 = time.monotonic()
        results = _together(srv.urls(6))
        codes = sorted(r[0] for r in results)
        s = srv.stats()
    assert codes.count(200) + codes.count(429) == 6 and 1 <= codes.count(200) <= 2 and codes.count(429) >= 4
    assert all(h["Retry-After"] == "1" for code, h, _ in results if code == 429)
    assert s["peak_in_flight"] <= 2 and s["peak_all"] >= 3
    assert len(s["peak_all_paths"]) == s["peak_all"] and set(s["peak_all_paths"]) <= set(images)
    assert (s["served"], s["throttled"], s["throttled_in_flight"]) == (codes.count(200), *[codes.count(429)] * 2)
    assert time.monotonic() - t0 < 3  # the 429s did not wait for the held responses' slots


def test_rate_cap_sliding_window(images):
    with ThrottleServer(images, max_rate=4, hold_s=0, retry_after=2.2) as srv:
        first = time.monotonic()
        codes = [_get(u)[0] for u in srv.urls(6)]
        assert time.monotonic() - first < 0.9, "too slow to test a one-second window"
        assert codes == [200] * 4 + [429] * 2
        assert _get(srv.url("/0005.jpg"))[1]["Retry-After"] == "3"  # rounded up
        time.sleep(max(0.0, first + 1.05 - time.monotonic()))
        assert _get(srv.url("/0000.jpg"))[0] == 200  # the first four left the window
        s = srv.stats()
    assert (s["served"], s["throttled"], s["throttled_rate"], s["peak_in_flight"]) == (5, 3, 3, 1), s


def test_transient_503_then_200_and_resets(images):
    with ThrottleServer(images, hold_s=0, transient={"/0000.jpg": 2, "/0001.jpg": -1}) as srv:
        first, second = _get(srv.url("/0000.jpg")), _get(srv.url("/0000.jpg"))
        assert first[0] == second[0] == 503 and "Retry-After" not in first[1]
        assert _get(srv.url("/0000.jpg"))[0] == 200
        with pytest.raises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
            _get(srv.url("/0001.jpg"))
        assert _get(srv.url("/0001.jpg"))[0] == 200
        s = srv.stats()
        assert (s["unavailable"], s["resets"], s["served"]) == (2, 1, 2)
        assert s["per_path"] == {"/0000.jpg": 3, "/0001.jpg": 2}
        srv.reset_stats()  # rearms the transient failures
        assert _get(srv.url("/0000.jpg"))[0] == 503
        assert srv.stats()["requests"] == 1


def test_always_429_and_early_retries(images):
    with ThrottleServer(images, hold_s=0, always_429=frozenset({"/0002.jpg"})) as srv:
        a, b = _get(srv.url("/0002.jpg")), _get(srv.url("/0002.jpg"))
        assert a[0] == b[0] == 429 and a[1]["Retry-After"] == "1"
        assert _get(srv.url("/0003.jpg"))[0] == 200
        s = srv.stats()
    assert (s["throttled"], s["throttled_always"], s["served"], s["early_retries"]) == (
        2,
        2,
        1,
        1,
    )  # the second came 1 s too soon


def test_block_after_gives_403(images):
    with ThrottleServer(images, hold_s=0, always_429=frozenset({"/0002.jpg"}), block_after=2) as srv:
        assert [_get(srv.url("/0002.jpg"))[0] for _ in range(2)] == [429, 429]
        assert _get(srv.url("/0003.jpg"))[0] == 403  # blocked: even a good path
        assert srv.stats()["blocked"] == 1
        srv.reset_stats()  # lifts the block
        assert _get(srv.url("/0003.jpg"))[0] == 200


def test_retry_after_as_http_date_or_absent(images):
    with ThrottleServer(images, hold_s=0, retry_after=2.5, retry_after_date=True, always_429={"/0000.jpg"}) as srv:
        before = dt.datetime.now(dt.UTC)
        code, headers, _ = _get(srv.url("/0000.jpg"))
    when = email.utils.parsedate_to_datetime(headers["Retry-After"])
    assert code == 429 and when.tzinfo is not None
    assert before + dt.timedelta(seconds=2) <= when <= before + dt.timedelta(seconds=4.5)
    with ThrottleServer(images, hold_s=0, retry_after=None, always_429={"/0000.jpg"}) as srv:
        code, headers, _ = _get(srv.url("/0000.jpg"))
    assert code == 429 and "Retry-After" not in headers
