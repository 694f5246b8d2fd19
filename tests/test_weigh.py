import numpy as np
import pytest

from zxl.config import ConfigError
from zxl.pipeline.config import WeighConfig
from zxl.pipeline.weigh import repeats, validate


def test_default_table():
    status = np.array(["ok"] * 10 + ["duplicate", "failed_download", "failed_decode"], object)
    score = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 9, 9, 9])
    assert repeats(status, score, WeighConfig()).tolist() == [1, 1, 1, 1, 1, 1, 1, 2, 3, 1, 0, 0, 0]


def test_configured_table():
    cfg = WeighConfig(repeats={9: 5, 1: 0}, default=2)
    got = repeats(np.array(["ok"] * 3, object), np.array([1, 5, 9]), cfg)
    assert got.dtype == np.int16 and got.tolist() == [0, 2, 5]


def test_bad_table():
    with pytest.raises(ConfigError, match="weigh.repeats"):
        validate(WeighConfig(repeats={10: 3}))
    with pytest.raises(ConfigError, match="weigh.repeats"):
        validate(WeighConfig(repeats={9: -1}))
