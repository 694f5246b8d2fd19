import math

import pytest

from zxl.buckets import BUCKETS, bucket_name, nearest_bucket, recipe_buckets

RECIPE = [
    (768, 1344), (768, 1280), (832, 1216), (896, 1152), (960, 1088), (1024, 1024),
    (1088, 960), (1152, 896), (1216, 832), (1280, 768), (1344, 768),
]  # fmt: skip


def test_exactly_the_eleven_recipe_buckets():
    assert sorted(recipe_buckets()) == sorted(RECIPE)
    assert len(BUCKETS) == 11


def test_each_bucket_is_its_own_nearest():
    for w, h in RECIPE:
        assert nearest_bucket(w, h) == (w, h)
        assert nearest_bucket(w * 3, h * 3) == (w, h)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [((1000, 1000), "1024x1024"), ((512, 2048), "768x1344"), ((4000, 1000), "1344x768"), ((832, 1200), "832x1216")],
)
def test_nearest_in_aspect_ratio(size, bucket):
    assert bucket_name(*size) == bucket


def test_transposes_are_symmetric():
    for w in range(300, 3000, 97):
        bw, bh = nearest_bucket(w, 1000)
        assert nearest_bucket(1000, w) == (bh, bw) or math.isclose(math.log(w / 1000), 0, abs_tol=0.02)


def test_rejects_empty_sizes():
    with pytest.raises(ValueError):
        nearest_bucket(0, 10)
