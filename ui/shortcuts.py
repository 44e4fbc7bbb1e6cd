"""Keyboard shortcuts for a page's buttons: a key press clicks the button whose widget key it is mapped to.

Ours rather than streamlit-shortcuts', whose listener also fires while a person types into a text box (typing a
queue name with an `s` in it would skip a tile): this one ignores keys typed into inputs, text areas, selects and
editable elements, and keys held with Ctrl, Alt or Meta, and never clicks a disabled button. The script is fixed
text plus a JSON map of our own keys: no user input reaches it."""
from __future__ import annotations

import json

import streamlit as st

_SCRIPT = """<script>
(() => {
  const w = window, doc = document;
  w.__hiriseKeys = %s;
  if (w.__hiriseKeysListening) return;
  w.__hiriseKeysListening = true;
  doc.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.altKey || e.metaKey || e.repeat) return;
    const t = e.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
    const key = (w.__hiriseKeys || {})[e.key.toLowerCase()];
    if (!key) return;
    const button = doc.querySelector(`.st-key-${key} button`);
    if (!button || button.disabled) return;
    e.preventDefault();
    button.click();
  });
})();
</script>"""


def bind_keys(keys: dict[str, str]) -> None:
    """Map each key (`"1"`, `"s"`) to the widget key of the button it presses; replaces the page's earlier map."""
    mapping = {k.lower(): v for k, v in keys.items() if k and v.replace("_", "").isalnum()}
    st.html(_SCRIPT % json.dumps(mapping), unsafe_allow_javascript=True)
