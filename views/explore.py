"""Explore: a 2-D map of every tile as the model sees it, and a review of labels that look wrong (issue 16)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core.classes import CLASS_NAMES, class_hex
from core.data.overrides import Override, OverridesError, read_overrides, update_overrides
from core.data.records import parse_name
from core.explore.embed import DEFAULT_METHOD, METHODS, cache_state, embed
from core.explore.features import DEFAULT_EMBED_SIZE, PART_TILES, get_features, measure_rate
from core.explore.labels import review_labels
from core.registry import RegistryError, current_entry, read_registry
from core.settings import DEFAULTS_REGISTRY, LABEL_OVERRIDES_FILE, LABEL_REJECTIONS_FILE
from ui import appstate
from ui.errors import USER_ERRORS, show_error
from ui.gallery import tile_gallery
from ui.imbalance import RARE_NOTE
from ui.intervals import interval_text
from ui.loaders import get_data, get_model, require_model_choices
from ui.progress import progress_bar
from ui.widgets import kept_selectbox


def default_input_size() -> str:
    """The registry's default model's input size, as the help text says it (no model loaded for a help text)."""
    try:
        entry = current_entry(read_registry(DEFAULTS_REGISTRY))
    except RegistryError:
        entry = None
    return f"{entry['image_size']} px" if entry and entry.get("image_size") else "its own size"


COLOURS = {"label": "label", "prediction": "predicted", "split": "split", "confidence": "confidence",
           "observation": "observation", "correct": "correct"}
MAX_SHOWN = 24
SIZES = (DEFAULT_EMBED_SIZE, 224, 192, 160, 128)
REVIEW_PAGE = 12

paths = appstate.data_paths()
if not paths:
    st.info("No data set chosen yet: pick one on the Dataset page.")
    st.page_link("views/dataset.py", label="Choose data", icon=":material/folder_open:")
    st.stop()
choices = require_model_choices()

with st.sidebar:
    st.header("Map")
    model_label = kept_selectbox("Model", list(choices), "explore_model")
    method = kept_selectbox("Reduction", list(METHODS), "explore_method", default=DEFAULT_METHOD,
                          help="UMAP (default) keeps neighbourhoods best for its time; t-SNE is slower; PCA is "
                               "instant but mixes the classes (docs/explore.md)")
    size = kept_selectbox("Feature pass input", list(SIZES), "explore_size", format_func=lambda v: "the model's own" if v == 0 else f"{v} px",
                        help=f"The model's own input size ({default_input_size()} for the default model) by default. "
                             "Smaller is faster on a CPU but the features lose much of what they know "
                             "(docs/explore.md)")
    colour = kept_selectbox("Colour by", list(COLOURS), "explore_colour")

try:
    data = get_data(appstate.data_spec())
    model = get_model(choices[model_label])
except USER_ERRORS as exc:
    show_error(exc, "Cannot load the data or the model")
    st.stop()

side = size or model.image_size
st.caption(f"{len(data.records):,} tiles from {', '.join(s.name for s in data.sources)} · {model.arch}, features "
           f"read at {side}px" + ("" if side == model.image_size else
                                  f" (its own input is {model.image_size}px: the predictions shown are the model's at "
                                  f"this {'smaller' if side < model.image_size else 'larger'} size)") + ". " + RARE_NOTE)
if data.overrides is not None:
    st.caption(f"Label overrides: {data.overrides.describe()}.")

map_tab, review_tab = st.tabs(["Embedding map", "Label review"], key="explore_tab")  # a key keeps the tab on rerun
run_key = (str(choices[model_label]), tuple(paths), size)


#: The reduction after the feature pass, per tile, measured on the 2-core CPU this was written on (13,000 tiles:
#: UMAP about 90 s, t-SNE about 120 s, PCA under a second): the map's estimate left it out and said 54 s for 141.
REDUCTION_SECONDS_PER_TILE = {"umap": 0.007, "tsne": 0.009, "pca": 0.0001}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@st.cache_data(show_spinner="Timing the feature pass on a few tiles…", max_entries=16)
def _feature_rate(model_path: str, size: int) -> float:
    """Measured once per model and size (a second or two); 0 when it cannot be measured."""
    try:
        return measure_rate(model, data, size)
    except USER_ERRORS:
        return 0.0


def _labelled(emb, data):
    """The map's table with the labels of the data as loaded now (overrides accepted meanwhile included); kept
    for the session until the map or the data changes (a selection reruns the page)."""
    made_from = st.session_state.get("explore_table_of", (None, None))
    if made_from[0] is not emb or made_from[1] is not data:
        df = emb.table.copy()
        label_now = {(r.source, r.path): r.label for r in data.records}
        df["label"] = [CLASS_NAMES[label_now.get((r.source, r.path), r.label)] for r in emb.features.records]
        df["correct"] = df["label"] == df["predicted"]
        df["row"] = np.arange(len(df))
        st.session_state["explore_table_of"], st.session_state["explore_table"] = (emb, data), df
    return st.session_state["explore_table"]


def _features():
    return get_features(model, data, None, size, on_progress=progress_bar("Model features"))


with map_tab:
    key = (*run_key, method)
    emb = st.session_state.get("explore_map") if st.session_state.get("explore_map_key") == key else None
    cached, done = cache_state(model, data, method, size) if emb is None else (False, 0)  # one key per rerun
    intro = st.empty()  # what the map costs, and the button: cleared once the map is drawn
    clicked = False
    if emb is None and not cached:
        with intro.container():
            todo = len(data.records) - done
            rate = _feature_rate(str(choices[model_label]), size)
            reduction = REDUCTION_SECONDS_PER_TILE.get(method, 0.0) * len(data.records)
            cost = (f"about {_duration(todo / rate + reduction)} at {side}px: the features at {rate:.0f} tiles/s "
                    f"measured on this machine just now, then the {method.upper()} reduction, about "
                    f"{_duration(reduction)}" if rate else "a time it could not measure")
            so_far = f" ({done:,} were done by an earlier pass that was stopped; {todo:,} are left)" if done else ""
            st.caption(f"Not drawn yet: the first map reads the features of all {len(data.records):,} tiles once"
                       f"{so_far} ({cost}; less with more cores or a GPU), with a progress bar; then it is cached "
                       "and redrawn in seconds. Leaving the page stops the pass; drawn again, it goes on from where "
                       f"it stood (finished work is kept every {PART_TILES:,} tiles).")
            clicked = st.button("Draw the map", type="primary",
                                help="Cold: a feature pass over every tile (minutes on a CPU, once); later: read from "
                                     "the cache in seconds, without asking")
    if emb is None and (cached or clicked):
        intro.empty()
        try:
            emb = embed(model, data, method, size, on_progress=progress_bar("Embedding"))
            st.session_state["explore_map_key"], st.session_state["explore_map"] = key, emb
        except USER_ERRORS as exc:
            show_error(exc, "Cannot draw the map")
    if emb is not None:
        df = _labelled(emb, data)
        column = COLOURS[colour]
        fig = px.scatter(df, x="x", y="y", color=column, custom_data=["row"], render_mode="webgl",
                         hover_data={"file": True, "label": True, "predicted": True, "confidence": ":.2f",
                                     "split": True, "x": False, "y": False, "row": False},
                         category_orders={"label": list(CLASS_NAMES), "predicted": list(CLASS_NAMES)},
                         color_discrete_map={name: class_hex(name) for name in CLASS_NAMES},
                         color_continuous_scale="Viridis", height=650)
        fig.update_traces(marker={"size": 4, "opacity": 0.7})
        fig.update_layout(showlegend=colour != "observation", legend={"itemsizing": "constant"},
                          xaxis={"visible": False}, yaxis={"visible": False}, margin={"l": 0, "r": 0, "t": 10, "b": 0})
        st.caption(f"{len(df):,} tiles · {emb.method.upper()} of {emb.features.features.shape[1]}-d features"
                   f" · features {'cached' if emb.features.from_cache else f'{emb.features.seconds:.0f} s'}, map "
                   f"{'cached' if emb.from_cache else f'{emb.seconds:.0f} s'}. Box- or lasso-select points, or click one.")
        event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key="explore_plot",
                                width="stretch")
        rows = sorted({int(p["customdata"][0]) for p in (event.selection.points if event else [])
                       if p.get("customdata")})
        if rows:
            shown = rows[:MAX_SHOWN]
            st.subheader(f"{len(rows):,} selected" + (f" (first {MAX_SHOWN} shown)" if len(rows) > MAX_SHOWN else ""))
            recs = [emb.features.records[i] for i in shown]
            items = [{"name": r.name, "true": df["label"].iat[i], "pred": df["predicted"].iat[i],
                      "prob": float(df["confidence"].iat[i])} for r, i in zip(recs, shown, strict=True)]
            tile_gallery(list(data.tiles(recs)), items)
            with st.expander("Selected tiles as a table"):
                st.dataframe(df.iloc[rows].drop(columns=["x", "y", "row"]), hide_index=True)
            pick = shown[0] if len(shown) == 1 else st.selectbox(
                "Grad-CAM of", shown, format_func=lambda i: f"{df['file'].iat[i]} ({df['label'].iat[i]})")
            if len(shown) == 1 or st.button("Grad-CAM"):
                from core.explain import explain  # only a click pays for importing grad-cam
                try:
                    with st.spinner("Grad-CAM…"):
                        tile = data.tiles([emb.features.records[pick]])[0]
                        exp = explain(model, tile, "gradcam")
                    c1, c2 = st.columns(2)
                    c1.image(tile, caption=df["file"].iat[pick], width="stretch")
                    c2.image(exp.overlay, width="stretch",
                             caption=f"Grad-CAM for {exp.target_name} ({exp.confidence:.0%} at {model.image_size}px)")
                except USER_ERRORS as exc:
                    show_error(exc, "Grad-CAM failed")

def _decisions(decided: dict[str, Override], path, what: str, label_column: str) -> None:
    """The label review's decisions kept in `path`, listed, each undoable (an undone rejection is asked again)."""
    if not decided:
        return
    with st.expander(f"{len(decided)} {what} in {path}", key=f"decisions-{path.name}"):  # stays open on a rerun
        st.dataframe(pd.DataFrame([{"file": o.file, label_column: CLASS_NAMES[o.label], "previous": o.previous,
                                    "note": o.note} for o in decided.values()]), hide_index=True)
        undo = st.multiselect(f"Undo {what}", list(decided), key=f"undo-{path.name}")
        # a landmark's copies were decided together (Accept, Reject): they are undone together, never split
        landmarks = {parse_name(f).landmark for f in undo}
        together = [f for f in decided if parse_name(f).landmark in landmarks]
        if len(together) > len(undo):
            st.caption(f"Undoing the whole landmark{'s' if len(landmarks) > 1 else ''}: {len(together)} tiles "
                       f"({', '.join(together[:6])}{', ...' if len(together) > 6 else ''}), decided together.")
        if undo and st.button(f"Undo the {len(together)} selected", key=f"undo-button-{path.name}"):
            try:
                update_overrides(remove=together, path=path)
                if path == LABEL_OVERRIDES_FILE and st.session_state.pop("explore_review", None) is not None:
                    # an undone override changes labels back: the review read them before
                    st.session_state["explore_review_note"] = (
                        f"Undid {len(together)} decision(s). The review read the labels before that: run it again "
                        "to see the undone tiles with their labels as they are now.")
                st.rerun()
            except (OverridesError, OSError) as exc:
                show_error(exc, "Not saved")


