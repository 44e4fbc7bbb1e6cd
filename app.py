"""HiRISE Studio (`streamlit run app.py`): the page set-up every page shares, then the page chosen in the menu.

The pages live in views/ (not pages/, which Streamlit would also read as an old-style page folder) and are listed, with their titles, icons and URLs, in `ui.navigation.PAGES`."""
from __future__ import annotations

import streamlit as st

from ui.navigation import PAGES, refuse_unchosen_address

current = st.navigation([st.Page(p.path, title=p.label, icon=p.icon, url_path=p.url_path, default=p.url_path == "")
                         for p in PAGES])
chosen = next(p for p in PAGES if p.url_path == current.url_path)
st.set_page_config(page_title=f"{chosen.heading} · HiRISE Studio" if chosen.url_path else chosen.heading,
                   page_icon=chosen.icon, layout="wide")
refuse_unchosen_address()
st.title(chosen.heading)
current.run()
