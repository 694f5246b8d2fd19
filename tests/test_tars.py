"""zxl.tars: the one reader of webdataset tars (stages and the browser)."""

import io
import tarfile

from zxl import tars


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_index_and_reads_take_only_images(tmp_path):
    path = _tar(tmp_path / "00000.tar", [("000000001.jpg", b"one"), ("000000001.json", b"{}"),
                                          ("000000002.PNG", b"two!"), ("000000003.txt", b"caption")])  # fmt: skip
    index = tars.image_index(path)
    assert set(index) == {"000000001", "000000002"} and index["000000002"][1:] == (4, "png")
    assert tars.read_member(path, index["000000001"]) == b"one"
    assert tars.read_images(path) == {"000000001": b"one", "000000002": b"two!"}
    assert tars.read_images(path, ["000000002", "nope"]) == {"000000002": b"two!"}
    assert tars.read_images(tmp_path / "missing.tar") == {}
