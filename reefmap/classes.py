"""Class schemes: the classes a model writes into a map's ``classification`` layer.

A ``ClassScheme`` is the model's classes in output-channel order: the code each writes to the map, its name and
colour, and which classes count as reef (``reef_probability`` sums their probabilities). A model bundle brings its
own (``BundleMeta.scheme``); a map records the scheme it was made with, and every product (statistics, overviews,
exports, pictures) reads it from there. ``DEMO_SCHEME`` is the built-in one of the shipped demo model and the
synthetic reef world; maps written before schemes were recorded are read with it.

The codes the map itself reserves (nodata, unfinished) live in ``reefmap.store.format``, which also turns a scheme
into the ``classification`` layer's CF attributes (``classification_attrs``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reefmap.errors import InvalidParameter

NODATA = 0
DEEP_WATER = 1
SHALLOW = 2
REEF = 3
LAND = 4
CLOUD = 5


@dataclass(frozen=True)
class ClassScheme:
    """The classes of a model, in output-channel order: ``codes[i]`` is written where channel i wins."""

    codes: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[str, ...]  #: "rrggbb" per class
    reef: tuple[str, ...]  #: the names of the classes that count as reef

    def __post_init__(self):
        n = len(self.codes)
        if not n or len(self.names) != n or len(self.colors) != n:
            raise InvalidParameter(f"a class scheme needs one code, name and colour per class, got codes {self.codes}, "
                                   f"names {self.names}, colours {self.colors}")
        for what, values in (("codes", self.codes), ("names", self.names)):
            dup = sorted({v for v in values if values.count(v) > 1}, key=str)
            if dup:
                raise InvalidParameter(f"class {what} {dup} appear more than once in {list(values)}: each class needs its own")
        bad = [c for c in self.codes if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= 255]
        if bad:
            raise InvalidParameter(f"class codes {bad} are not uint8 values (0..255)")
        bad = [c for c in self.colors if not re.fullmatch(r"[0-9a-f]{6}", str(c))]
        if bad:
            raise InvalidParameter(f"class colours {bad} are not rrggbb lower-case hex")
        if not self.reef or not set(self.reef) <= set(self.names):
            raise InvalidParameter(f"reef classes {list(self.reef)} must name classes of {list(self.names)}")

    @property
    def reef_codes(self) -> tuple[int, ...]:
        return tuple(self.codes[self.names.index(r)] for r in self.reef)

    @property
    def reef_channels(self) -> tuple[int, ...]:
        """The output channels of the reef classes."""
        return tuple(self.names.index(r) for r in self.reef)

    @property
    def flag_words(self) -> tuple[str, ...]:
        """The names as CF ``flag_meanings`` words (letters, digits and ``_-.+@``; anything else becomes ``_``)."""
        return tuple(flag_word(n) for n in self.names)

    def rgb(self, code: int) -> tuple[int, int, int]:
        c = self.colors[self.codes.index(code)]
        return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)

    def code_of(self, name: str) -> int:
        return self.codes[self.names.index(name)]

    def to_json(self) -> dict:
        return {"classes": [{"value": v, "name": n, "color": c} for v, n, c in zip(self.codes, self.names, self.colors)],
                "reef_classes": list(self.reef)}

    @classmethod
    def from_json(cls, d: dict) -> "ClassScheme":
        """The scheme of ``to_json`` (or of a bundle spec's ``classes`` and ``reef_classes``)."""
        try:
            classes = d["classes"]
            return cls(tuple(c["value"] for c in classes), tuple(c["name"] for c in classes),
                       tuple(str(c.get("color", "808080")).lstrip("#").lower() for c in classes),
                       tuple(d["reef_classes"]))
        except (KeyError, TypeError) as e:
            raise InvalidParameter(f"a class scheme must be {{classes: [{{value, name, color}}], reef_classes: [...]}}, "
                                   f"got {d!r} ({type(e).__name__}: {e})") from None


def flag_word(name: str) -> str:
    """A class name as one CF ``flag_meanings`` word: "Coral/Algae" → "Coral_Algae"."""
    return re.sub(r"[^A-Za-z0-9_.+@-]+", "_", name).strip("_") or "_"


def class_key(name: str) -> str:
    """A class name compared loosely (lower case, runs of other characters as ``_``): "Deep Water" → "deep_water"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


#: the built-in scheme: the shipped demo model and the synthetic reef world (channel i ↔ code i + 1)
DEMO_SCHEME = ClassScheme(codes=(DEEP_WATER, SHALLOW, REEF, LAND, CLOUD),
                          names=("deep_water", "shallow", "reef", "land", "cloud"),
                          colors=("10286e", "78c8d2", "ff503c", "967846", "ebebeb"), reef=("reef",))
#: class name → code of the demo scheme
CLASSES: dict[str, int] = dict(zip(DEMO_SCHEME.names, DEMO_SCHEME.codes))
CLASS_NAMES: tuple[str, ...] = DEMO_SCHEME.names
