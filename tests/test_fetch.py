import io
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import make_config
from zxl.config import ConfigError
from zxl.demo_corpus import bomb_png
from zxl.pipeline import sources
from zxl.pipeline.config import FetchConfig
from zxl.pipeline.fetch import sniff
from zxl.pipeline.graph import run_shard
from zxl.pipeline.stages import stage_path, stored_hash


def _png(size=(8, 8)):
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty response body"),
        (b"<!DOCTYPE html><html>blocked</html>", "HTML page"),
        (b'{"error": "rate limited"}', "JSON"),
        (b"\x00\x01garbage", "not an image"),
        (bomb_png(20_000), "decompression bomb"),
    ],
)
def test_sniff_names_the_cause(data, reason):
    assert reason in sniff(data, 89_478_485)


def test_sniff_passes_images_and_applies_the_pixel_limit():
    assert sniff(_png(), 1000) is None
    assert "over the limit of 10" in sniff(_png(), 10)


def test_fetch_one_shard(urls_file, tmp_path, truth):
    cfg = make_config(tmp_path, "one", urls_file, "run.shard_size=70")
    run_dir = tmp_path / "one"
    n, h = sources.split(sources.read_url_list(cfg.source), cfg.source, run_dir, cfg.run.shard_size)
    assert n == 2
    result = run_shard(str(run_dir), "fetch", 1, "h1", cfg.fetch, cfg.run.shard_size, cfg.source.hash_column)
    assert result["rows"] == 70 and not result["skipped"]
    out = pq.read_table(stage_path(run_dir, "fetch", 1)).to_pandas()
    src = pq.read_table(stage_path(run_dir, "source", 1)).to_pandas()
    assert out["key"].tolist() == src["key"].tolist()  # rows in = rows out, in order
    assert stored_hash(stage_path(run_dir, "fetch", 1)) == "h1"
    shards = run_dir / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["00001.parquet", "00001.tar", "00001_stats.json"]
    # img2dataset gets the URL, the key and the position only; the source columns stay in stages/source
    i2d = pq.read_table(shards / "00001.parquet")
    assert {"url", "zxl_key", "zxl_row", "status", "error_message"} <= set(i2d.column_names)
    assert not {"tag_string_general", "rating", "created_at"} & set(i2d.column_names)
    assert {"tag_string_general", "rating", "created_at"} <= set(src.columns)
    ok = out[out["status"] == "ok"]
    with tarfile.open(shards / "00001.tar") as tar:
        stored = {m.name.split(".")[0] for m in tar if m.name.endswith(".jpg")}
    assert set(ok["shard_key"]) == stored
    merged = out.merge(truth, on="key")
    wrong = merged[merged["status"] != merged["expected_status"]]
    assert wrong.empty, wrong[["key", "status", "expected_status", "bad", "error"]].to_string()
    assert merged.loc[merged["status"] != "ok", "error"].str.len().gt(0).all()
    # no upscaling, and nothing downscaled below the cap
    assert (ok["width"] <= ok["original_width"]).all()
    assert (ok[["width", "height"]].min(axis=1) <= 1024).all()
    # a second call with the same hash is a skip
    assert run_shard(str(run_dir), "fetch", 1, "h1", cfg.fetch, cfg.run.shard_size)["skipped"]


def test_bad_fetch_settings_are_config_errors(urls_file, tmp_path):
    from zxl.pipeline.fetch import validate

    with pytest.raises(ConfigError, match="fetch.resize_mode"):
        validate(FetchConfig(resize_mode="stretch"))
    with pytest.raises(ConfigError, match="fetch.timeout"):
        validate(FetchConfig(timeout=0))
    with pytest.raises(ConfigError, match="fetch.verify_hash must be one of md5, sha256, sha512"):
        validate(FetchConfig(verify_hash="crc32"))


def test_hash_check_names_both_hashes_and_leaves_rows_without_one_unchecked():
    import hashlib

    from zxl.pipeline.fetch import HashCheck

    data = _png()
    good = hashlib.md5(data).hexdigest()
    check = HashCheck("md5", [good.upper(), "0" * 32, None, "  "])
    assert check(0, data) is None  # compared in lower case, as exports differ
    assert check(1, data) == f"md5 mismatch: expected {'0' * 32}, got {good}"
    assert check(2, data) is None and check(3, data) is None and check(9, data) is None
    empty = hashlib.md5(b"").hexdigest()
    assert check(1, b"") == f"md5 mismatch: expected {'0' * 32}, got {empty} (empty response body (0 bytes))"


