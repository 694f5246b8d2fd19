"""The captioner protocol: ``caption(images, rows) -> list[str]``.

``rows`` is a DataFrame of the rows to caption (their ``tags``, ``characters``, ``rating`` …);
``images`` one decoded image per row for captioners with ``needs_images`` (None where there is
none), and None for the others. The result has one string per row, same order; an empty string
means the captioner had nothing to say for that row, and the stage records why.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import pandas as pd
from PIL import Image

from zxl.registry import Member


class Captioner(Member, ABC):
    name: ClassVar[str]
    needs_images: ClassVar[bool] = False

    @abstractmethod
    def caption(self, images: list[Image.Image | None] | None, rows: pd.DataFrame) -> list[str]: ...
