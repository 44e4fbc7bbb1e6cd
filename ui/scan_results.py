"""A finished scan on the Scan page: the overlays, the detections table (sortable, filterable; a row opens its window
with a Grad-CAM of its class), and every output to download."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.ood import describe
from core.scan.job import ScanJob, observation_path
from ui.errors import USER_ERRORS, show_error
from ui.loaders import get_model

MAX_ZIP_BYTES = 512 * 2**20  # one zip of the outputs is offered below this; each file is always offered alone


def show_results(job: ScanJob) -> None:
    rows = job.detections()
    request = job.request()
    threshold = _option(request, "--threshold", "0.9")
    overlays = sorted(job.out.glob("*.overlay.png"))
    st.subheader(f"{len(rows)} detection{'' if len(rows) == 1 else 's'} at probability ≥ {threshold}")
    engine = job.engine()
    if engine:
        st.caption(f"Forward passes: {engine}.")
    for path in overlays:
        st.image(str(path), caption=f"{path.name}: each detection outlined in its class's colour, with its "
                                    "probability", width="stretch")
    if not rows:
        st.info("No window was called a landmark at this threshold. A lower threshold, other window sizes, or a "
                "resolution level nearer the browse images' scale may find some.")
    else:
        _table(job, rows, request)
    _downloads(job)


def _option(request: dict, flag: str, default: str) -> str:
    argv = request.get("argv", [])
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else default


def _table(job: ScanJob, rows: list[dict], request: dict) -> None:
    frame = pd.DataFrame(rows)
    for col in ("probability", "typicality", "lon", "lat", "map_x", "map_y", "centre_x", "centre_y"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    for col in ("x0", "y0", "x1", "y1", "windows"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    # the out-of-distribution verdict of every row in the table, not only of the row clicked (browser walk)
    frame["unusual"] = frame["typicality"].map(lambda t: "–" if pd.isna(t) else
                                               "unusual" if describe(float(t))[1] else "typical")
    classes = sorted(frame["label"].unique())
    counts = frame["label"].value_counts()
    picked = st.multiselect("Classes", classes, classes, format_func=lambda c: f"{c} ({counts[c]})",
                            key=f"scan-classes-{job.name}")
    shown = frame[frame["label"].isin(picked)].sort_values("probability", ascending=False).reset_index(drop=True)
    if shown.empty:
        st.info("No class is chosen: pick one or more classes above to list their detections.",
                icon=":material/filter_alt:")
        return
    georef = shown["lat"].notna().any()
    columns = ["image", "label", "probability", "typicality", "unusual", *(["lat", "lon"] if georef else []),
               "x0", "y0", "x1", "y1", "windows"]
    st.caption("Click a column's header to sort by it; click a row to see its window and Grad-CAM. "
               + ("Latitude and east longitude (0-360) of each window's centre, from the image's label or "
                  "GeoTIFF. " if georef else "This image has no georeferencing (no PDS3 label beside it, not a "
                                             "GeoTIFF): positions are in pixels. ")
               + "Typicality (the out-of-distribution check): the share of validation tiles that lie closer to the "
                 "training tiles than this window; 0.95 or more flags a window unlike them (unusual: its "
                 "prediction means little).")
    event = st.dataframe(shown[columns], hide_index=True, width="stretch", on_select="rerun",
                         selection_mode="single-row", key=f"scan-table-{job.name}",
                         column_config={"probability": st.column_config.NumberColumn(format="%.3f"),
                                        "typicality": st.column_config.NumberColumn(format="%.2f"),
                                        "lat": st.column_config.NumberColumn(format="%.5f"),
                                        "lon": st.column_config.NumberColumn(format="%.5f")})
    selected = event.selection.rows if event and event.selection else []
    # a row picked before the class filter changed may no longer exist: the selection is then simply not shown
    if selected and 0 <= selected[0] < len(shown):
        _detail(job, shown.iloc[selected[0]], request)


@st.cache_data(show_spinner=False, max_entries=32)
def _window(path: str, level: int, box: tuple[int, int, int, int]) -> np.ndarray:
    from core.imageio import to_tile
    from core.scan.raster import open_raster

    with open_raster(path, level) as raster:
        return to_tile(np.ascontiguousarray(raster.read(*box)))[0]


def _detail(job: ScanJob, row: pd.Series, request: dict) -> None:
    from core.explain import explain, overlay_heatmap
    from core.ood import judge

    path = observation_path(job, row["image"])
    if path is None:
        st.warning(f"{row['image']} is no longer where the scan read it: no window to show.")
        return
    box = tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1"))
    where = f" at {row['lat']:.5f}° N, {row['lon']:.5f}° E" if pd.notna(row.get("lat")) else ""
    st.markdown(f"**{row['label']}** ({row['probability']:.1%}) in {row['image']}, window {box}{where}")
    try:
        tile = _window(str(path), int(_option(request, "--level", "0")), box)
        model = get_model(request.get("checkpoint") or None)
        with st.spinner("Grad-CAM…"):
            exp = explain(model, tile, "gradcam", list(model.class_names).index(row["label"]))
    except USER_ERRORS as exc:
        show_error(exc, "Cannot show this window")
        return
    left, right, notes = st.columns(3)
    left.image(tile, caption="the window, as the model sees it", width="stretch", clamp=True)
    right.image(overlay_heatmap(tile, exp.heatmap, 0.5), width="stretch",
                caption=f"Grad-CAM for {row['label']}: red where the evidence for it is (scaled per window)")
    notes.caption(f"The surest of {int(row['windows'])} overlapping window(s) of this class.")
    verdict = judge(tile, float(row["typicality"]) if pd.notna(row["typicality"]) else None)
    if verdict.flagged or verdict.typicality is not None:
        (notes.warning if verdict.flagged else notes.caption)(verdict.text)


def _downloads(job: ScanJob) -> None:
    files = job.outputs()
    if not files:
        return
    st.markdown("**Downloads**")
    mimes = {".csv": "text/csv", ".geojson": "application/geo+json", ".tif": "image/tiff", ".png": "image/png"}
    cols = st.columns(3)
    for i, path in enumerate(files):
        try:
            data = path.read_bytes()
        except OSError as exc:
            cols[i % 3].caption(f"{path.name}: cannot read it ({exc.strerror or exc})")
            continue
        size = f"{len(data):,} bytes" if len(data) < 1024 else f"{len(data) / 1024:,.0f} KB"
        cols[i % 3].download_button(f"{path.name} ({size})", data, file_name=path.name,
                                    mime=mimes.get(path.suffix, "application/octet-stream"), key=f"dl-{job.name}-{path.name}")
    if sum(p.stat().st_size for p in files) <= MAX_ZIP_BYTES:
        stamp = tuple((str(p), p.stat().st_mtime_ns) for p in files)  # a rerun (a click in the table) reuses it
        st.download_button("All outputs (zip)", _zip(stamp), file_name=f"{job.name}.zip", mime="application/zip",
                           key=f"dl-{job.name}-zip")


@st.cache_data(show_spinner=False, max_entries=4)
def _zip(files: tuple[tuple[str, int], ...]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, _ in files:
            zf.write(path, Path(path).name)
    return buf.getvalue()
