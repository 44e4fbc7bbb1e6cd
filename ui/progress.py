"""The pages' progress bars: core's on_progress reports drawn as a Streamlit bar with counts, rate and ETA."""
from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st


def progress_bar(label: str) -> Callable[[int, int, str], None]:
    """An on_progress callback drawing a Streamlit bar with counts, rate and ETA. Each stage (a new description)
    is timed from its own start and from the count it started at (work kept from an earlier run is not speed);
    a one-step stage shows its description alone, with no count to make an ETA from. The bar appears with the
    first report (work read from a cache reports none, and leaves no empty bar behind)."""
    bar = st.empty()
    stage = {"desc": None, "start": 0.0, "from": 0}

    def update(done: int, total: int, desc: str) -> None:
        now = time.perf_counter()
        desc = desc or label
        if desc != stage["desc"] or done < stage["from"]:
            stage.update({"desc": desc, "start": now, "from": done})
        if total > 1:
            rate = (done - stage["from"]) / (now - stage["start"]) if now > stage["start"] else 0.0
            eta = f"ETA {(total - done) / rate:,.0f} s" if rate > 0 else "ETA …"
            bar.progress(min(1.0, done / total), text=f"{desc}: {done:,}/{total:,} · {rate:,.0f}/s · {eta}")
        elif total == 1:
            bar.progress(float(min(done, 1)), text=f"{desc}…")
        else:
            bar.progress(0.0, text=f"{desc}: {done:,}")
        if total and done >= total:
            bar.empty()

    return update
