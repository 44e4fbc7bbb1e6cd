"""Streamlit widgets whose choice survives leaving the page and coming back."""
from __future__ import annotations

from collections.abc import Callable

import streamlit as st


def kept(widget: Callable, label: str, key: str, default: object, *args: object,
         valid: Callable[[object], bool] = lambda _: True, **kwargs: object) -> object:
    """`widget(label, *args, key=key, **kwargs)` whose value survives leaving the page and coming back: Streamlit
    drops a widget's state when a run does not draw it, and the widget then came back at its default (a model choice
    reverted to the default model, and the next map was drawn with a model nobody chose). The value is mirrored in
    a key of its own, and restored when still `valid`."""
    mirror = f"kept_{key}"
    if key not in st.session_state:
        remembered = st.session_state.get(mirror, default)
        st.session_state[key] = remembered if valid(remembered) else default
    value = widget(label, *args, key=key, **kwargs)
    st.session_state[mirror] = value
    return value


def kept_selectbox(label: str, options: list, key: str, default: object = None, **kwargs: object) -> object:
    """A selectbox whose choice survives leaving the page (see `kept`); a choice no longer offered falls back to
    `default`, else the first option."""
    fallback = default if default in options else options[0]
    return kept(st.selectbox, label, key, fallback, options, valid=lambda v: v in options, **kwargs)
