"""Issue 9, item 1: a curate run over a server that does every wrong thing a scraped URL can do.

One ``zxl curate`` run (in-process, the sync scheduler) over ``tests/fault_server.py``'s paths,
with ``fetch.timeout=1``: every URL must come out as exactly one catalog row with the status and
the error that ``EXPECTED`` gives, and the images that are ok must be stored as a viewer shows
them (upright, 8 bits, the first frame). The fault server's /timeout stays quiet for 2 s and
/drip-forever dribbles for 15 s, so the run's own length proves the time bounds.
"""

from __future__ import annotations

import io
import socket
import time
import urllib.error

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from tests.conftest import make_config
from tests.fault_server import FAULTS, FaultServer, smooth
from zxl.catalog.schema import read_catalog
from zxl.pipeline import netguard
from zxl.pipeline.curate import curate
from zxl.pipeline.fetch import RESPONSE_DEADLINE_FACTOR, sniff
from zxl.tars import read_images as read_tar_images

TIMEOUT = 1.0  # fetch.timeout for the run; the response deadline is RESPONSE_DEADLINE_FACTOR times it
STALL, DRIP_PAUSE, DRIP_FOREVER = 2.0, 0.2, 15.0
OK = (96, 64)  # the stored size of every ok picture but the two below

# path -> (status, a substring of the error (None: no error), stored width x height of an ok row)
EXPECTED = {
    "/ok.jpg": ("ok", None, OK),
    "/http-403": ("failed_download", "HTTP Error 403: Forbidden", None),
    "/http-404": ("failed_download", "HTTP Error 404: Not Found", None),
    "/http-500": ("failed_download", "HTTP Error 500: Internal Server Error", None),
    "/timeout": ("failed_download", "timed out (no answer within fetch.timeout=1 s)", None),
    "/drip-ok.png": ("ok", None, OK),
    "/drip-forever": ("failed_download", "timed out: the response did not arrive whole within 6 s", None),
    "/truncated.jpg": ("failed_download", "truncated: the connection closed after 1810 of the 3621 bytes", None),
    "/short-length.jpg": ("failed_decode", "image file is truncated", None),
    "/html": ("failed_decode", "not an image: the server sent an HTML page", None),
    "/empty": ("failed_decode", "empty response body (0 bytes)", None),
    "/redirect-loop": ("failed_download", "redirect loop", None),
    "/redirect-metadata": ("failed_download", "refused: 169.254.169.254 is a cloud metadata address", None),
    "/redirect-private": ("failed_download", "refused: 10.0.0.1 is a private-network address", None),
    "/bomb.png": ("failed_decode", "decompression bomb: Image size (900000000 pixels)", None),
    "/huge.gif": ("failed_decode", "decompression bomb: Image size (900000000 pixels)", None),
    "/cmyk.jpg": ("ok", None, OK),
    "/gray16.png": ("ok", None, OK),
    "/rgb16.png": ("ok", None, OK),
    "/animated.gif": ("ok", None, OK),
    "/animated.webp": ("ok", None, OK),
    "/exif-rotated.jpg": ("ok", None, (64, 96)),  # stored upright: width and height swapped
    "/tiny.png": ("ok", None, (1, 1)),  # fetch.min_image_size is 0 by default: kept (see below)
    "/drawing.svg": ("failed_decode", "not a raster image: the server sent an SVG drawing (image/svg+xml)", None),
}


@pytest.fixture(scope="module")
def faults():
    with FaultServer(stall_s=STALL, drip_pause_s=DRIP_PAUSE, drip_forever_s=DRIP_FOREVER) as srv:
        yield srv


def _url_list(srv: FaultServer, paths, path):
    table = pa.table({"id": list(range(len(paths))), "file_url": [srv.url(p) for p in paths]})
    pq.write_table(table, path)
    return path


def _run(srv, tmp, name, paths, *overrides):
    urls = _url_list(srv, paths, tmp / f"{name}.parquet")
    cfg = make_config(tmp, name, urls, f"fetch.timeout={TIMEOUT:g}", "fetch.thread_count=32",
                      "run.shard_size=100", *overrides)  # fmt: skip
    start = time.monotonic()
    result = curate(cfg, log=lambda *_: None)
    cat = read_catalog(result.catalog_dir).to_pandas()
    cat["path"] = cat["url"].str.removeprefix(srv.base_url)
    return result, cat.set_index("path"), time.monotonic() - start


