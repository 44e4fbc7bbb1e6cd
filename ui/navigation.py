"""The app's pages and what every page run starts with. Kept free of torch and the data layer: app.py imports
it before each page draws, so a page's first element (the Explain page's uploader) shows without waiting for
them (issue 14, cold start)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st


@dataclass(frozen=True)
class AppPage:
    path: str  # the script, from the project root
    label: str  # in the menu
    icon: str  # in the menu (Material Symbols, which Streamlit serves itself)
    url_path: str  # "" for the home page; lower case, as addresses are typed (Streamlit matches them exactly)
    heading: str  # the page's title


#: The app's pages, in menu order: app.py builds `st.navigation` from them (the one list of pages).
PAGES = (AppPage("views/home.py", "Home", ":material/satellite_alt:", "", "HiRISE Studio"),
         AppPage("views/dataset.py", "Dataset", ":material/folder_open:", "dataset", "Dataset"),
         AppPage("views/train.py", "Train", ":material/model_training:", "train", "Train"),
         AppPage("views/evaluate.py", "Evaluate", ":material/grid_on:", "evaluate", "Evaluate"),
         AppPage("views/explain.py", "Explain", ":material/image_search:", "explain", "Explain"),
         AppPage("views/compare.py", "Compare", ":material/compare:", "compare", "Compare runs"),
         AppPage("views/explore.py", "Explore", ":material/scatter_plot:", "explore", "Explore"),
         AppPage("views/scan.py", "Scan", ":material/travel_explore:", "scan", "Scan observations"),
         AppPage("views/label.py", "Label", ":material/label:", "label", "Label what the model is unsure of"))


#: The browser tab's icon, served by the app itself: a ":material/...:" page icon would make Streamlit point the
#: favicon at Google's font server, a request that fails (and shows in the console) on an air-gapped machine.
FAVICON = str(Path(__file__).resolve().parent.parent / "assets" / "favicon.png")


def refuse_unchosen_address() -> None:
    """Serve nothing unless the server's address was chosen. Streamlit reads .streamlit/config.toml (127.0.0.1)
    from the working directory and from the script's own folder as given on the command line; started any
    other way (a symlink or a copy of app.py, another folder's config) it has no address and listens on
    every network interface. The socket is Streamlit's, opened before this script runs: what the app can
    do is show nothing there. An address given on purpose (127.0.0.1, or 0.0.0.0 to share) is served."""
    if not st.get_option("server.address"):
        st.error("HiRISE Studio was started without a server address, so Streamlit listens on every network "
                 "interface; nothing is served that way. Restart it with `make app`, or `streamlit run app.py "
                 "--server.address 127.0.0.1` (0.0.0.0 to share it on purpose).", icon=":material/lock:")
        st.stop()
