"""The class codes of a reefmap classification layer (CF ``flag_values`` / ``flag_meanings``)."""

from __future__ import annotations

NODATA = 0
DEEP_WATER = 1
SHALLOW = 2
REEF = 3
LAND = 4
CLOUD = 5

#: class name → code, in model output-channel order (channel i ↔ code i + 1)
CLASSES: dict[str, int] = {"deep_water": DEEP_WATER, "shallow": SHALLOW, "reef": REEF, "land": LAND, "cloud": CLOUD}
CLASS_NAMES: tuple[str, ...] = tuple(CLASSES)
FLAG_VALUES: tuple[int, ...] = tuple(CLASSES.values())
FLAG_MEANINGS: str = " ".join(CLASSES)
