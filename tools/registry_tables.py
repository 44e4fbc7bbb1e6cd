"""Print the current default's figures as the Markdown tables the model card and the README carry, from the
registry of defaults (one source: a test checks the README and the card against it).

    python tools/registry_tables.py [ENTRY_ID]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import defaults


def main() -> int:
    registry = defaults.read_registry()
    wanted = sys.argv[1] if len(sys.argv) > 1 else registry.get("current")
    entry = next((e for e in registry["entries"] if e["id"] == wanted), None)
    if entry is None:
        print(f"error: no entry {wanted!r} in the registry", file=sys.stderr)
        return 2
    print(f"## {entry['checkpoint']} (cross-validation {entry['id']})\n")
    print(defaults.markdown_table(defaults.figures_rows(entry["figures"])))
    if entry.get("gate"):
        g = entry["gate"]
        print(f"\nAgainst {g['against']}: " + ", ".join(
            f"{k.replace('_', ' ')} {defaults.fmt_difference(g[k])}" for k in ("macro_f1", "accuracy",
                                                                              "balanced_accuracy")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