@pytest.fixture(scope="module")
def fault_run(faults, tmp_path_factory):
    result, cat, seconds = _run(faults, tmp_path_factory.mktemp("faults"), "faults", list(FAULTS))
    return result, cat, seconds


def test_the_table_covers_every_fault():
    assert list(EXPECTED) == list(FAULTS)


def test_every_url_is_exactly_one_row_and_the_run_is_bounded(fault_run, faults):
    result, cat, seconds = fault_run
    assert len(cat) == len(FAULTS) and cat.index.is_unique and set(cat.index) == set(FAULTS)
    assert cat["key"].is_unique
    # /drip-forever would dribble for 15 s an attempt and /timeout stalls for 2 s: the response
    # deadline (6 s here) cuts every attempt (a slow drip is transient: it is tried again), so the
    # whole run, model-free stages included, is bounded by the attempts' deadlines, well under what
    # the drips alone would take.
    attempts = int(cat.loc["/drip-forever", "attempts"])
    bound = attempts * RESPONSE_DEADLINE_FACTOR * TIMEOUT + 8  # + start-up, backoff and the other stages
    assert bound < attempts * DRIP_FOREVER
    assert seconds < bound, f"the run took {seconds:.1f} s"
    assert faults.hits["/redirect-loop"] >= 4  # urllib followed the loop a few times, then stopped
    assert RESPONSE_DEADLINE_FACTOR * TIMEOUT < DRIP_FOREVER


@pytest.mark.parametrize(
    ("path", "status", "error", "size"), [(p, *e) for p, e in EXPECTED.items()], ids=list(EXPECTED)
)
def test_fault(fault_run, path, status, error, size):
    row = fault_run[1].loc[path]
    assert row["status"] == status, f"{path}: {row['status']} ({row['error']})"
    if error is None:
        assert row["error"] is None
        assert (row["width"], row["height"]) == size
        assert row["sha256"] and row["phash"] is not None and row["bucket"]
    else:
        assert error in row["error"], row["error"]
        assert "\n" not in row["error"] and "<urlopen error" not in row["error"]
        assert row["repeats"] == 0


def _stored(fault_run, path) -> bytes:
    result, cat, _ = fault_run
    row = cat.loc[path]
    return read_tar_images(result.run_dir / "shards" / row["shard"])[row["shard_key"]]


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), np.float64)


