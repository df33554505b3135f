"""A deterministic procedural reef world: what it is made of, and the parameters that pick one.

Every pixel (RGB and truth) is a pure function of the world's parameters and its global pixel row/column
(``reefmap.synthetic.render``), so any window renders on its own and a mosaic can be as large as the globe
with nothing stored (``reefmap.synthetic.reader``). The geography has the pixel scale of the 300 m Landsat
scene of the Bahamas (``../shared/data/real/RGB.byte.tif``):

* shallow banks in deep water: bright turquoise near the shores, bluer towards the bank edges, darker
  seagrass patches;
* islands on the banks, fringed by thin (2-8 px) reefs; barrier reefs (1-4 px) along the bank edges;
  atolls (reef rings round a lagoon, rare islets) in deep water;
* cumulus clouds over everything, with shadows (truth: cloud for both), and sparse nodata gaps (blobs and
  scan-line streaks, value 0 in all bands).

Colours: measured on the real scene by ``pipelines/measure_bahamas_colours.py`` (``MEASURED`` below):
each class is its measured mean plus spatially correlated texture with the measured covariance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from reefmap.classes import CLOUD, DEEP_WATER, LAND, REEF, SHALLOW
from reefmap.errors import InvalidParameter

# -- colours measured on the real Bahamas scene (RGB.byte.tif) by pipelines/measure_bahamas_colours.py ----------
#: population → (mean R, G, B; 3x3 covariance)
MEASURED: dict[str, tuple[tuple[float, float, float], tuple[tuple[float, ...], ...]]] = {
    "deep_water": ((19.6, 22.9, 28.0), ((21.0, 18.9, 18.1), (18.9, 31.8, 25.7), (18.1, 25.7, 25.3))),
    "shallow": ((15.8, 65.4, 87.8), ((167.2, 143.1, 44.8), (143.1, 445.9, 445.1), (44.8, 445.1, 581.5))),
    "reef": ((43.4, 82.2, 67.0), ((252.9, 248.5, 192.9), (248.5, 372.6, 333.4), (192.9, 333.4, 344.6))),
    "land": ((48.1, 54.2, 38.2), ((861.8, 927.1, 681.9), (927.1, 1053.7, 755.0), (681.9, 755.0, 573.3))),
    "cloud": ((234.3, 237.9, 242.5), ((1018.2, 896.6, 833.3), (896.6, 822.2, 772.7), (833.3, 772.7, 931.3))),
    # sub-populations the renderer blends between
    "shallow_bank": ((13.8, 65.5, 90.0), ((94.5, 133.4, 94.2), (133.4, 437.2, 435.0), (94.2, 435.0, 510.0))),
    "shoal": ((49.3, 119.1, 127.2), ((669.9, 143.4, -270.6), (143.4, 83.4, -21.7), (-270.6, -21.7, 383.6))),
    "bank_deep": ((8.7, 44.2, 67.0), ((3.3, 0.9, 1.9), (0.9, 8.1, 8.2), (1.9, 8.2, 18.0))),
    "seagrass": ((43.0, 58.2, 50.4), ((216.0, 205.8, 206.1), (205.8, 274.7, 251.0), (206.1, 251.0, 240.5))),
    "shadow": ((2.1, 2.6, 2.2), ((2.5, 0.9, -0.8), (0.9, 3.6, 0.9), (-0.8, 0.9, 4.6))),
}
#: measured mean colour of each class code (what the synthetic classes reproduce on average)
CLASS_MEANS: dict[int, tuple[float, float, float]] = {
    DEEP_WATER: MEASURED["deep_water"][0],
    SHALLOW: MEASURED["shallow"][0],
    REEF: MEASURED["reef"][0],
    LAND: MEASURED["land"][0],
    CLOUD: MEASURED["cloud"][0],
}

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SyntheticWorld:
    """The parameters of a synthetic reef world (fractions are of the whole world, before clouds and gaps).

    - ``seed``: which world (0 .. 2**63 - 1).
    - ``bank_cover``: shallow banks, with their islands and reefs.
    - ``island_density``: land (islands sit on the banks: below ``bank_cover``).
    - ``atoll_density``: chance that a 256 x 256 px cell well away from the banks holds an atoll.
    - ``reef_cover``: share of the reef bands (along shores and bank edges) that is reef.
    - ``seagrass_cover``: share of shallow water darkened by seagrass.
    - ``cloud_cover``: under cloud; ``cloud_shadows`` adds their shadows (about as much again).
    - ``nodata_fraction``: in nodata gaps.
    """

    seed: int = 0
    bank_cover: float = 0.45
    island_density: float = 0.12
    atoll_density: float = 0.2
    reef_cover: float = 0.6
    seagrass_cover: float = 0.15
    cloud_cover: float = 0.06
    cloud_shadows: bool = True
    nodata_fraction: float = 0.03

    def __post_init__(self):
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
            raise InvalidParameter(f"seed {self.seed!r} must be a whole number from 0 to 2**63 - 1; pass e.g. seed=0")
        object.__setattr__(self, "seed", int(self.seed))
        if not isinstance(self.cloud_shadows, (bool, np.bool_)):
            raise InvalidParameter(f"cloud_shadows {self.cloud_shadows!r} must be True or False")
        object.__setattr__(self, "cloud_shadows", bool(self.cloud_shadows))
        limits = {  # name → (lowest, highest, highest allowed itself?)
            "bank_cover": (0.0, 1.0, False),
            "island_density": (0.0, 1.0, False),
            "atoll_density": (0.0, 1.0, True),
            "reef_cover": (0.0, 1.0, True),
            "seagrass_cover": (0.0, 1.0, True),
            "cloud_cover": (0.0, 1.0, False),
            "nodata_fraction": (0.0, 0.5, True),
        }
        for name, (lo, hi, hi_ok) in limits.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise InvalidParameter(f"{name} {v!r} must be a number from {lo} to {hi}")
            if not (lo <= v <= hi) or (v == hi and not hi_ok):
                bound = "<=" if hi_ok else "<"
                raise InvalidParameter(f"{name} {v!r} is out of range; pass {lo} <= {name} {bound} {hi}")
            object.__setattr__(self, name, float(v))
        if self.island_density >= self.bank_cover:
            raise InvalidParameter(
                f"island_density {self.island_density} must be below bank_cover {self.bank_cover} (islands sit on "
                "banks); lower island_density or raise bank_cover"
            )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "SyntheticWorld":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidParameter(f"unknown SyntheticWorld parameters {unknown}; known: {sorted(known)}")
        return cls(**d)


def resolve_world(seed: int, world: SyntheticWorld | None) -> SyntheticWorld:
    """The world that ``seed=`` and ``world=`` (the keywords of the synthetic API) name together."""
    if world is None:
        return SyntheticWorld(seed=seed)
    if not isinstance(world, SyntheticWorld):
        raise InvalidParameter(f"world {world!r} must be a SyntheticWorld (or None for the defaults)")
    if seed not in (0, world.seed):
        raise InvalidParameter(f"seed={seed!r} conflicts with world.seed={world.seed}; pass the seed in one place")
    return world
