"""The tagger protocol: one family, one signature.

``tag(images, rows) -> pd.DataFrame`` takes the rows of a shard (the source columns travel with
them) and, for taggers with ``needs_images``, one decoded image per row (None where there is
none), and returns the columns it fills, one row per input row, same order:

    rating      general | sensitive | questionable | explicit, or None
    year        int or None
    tags        list of general tags, or None
    characters  list of character tags, or None
    copyrights, artists, meta   lists of those categories' tags, or None (a booru export's own strings)
    problem     why a value is missing although the row had one to give (None when all is well)

``source`` names the tagger in ``rating_source`` (a model tagger names its model).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import pandas as pd
from PIL import Image

from zxl.registry import Member

TAG_FIELDS = ("tags", "characters", "copyrights", "artists", "meta")  # the catalog's tag columns
COLUMNS = ("rating", "year", *TAG_FIELDS, "problem")
RATINGS = ("general", "sensitive", "questionable", "explicit")


class Tagger(Member, ABC):
    name: ClassVar[str]
    needs_images: ClassVar[bool] = False

    @property
    def source(self) -> str:
        return self.name

    @abstractmethod
    def tag(self, images: list[Image.Image | None] | None, rows: pd.DataFrame) -> pd.DataFrame: ...


def empty(n: int) -> pd.DataFrame:
    return pd.DataFrame({c: [None] * n for c in COLUMNS})