def _first_frame(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.seek(0)
    return im.convert("RGB")


def _second_frame(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.seek(1)
    return im.convert("RGB")


def _png16_rgb(data: bytes) -> Image.Image:  # decoded by OpenCV at full depth, then the high byte
    bgr16 = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert bgr16.dtype == np.uint16
    return Image.fromarray((bgr16[..., ::-1] >> 8).astype(np.uint8))


def _png16_grey(data: bytes) -> Image.Image:
    grey16 = np.asarray(Image.open(io.BytesIO(data)))
    assert grey16.dtype == np.uint16 and grey16.max() > 255
    return Image.fromarray((grey16 >> 8).astype(np.uint8))


def _white(data: bytes) -> Image.Image:  # what OpenCV alone makes of 16-bit samples
    return Image.new("RGB", Image.open(io.BytesIO(data)).size, (255, 255, 255))


# path -> (what the stored pixels must match, what they must not: the wrong way to handle it)
PIXELS = {
    "/exif-rotated.jpg": (lambda d: ImageOps.exif_transpose(Image.open(io.BytesIO(d))),
                          lambda d: Image.open(io.BytesIO(d)).transpose(Image.Transpose.ROTATE_90)),
    "/gray16.png": (_png16_grey, _white),
    "/rgb16.png": (_png16_rgb, _white),
    "/cmyk.jpg": (lambda d: Image.open(io.BytesIO(d)), lambda d: Image.open(io.BytesIO(d)).convert("RGB").point(
        lambda v: 255 - v)),
    "/animated.gif": (_first_frame, _second_frame),
    "/animated.webp": (_first_frame, _second_frame),
}  # fmt: skip


@pytest.mark.parametrize("path", list(PIXELS))
def test_stored_pixels_are_what_a_viewer_shows(fault_run, faults, path):
    served, stored = faults.bodies[path], Image.open(io.BytesIO(_stored(fault_run, path)))
    right, wrong = (_rgb(f(served)) for f in PIXELS[path])
    assert stored.size == (right.shape[1], right.shape[0])
    near, far = np.abs(_rgb(stored) - right).mean(), np.abs(_rgb(stored) - wrong).mean()
    assert near < 12 and far > 4 * near, (near, far)  # JPEG of a dithered GIF frame: ~8
    assert stored.getexif().get(0x0112, 1) == 1  # no orientation tag left for a reader to apply twice


def test_exif_rotated_is_stored_upright(fault_run, faults):
    raw = Image.open(io.BytesIO(faults.bodies["/exif-rotated.jpg"]))
    assert raw.size == (96, 64) and raw.getexif()[0x0112] == 6
    row = fault_run[1].loc["/exif-rotated.jpg"]
    assert (row["width"], row["height"]) == (64, 96) == (row["original_width"], row["original_height"])
    assert row["bucket"] == "832x1216"  # portrait, as it is viewed, not landscape as it is encoded


def test_a_plain_jpeg_is_kept_byte_for_byte(fault_run, faults):
    assert _stored(fault_run, "/ok.jpg") == faults.bodies["/ok.jpg"]  # fetch.skip_reencode
    drip = Image.open(io.BytesIO(_stored(fault_run, "/drip-ok.png")))  # the dripped PNG arrived whole
    assert drip.format == "JPEG" and np.abs(_rgb(drip) - _rgb(smooth(96, 64, 2))).mean() < 6


def test_size_filters_give_filtered(faults, tmp_path):
    """fetch.min_image_size / fetch.max_aspect_ratio (0 and inf by default) make a row filtered."""
    paths = ["/tiny.png", "/ok.jpg", "/exif-rotated.jpg", "/cmyk.jpg"]
    _, cat, _ = _run(faults, tmp_path, "filters", paths, "fetch.min_image_size=8", "fetch.max_aspect_ratio=1.45")
    assert cat.loc["/tiny.png", "status"] == "filtered"
    assert cat.loc["/tiny.png", "error"] == "too small: 1x1, the short side under fetch.min_image_size=8"
    assert cat.loc["/ok.jpg", "status"] == "filtered"
    assert cat.loc["/ok.jpg", "error"].startswith("aspect ratio too large: 96x64 is 1.50:1")
    assert cat.loc["/exif-rotated.jpg", "error"].startswith("aspect ratio too large: 64x96 is 1.50:1")  # upright
    assert (cat["repeats"] == 0).all() and len(cat) == len(paths)


def test_a_blocked_redirect_never_connects(faults, monkeypatch):
    """The redirect target is refused before a connection is opened: no packet goes to it."""
    connected = []
    create = socket.create_connection

    def recording(address, *args, **kwargs):
        connected.append(address[0])
        return create(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording)
    guard = netguard.Guard(["127.0.0.1"], allow_private=False)
    for path, address in (("/redirect-metadata", "169.254.169.254"), ("/redirect-private", "10.0.0.1")):
        start = time.monotonic()
        with pytest.raises(urllib.error.URLError, match=f"refused: {address.replace('.', '[.]')} is a"):
            guard.open(faults.url(path), timeout=5)
        assert time.monotonic() - start < 1
    assert connected == ["127.0.0.1", "127.0.0.1"]  # the two first hops only


def test_the_response_deadline_bounds_a_slow_drip(faults):
    guard = netguard.Guard(["127.0.0.1"], allow_private=False, response_deadline=1.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not arrive whole within 1.5 s"):
        with guard.open(faults.url("/drip-forever"), timeout=1) as r:
            r.read()
    assert 1.4 < time.monotonic() - start < 3
    # a drip that is slow but whole within the deadline arrives (6 pieces, 0.2 s apart)
    with guard.open(faults.url("/drip-ok.png"), timeout=1) as r:
        assert r.read() == faults.bodies["/drip-ok.png"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "not a raster image: "),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>', "SVG drawing"),
        (b"<!DOCTYPE html><html><body><svg></svg></body></html>", "HTML page"),
        (b'<?xml version="1.0"?><rss version="2.0"/>', "XML document"),
    ],
)
def test_sniff_tells_svg_from_html_and_xml(data, reason):
    assert reason in sniff(data, 89_478_485)
