"""The eight HiRISE v3/v3.2 landmark classes: the one place their ids, names and descriptions live."""
from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "other",
    "crater",
    "dark dune",
    "slope streak",
    "bright dune",
    "impact ejecta",
    "swiss cheese",
    "spider",
)
NUM_CLASSES = len(CLASS_NAMES)

CLASS_DESCRIPTIONS: dict[str, str] = {
    "other": "Anything that is none of the seven landmarks: plains, ridges, layered terrain, noise. About 81% of the tiles.",
    "crater": "A roughly circular impact depression with a raised rim, from a few metres to the whole tile.",
    "dark dune": "Dunes of dark basaltic sand, often crescent (barchan) shaped, standing out against brighter ground.",
    "slope streak": "Dark, narrow streaks running downslope on dust-covered slopes, thought to be dust avalanches.",
    "bright dune": "Light-toned dunes or ripples (transverse aeolian ridges), brighter than their surroundings.",
    "impact ejecta": "Material thrown out around a fresh impact, a bright or dark halo or rays; rare in the set.",
    "swiss cheese": "Polar CO2 ice terrain pitted with flat-floored, round depressions, like slices of swiss cheese.",
    "spider": "Araneiform terrain: radiating dendritic troughs carved by CO2 gas jets near the south pole; rare.",
}


def class_index(name_or_id: str | int) -> int:
    """Map a class id ('3', 3) or name ('slope streak', 'slope_streak') to its id, or raise ValueError."""
    text = str(name_or_id).strip()
    if text.lstrip("-").isdigit():
        idx = int(text)
        if 0 <= idx < NUM_CLASSES:
            return idx
        raise ValueError(f"unknown class id {idx} (expected 0..{NUM_CLASSES - 1})")
    key = text.lower().replace("_", " ").replace("-", " ")
    for idx, name in enumerate(CLASS_NAMES):
        if name == key:
            return idx
    raise ValueError(f"unknown class {text!r} (expected one of: {', '.join(CLASS_NAMES)})")


#: The one palette of the classes (RGB), for class maps, legends and every chart coloured by class: eight colours
#: told apart at a glance (`other` is grey, and class maps leave it undrawn by default).
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "other": (150, 150, 150),
    "crater": (230, 25, 75),
    "dark dune": (60, 180, 75),
    "slope streak": (255, 225, 25),
    "bright dune": (0, 130, 200),
    "impact ejecta": (245, 130, 48),
    "swiss cheese": (145, 30, 180),
    "spider": (70, 240, 240),
}


def class_hex(name: str) -> str:
    """'#rrggbb' of a class's colour (plotly's form)."""
    return "#{:02x}{:02x}{:02x}".format(*CLASS_COLORS[name])
