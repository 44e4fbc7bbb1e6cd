"""What the pages do with uploaded files before core sees them."""
from __future__ import annotations


def unique_names(items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Two uploads with one name get told apart ("a.jpg", "a (2).jpg"): every heading, and every file saved from
    one, then names one upload."""
    count: dict[str, int] = {}
    out = []
    for name, payload in items:
        count[name] = count.get(name, 0) + 1
        stem, dot, suffix = name.rpartition(".")
        numbered = f"{stem} ({count[name]}).{suffix}" if dot else f"{name} ({count[name]})"
        out.append((name if count[name] == 1 else numbered, payload))
    return out
