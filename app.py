"""HiRISE Studio (`streamlit run app.py`): the page set-up every page shares, then the page chosen in the menu.

The pages live in views/ (not pages/, which Streamlit would also read as an old-style page folder) and are listed, with their titles, icons and URLs, in `ui.navigation.PAGES`."""
from __future__ import annotations

import streamlit as st

from ui.navigation import FAVICON, PAGES, refuse_unchosen_address

# the tab's icon first, before the menu: the browser otherwise shows the page's menu icon there, which Streamlit
# fetches from Google's font server (a failed request on a machine without internet)
st.set_page_config(page_icon=FAVICON, layout="wide")
current = st.navigation([st.Page(p.path, title=p.label, icon=p.icon, url_path=p.url_path, default=p.url_path == "")
                         for p in PAGES])
chosen = next(p for p in PAGES if p.url_path == current.url_path)
st.set_page_config(page_title=f"{chosen.heading} · HiRISE Studio" if chosen.url_path else chosen.heading,
                   page_icon=FAVICON, layout="wide")  # set again: a page's own config replaces all of it
refuse_unchosen_address()
st.title(chosen.heading)
current.run()
