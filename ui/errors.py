"""Errors a user can cause, and how a page shows them: a message, never a traceback."""
from __future__ import annotations

import streamlit as st

from core.data import DataError
from core.errors import CheckpointError
from core.imageio import ImageError

#: Errors a user can cause; shown as a message, never a traceback.
USER_ERRORS = (DataError, CheckpointError, ImageError, ValueError, FileNotFoundError, OSError)


def show_error(exc: BaseException | str, what: str = "") -> None:
    st.error(f"{what + ': ' if what else ''}{exc}", icon=":material/error:")
