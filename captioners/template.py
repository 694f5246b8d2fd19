"""``template``: a grammatical English sentence from a row's tags — no weights, deterministic.

The sentence reads subject first, then appearance, clothing, pose and action, and setting:

    "Two girls, Aoi and Midori, with long blonde hair and blue eyes, wearing a school uniform and a
     hat, sitting and smiling, outdoors under a cloudy sky, upper body."

Subjects come from the count tags (1girl, 2boys, multiple_girls, no_humans, solo …) and the
character tags (``name_(series)`` → "Name"); hair, eyes and clothing from tags by suffix and a
vocabulary; pose and action from a vocabulary and ``holding_*``; setting from a vocabulary.
Tags it does not know are left out, so the sentence never reads as a tag dump. A row with no
usable tag gets an empty caption (the stage records why).
"""

from __future__ import annotations

import re

import pandas as pd

from zxl.captioners.base import Captioner

NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
COUNT = re.compile(r"^(\d)\+?(girl|boy|other)s?$")
CLOTHING = {
    "school_uniform", "serafuku", "dress", "skirt", "shirt", "hoodie", "jacket", "coat", "kimono", "yukata",
    "armor", "swimsuit", "bikini", "hat", "ribbon", "hair_ribbon", "bow", "glasses", "scarf", "gloves",
    "thighhighs", "pantyhose", "boots", "sweater", "cape", "apron", "maid", "uniform", "necktie", "headphones",
}  # fmt: skip
ACTIONS = {
    "standing": "standing", "sitting": "sitting", "running": "running", "walking": "walking", "lying": "lying down",
    "kneeling": "kneeling", "jumping": "jumping", "smile": "smiling", "open_mouth": "with an open mouth",
    "closed_eyes": "with closed eyes", "blush": "blushing", "looking_at_viewer": "looking at the viewer",
    "looking_back": "looking back", "waving": "waving", "crying": "crying", "sleeping": "sleeping",
    "reading": "reading", "eating": "eating", "singing": "singing", "dancing": "dancing",
}  # fmt: skip
SETTINGS = {
    "outdoors": "outdoors", "indoors": "indoors", "night": "at night", "city": "in a city", "forest": "in a forest",
    "beach": "on a beach", "classroom": "in a classroom", "bedroom": "in a bedroom", "rain": "in the rain",
    "snow": "in the snow", "sky": "under the sky", "cloud": "under a cloudy sky",
    "cherry_blossoms": "among cherry blossoms", "flower": "with flowers around", "water": "by the water",
    "sunset": "at sunset", "simple_background": "on a plain background",
    "white_background": "on a white background", "space": "in space", "underwater": "underwater",
}  # fmt: skip
FRAMING = {
    "upper_body": "upper body", "full_body": "full body", "portrait": "portrait", "close-up": "close-up",
    "from_side": "seen from the side", "from_behind": "seen from behind", "from_above": "seen from above",
}  # fmt: skip
HAIR_LENGTHS = {"long", "short", "very long", "medium", "absurdly long", "very short"}
HAIR_STYLES = {
    "twintails": "twintails", "ponytail": "a ponytail", "side_ponytail": "a side ponytail", "braid": "a braid",
    "twin_braids": "twin braids", "hair_bun": "a bun", "double_bun": "two buns", "bob_cut": "a bob cut",
}  # fmt: skip
VOWEL = re.compile(r"^[aeiou]", re.I)


def _words(tag: str) -> str:
    return tag.replace("_", " ").strip()


UNCOUNTED = {"armor", "glasses", "gloves", "boots", "thighhighs", "pantyhose", "headphones", "bikini"}


def _article(noun: str) -> str:
    if noun in UNCOUNTED:
        return noun
    return ("an " if VOWEL.match(noun) else "a ") + noun


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def character_name(tag: str) -> str:
    """``hatsune_miku_(vocaloid)`` → ``Hatsune Miku``."""
    base = re.sub(r"_\([^)]*\)$", "", tag)
    return " ".join(w[:1].upper() + w[1:] for w in base.split("_") if w)


def _subjects(tags: list[str]) -> str:
    counts = []
    for t in tags:
        m = COUNT.match(t)
        if m:
            n, kind = int(m.group(1)), {"girl": "girl", "boy": "boy", "other": "figure"}[m.group(2)]
            word = NUMBERS.get(n, str(n))
            counts.append(f"{word} {kind}" if n == 1 else f"{word} {kind}s")
    if not counts:
        if "multiple_girls" in tags:
            counts.append("several girls")
        elif "multiple_boys" in tags:
            counts.append("several boys")
        elif "no_humans" in tags:
            counts.append("a scene without people")
    return _join(counts)


def sentence(tags: list[str], characters: list[str]) -> str:
    tags = list(dict.fromkeys(tags or []))  # de-duplicated, first order kept
    characters = list(dict.fromkeys(characters or []))
    subject = _subjects(tags)
    names = _join([character_name(c) for c in characters])
    parts = []
    if subject and names:
        parts.append(f"{subject[0].upper()}{subject[1:]}, {names}")
    elif names:
        parts.append(names)
    elif subject:
        parts.append(subject[0].upper() + subject[1:])
    hair = [_words(t)[: -len(" hair")] for t in tags if t.endswith("_hair")]
    lengths = [h for h in hair if h in HAIR_LENGTHS]
    colours = [h for h in hair if h not in HAIR_LENGTHS]
    hair_phrase = " ".join(lengths + [_join(colours)] if colours else lengths).strip()
    styles = [HAIR_STYLES[t] for t in tags if t in HAIR_STYLES]
    hair_part = f"{hair_phrase} hair" if hair_phrase else ("hair" if styles else "")
    if styles:
        hair_part += f" in {_join(styles)}"
    eyes = [_words(t) for t in tags if t.endswith("_eyes") and t != "closed_eyes"]
    looks = _join(([hair_part] if hair_part else []) + eyes)
    if looks:
        parts.append(f"with {looks}")
    clothes = [_article(_words(t)) for t in tags if t in CLOTHING]
    if clothes:
        parts.append(f"wearing {_join(clothes)}")
    actions = [ACTIONS[t] for t in tags if t in ACTIONS]
    actions += [f"holding {_article(_words(t[len('holding_') :]))}" for t in tags if t.startswith("holding_")]
    if actions:
        parts.append(_join(actions))
    places = [SETTINGS[t] for t in tags if t in SETTINGS]
    if places:
        parts.append(" ".join(places[:3]))
    framing = [FRAMING[t] for t in tags if t in FRAMING]
    if framing:
        parts.append(", ".join(framing))
    if not parts:
        return ""
    text = ", ".join(parts)
    text = text[0].upper() + text[1:]
    return text + "."


class TemplateCaptioner(Captioner):
    name = "template"

    def __init__(self, cfg=None):
        self.cfg = cfg

    def caption(self, images, rows: pd.DataFrame) -> list[str]:
        tags = rows["tags"] if "tags" in rows else [None] * len(rows)
        chars = rows["characters"] if "characters" in rows else [None] * len(rows)
        return [
            sentence(list(t) if t is not None else [], list(c) if c is not None else [])
            for t, c in zip(tags, chars, strict=True)
        ]

    @classmethod
    def references(cls, cfg) -> dict[str, str]:
        return {"caption.captioner": "template (no weights)"}