def test_a_download_that_is_not_the_posts_file_fails_and_stores_nothing(tmp_path):
    """fetch.verify_hash through img2dataset's own downloader, against a real server on 127.0.0.1:
    a file replaced on the server since the export (its md5 differs) is failed_download, named."""
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pyarrow as pa

    files = {f"/{i}.png": _png((16 + i, 16)) for i in range(4)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = files[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        md5 = [hashlib.md5(files[f"/{i}.png"]).hexdigest() for i in range(4)]
        md5[2] = hashlib.md5(b"the file as it was").hexdigest()  # replaced since the export
        md5[3] = None  # no hash given: not checked
        urls = tmp_path / "posts.parquet"
        pq.write_table(pa.table({"id": [1, 2, 3, 4], "file_url": [f"{base}/{i}.png" for i in range(4)], "md5": md5}),
                       urls)  # fmt: skip
        cfg = make_config(tmp_path, "md5", urls, "fetch.verify_hash=md5", "source.hash_column=md5")
        run_dir = tmp_path / "md5"
        sources.split(sources.read_url_list(cfg.source), cfg.source, run_dir, cfg.run.shard_size)
        run_shard(str(run_dir), "fetch", 0, "h", cfg.fetch, cfg.run.shard_size, cfg.source.hash_column)
    finally:
        server.shutdown()
    out = pq.read_table(stage_path(run_dir, "fetch", 0)).to_pandas()
    assert out["status"].tolist() == ["ok", "ok", "failed_download", "ok"]
    got = hashlib.md5(files["/2.png"]).hexdigest()
    assert out["error"][2] == f"md5 mismatch: expected {md5[2]}, got {got}"
    with tarfile.open(run_dir / "shards" / "00000.tar") as tar:
        stored = {m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".jpg") or m.name.endswith(".png")}
    assert out["shard_key"][2] not in stored and out["shard_key"][0] in stored


def test_look_reads_a_pngs_exif_orientation_without_decoding_it(monkeypatch):
    """A PNG's eXIf chunk may come before or after its pixel data; either way look() finds the
    orientation from the chunks alone (Pillow's getexif decodes the whole image to find a late one)."""
    import io

    from PIL import Image, ImageFile

    from zxl.pipeline.fetch import look

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (9, 99, 199)).save(buf, "PNG", exif=exif)
    early = buf.getvalue()
    i = early.find(b"eXIf") - 4
    chunk = early[i : i + 12 + int.from_bytes(early[i : i + 4], "big")]
    rest = early[:i] + early[i + len(chunk) :]
    late = rest[: rest.find(b"IEND") - 4] + chunk + rest[rest.find(b"IEND") - 4 :]
    assert late.find(b"eXIf") > late.find(b"IDAT")
    plain = io.BytesIO()
    Image.new("RGB", (30, 20)).save(plain, "PNG")

    def no_decoding(self):
        raise AssertionError("look() decoded the image")

    from PIL import PngImagePlugin

    xmp = PngImagePlugin.PngInfo()  # orientation in XMP (as Photoshop writes it), before the pixels
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    xmp.add_itxt("XML:com.adobe.xmp", packet)
    in_xmp = io.BytesIO()
    Image.new("RGB", (30, 20)).save(in_xmp, "PNG", pnginfo=xmp)

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for data in (early, late, in_xmp.getvalue()):
        assert look(data, 10**6) == (None, {"size": (20, 30), "orientation": 6, "deep": False, "alpha": False})
    assert look(plain.getvalue(), 10**6)[1]["orientation"] == 1


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _resizer_matte(bgra):
    """img2dataset's Resizer's own alpha matte (resizer.py), on an OpenCV BGRA array."""
    import numpy as np

    alpha = bgra[:, :, 3, np.newaxis]
    return np.rint((alpha / 255 * bgra[..., :3] + 255 - alpha).clip(min=0, max=255)).astype(np.uint8)


def test_flatten_alpha_is_the_resizers_matte_for_every_alpha_and_colour():
    import cv2
    import numpy as np

    from zxl.pipeline.fetch import flatten_alpha

    a, c = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    rgba = np.dstack([c, 255 - c, np.roll(c, 77, axis=1), a])  # every (alpha, colour) pair in each channel
    data = _encoded(Image.fromarray(rgba, "RGBA"), "PNG")
    flat = cv2.imdecode(np.frombuffer(flatten_alpha(data), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(flat, _resizer_matte(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)))
    assert flatten_alpha(_encoded(Image.fromarray(rgba[:, :, :3], "RGB"), "PNG")) is None  # no alpha: untouched
    assert flatten_alpha(b"not an image") is None


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border", "keep_ratio_largest", "no"])
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_the_guarded_resizer_stores_the_same_bytes_as_img2dataset_for_transparent_images(mode, fmt, monkeypatch):
    """Matting before the Resizer changes nothing it stores: same bytes, same sizes, for every kind of
    transparency, larger and smaller than image_size."""
    import numpy as np
    from img2dataset.resizer import Resizer

    from zxl.pipeline import fetch
    from zxl.pipeline.fetch import _resizer_class

    matted, flatten = [], fetch.flatten_alpha
    monkeypatch.setattr(fetch, "flatten_alpha", lambda data: matted.append(flatten(data)) or matted[-1])

    rng = np.random.default_rng(7)
    field = rng.integers(0, 256, (160, 220, 4), dtype=np.uint8)  # both sides over image_size
    rgba = Image.fromarray(field, "RGBA")
    small = rgba.resize((90, 70))
    images = {
        "RGBA PNG": _encoded(rgba, "PNG"),
        "small RGBA PNG": _encoded(small, "PNG"),
        "LA PNG": _encoded(rgba.convert("LA"), "PNG"),
        "P PNG, one colour transparent": _encoded(rgba.convert("RGB").convert("P"), "PNG", transparency=3),
        "RGB PNG, one colour transparent": _encoded(rgba.convert("RGB"), "PNG", transparency=(1, 2, 3)),
        "RGBA WebP": _encoded(rgba, "WEBP", lossless=True),
    }
    settings = dict(image_size=128, resize_mode=mode, resize_only_if_bigger=False, encode_format=fmt,
                    encode_quality=9 if fmt == "png" else 90, skip_reencode=True)  # fmt: skip
    ours = _resizer_class()(**settings, max_image_pixels=10**8)
    theirs = Resizer(**settings)
    for name, data in images.items():
        got, want = ours(io.BytesIO(data)), theirs(io.BytesIO(data))
        assert want[-1] is None and got[1:] == want[1:], name
        assert got[0] == want[0], name
    assert len(matted) == len(images) and all(m is not None for m in matted)  # each went the matted way
