"""The real REES46 Open CDP slices bundled with the project, named once.

REES46 (Kaggle: "eCommerce behavior data from multi category store", "eCommerce events history
in cosmetics shop"; free to use with attribution to REES46). The multi-category sample ships in
the wheel (the demo and the benchmarks' shapes); the two cosmetics months are in the repository
only (tests and the README's acceptance runs), so a clone needs nothing beside it.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
# The multi-category shop's first 3 hours of 2019-10-01 (17,434 events).
MULTICAT_SAMPLE = DATA_DIR / "multicat-2019-10-01-head.csv.gz"
# The cosmetics shop's first hours of October 2019 (training) and November 2019 (held out).
COSMETICS_OCTOBER = DATA_DIR / "cosmetics-2019-10.csv.gz"
COSMETICS_NOVEMBER = DATA_DIR / "cosmetics-2019-11.csv.gz"
# The model shipped in the wheel (trained on COSMETICS_OCTOBER, validated on November): the
# demo's and the chaos suite's champion.
SHIPPED_MODEL = DATA_DIR / "model"
