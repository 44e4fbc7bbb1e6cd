"""What the pages do with uploaded files before core sees them."""
from __future__ import annotations


def unique_names(items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Two uploads with one name get told apart ("a.jpg", "a.jpg (2)"): every heading then names one file."""
    count: dict[str, int] = {}
    out = []
    for name, payload in items:
        count[name] = count.get(name, 0) + 1
        out.append((name if count[name] == 1 else f"{name} ({count[name]})", payload))
    return out