with review_tab:
    st.markdown("Tiles whose label the rest of the data argues against: a linear head on the model's features, "
                "fitted on folds grouped by observation, gives each tile out-of-sample probabilities; "
                "[cleanlab](https://docs.cleanlab.ai) flags the labels they contradict, surest first. Accepted "
                f"corrections go to `{LABEL_OVERRIDES_FILE.name}` (never into the data's own label files) and apply "
                "whenever the data is loaded.")
    try:
        current = read_overrides(LABEL_OVERRIDES_FILE)
        rejected = read_overrides(LABEL_REJECTIONS_FILE)
    except OverridesError as exc:
        show_error(exc, "A label-review file is malformed; fix or remove it (nothing is written to it meanwhile)")
        st.stop()
    if note := st.session_state.pop("explore_review_note", None):
        st.info(note, icon=":material/undo:")
    if st.button("Run the label review", help="Uses the cached features (computed first if needed)"):
        try:
            feats = _features()
            st.session_state["explore_review"] = (run_key, review_labels(
                feats.records, feats.features, on_progress=progress_bar("Label review")))
        except USER_ERRORS as exc:
            show_error(exc, "Label review failed")
    stored = st.session_state.get("explore_review")
    if stored and stored[0] == run_key:
        review = stored[1]
        todo = review.suspects[~review.suspects["file"].isin(set(rejected) | set(current))]
        flagged = todo.groupby("landmark", sort=False)["file"].apply(list).to_dict()
        heads = todo.drop_duplicates("landmark")  # one decision per landmark: its best-ranked flagged copy
        st.write(f"**{len(review.suspects):,}** suspect tiles among {len(data.records):,} ({review.folds} folds); "
                 f"{len(todo):,} awaiting a decision, in {len(heads):,} landmarks (an original and its augmented "
                 f"copies are decided together). Ranked by the out-of-sample probability of the given label, lowest "
                 f"(surest finding) first. The heads that judge the labels score macro-F1 "
                 f"{review.judge_macro_f1:.3f}"
                 + (f" ({interval_text(review.judge_interval)}, 95% interval over observations)"
                    if review.judge_interval else "") + " out of sample"
                 + (" on the classes they could judge." if review.unjudged else "."))
        if review.unjudged:
            st.info(review.unjudged_text(), icon=":material/info:")
        may_accept = review.trustworthy
        if not review.trustworthy:
            st.warning(f"These features are too weak to judge labels: heads on them reach a macro-F1 of only "
                       f"{review.judge_macro_f1:.2f}, so they contradict good labels everywhere and most suspects "
                       "are noise. Review with a better model (Model, in the sidebar) before accepting any.",
                       icon=":material/warning:")
            may_accept = st.checkbox("Let me accept suggestions anyway", key="accept_weak")
        st.download_button("Download suspects (CSV)", review.suspects.to_csv(index=False), "suspects.csv", "text/csv")
        start = int(st.number_input("From landmark", 1, max(1, len(heads)), 1, REVIEW_PAGE)) - 1
        chunk = heads.iloc[start:start + REVIEW_PAGE]
        shown_landmarks = set(chunk["landmark"])
        members = [r for r in data.records if r.landmark in shown_landmarks]  # one pass over the data per page
        by_name = {r.name: r for r in members}
        names_of: dict[tuple[str, int], set[str]] = {}
        for r in members:
            names_of.setdefault((r.landmark, r.label), set()).add(r.name)
        for number, (_, row) in enumerate(chunk.iterrows(), start + 1):
            rec = by_name.get(row["file"])
            copies = sorted(names_of.get((row["landmark"], CLASS_NAMES.index(row["given"])), ()))
            others = [f for f in flagged[row["landmark"]] if f != row["file"]]
            c1, c2, c3 = st.columns([1, 2, 1])
            if rec is not None:
                c1.image(data.tiles([rec])[0], width="stretch")
            c2.markdown(f"**#{number}** `{row['file']}`  \ngiven **{row['given']}** (out-of-sample "
                        f"{row['p_given']:.0%}) → suggested **{row['suggested']}** ({row['p_suggested']:.0%})  \n"
                        f"{row['source']} · {row['observation'] or 'no observation'} · {row['split']}")
            if len(copies) > 1:
                c2.caption(f"Deciding for the landmark's {len(copies)} tiles labelled {row['given']}"
                           + (f"; also flagged: {', '.join(others)}" if others else "") + ".")
            if c3.button("Accept", key=f"acc-{row['file']}", type="primary", disabled=not may_accept,
                         help=None if may_accept else "The judging heads are too weak: see the warning above"):
                try:
                    update_overrides([Override(f, CLASS_NAMES.index(row["suggested"]), row["given"], "label review")
                                      for f in copies or [row["file"]]], path=LABEL_OVERRIDES_FILE)
                    st.rerun()
                except (OverridesError, OSError) as exc:
                    show_error(exc, "Not saved")
            if c3.button("Reject", key=f"rej-{row['file']}", help="Keep the given label; remembered in "
                         f"{LABEL_REJECTIONS_FILE.name}, listed below, where it can be undone"):
                note = f"suggested {row['suggested']} ({row['p_suggested']:.0%}), rejected"
                try:
                    update_overrides([Override(f, CLASS_NAMES.index(row["given"]), row["given"], note)
                                      for f in dict.fromkeys([*(copies or [row["file"]]), *others])],
                                     path=LABEL_REJECTIONS_FILE)
                    st.rerun()
                except (OverridesError, OSError) as exc:
                    show_error(exc, "Not saved")
    _decisions(current, LABEL_OVERRIDES_FILE, "accepted override(s)", "label")
    _decisions(rejected, LABEL_REJECTIONS_FILE, "rejected suggestion(s)", "kept label")
