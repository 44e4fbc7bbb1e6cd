"""Streamlit widgets whose choice survives leaving the page and coming back."""
from __future__ import annotations

import streamlit as st


def kept_selectbox(label: str, options: list, key: str, default: object = None, **kwargs: object) -> object:
    """A selectbox whose choice survives leaving the page and coming back: Streamlit drops a widget's state when a
    run does not draw it, and the widget then came back at its default (a model choice reverted to the default
    model, and the next map was drawn with a model nobody chose). The choice is mirrored in a key of its own."""
    mirror = f"kept_{key}"
    if key not in st.session_state:
        kept = st.session_state.get(mirror)
        st.session_state[key] = kept if kept in options else (default if default in options else options[0])
    value = st.selectbox(label, options, key=key, **kwargs)
    st.session_state[mirror] = value
    return value
