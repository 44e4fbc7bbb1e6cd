"""Dataset: choose the data (folders or zips, merged), or download v3.2; see what it holds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.classes import CLASS_DESCRIPTIONS, CLASS_NAMES
from core.data import CONFLICT_POLICIES, SPLIT_MODES, DataSpec, read_source, summarize
from core.data.spec import FRACTION_LIMIT, FRACTION_STEP
from core.download import DEFAULT_DEST, DownloadError, download_v32
from core.models import MODELS
from core.settings import LABEL_STORE_DIR
from core.training.config import field_bounds
from ui import appstate, figures
from ui.errors import USER_ERRORS, show_error
from ui.imbalance import RARE_NOTE
from ui.loaders import get_data
from ui.progress import progress_bar


def _located(line: str) -> tuple[str | None, str]:
    """(the absolute path of a typed source, "") or (None, why it is not one): a path that is missing, too long
    for the file system or holds a NUL byte is reported, never raised."""
    try:
        path = Path(line).expanduser().resolve()
        return (str(path), "") if path.exists() else (None, "not found")
    except (OSError, ValueError) as exc:
        return None, f"not a usable path ({getattr(exc, 'strerror', None) or exc})"


def _shown(line: str, limit: int = 80) -> str:
    """A typed line as it can be shown in a message: shortened, control characters written out (NUL as \\x00)."""
    text = line if len(line) <= limit else line[:limit - 1] + "…"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text).replace("`", "'")


with st.form("sources"):
    text = st.text_area("Data sources: one folder or zip per line (official v3.2 / v3 layout, or your own tiles "
                        "with labels.csv or class-named sub-folders). Several are merged.",
                        value="\n".join(appstate.data_paths()), height=110)
    saved = st.form_submit_button("Use these sources", type="primary")
if saved:
    typed = [line.strip() for line in text.splitlines() if line.strip()]
    located = [(line, *_located(line)) for line in typed]
    bad = [(line, why) for line, path, why in located if path is None]
    paths = list(dict.fromkeys(path for _, path, _ in located if path is not None))  # each source once
    if not typed:
        st.error("Give at least one folder or zip, one per line. Nothing was changed.")
    else:
        problems = [f"`{_shown(line)}`: {why}" for line, why in bad]  # every bad line named, not the first only
        with st.spinner(f"Checking {len(paths)} source(s)…"):
            for path in paths:
                try:
                    read_source(path)  # its layout and label file; the tiles are decoded later, once
                except USER_ERRORS as exc:
                    problems.append(str(exc))
        if problems:
            st.error("Cannot use: " + " · ".join(p.rstrip(".") for p in problems) + ". Nothing was changed.")
        else:
            if len(paths) < len(typed):
                st.session_state["dataset_note"] = f"{len(typed) - len(paths)} repeated line(s) dropped: each " \
                                                   "source is read once."
            appstate.save_state(data_paths=paths)
            st.rerun()
if "dataset_note" in st.session_state:
    st.info(st.session_state.pop("dataset_note"))
if (LABEL_STORE_DIR / "labels.csv").is_file() and \
        str(LABEL_STORE_DIR.resolve()) not in {str(Path(p).resolve()) for p in appstate.data_paths()}:
    st.info(f"The tiles labelled on the Label page (`{LABEL_STORE_DIR}`) are not among the sources.")
    if st.button("Add the labelled tiles", key="ds_add_labelled"):
        appstate.save_state(data_paths=[*appstate.data_paths(), str(LABEL_STORE_DIR.resolve())])
        st.rerun()

with st.expander("Download the v3.2 zip from Zenodo (record 4002935, about 900 MB)"):
    st.write(f"Saved as `{DEFAULT_DEST / 'hirise-map-proj-v3_2.zip'}` and checked against Zenodo's MD5; "
             "the app reads it zipped.")
    if st.button("Download"):
        try:
            path = download_v32(DEFAULT_DEST, on_progress=progress_bar("Downloading"))
            appstate.save_state(data_paths=[*appstate.data_paths(), str(path)])
            st.success(f"Saved {path}")
        except DownloadError as exc:
            show_error(exc, "Download failed")

paths = appstate.data_paths()
if not paths:
    st.info("Choose a data source above, or download the v3.2 set.")
    st.stop()

remembered = appstate.data_spec()  # the last choices, on this page or another, kept across restarts
share_max = FRACTION_LIMIT - FRACTION_STEP  # validation's range [0, 1), on the sliders' grid
# Keyed widgets: an unkeyed widget whose default (the remembered choice) changes becomes a new widget, and the
# reader's next change to the old one is dropped without a word.
with st.sidebar:
    st.header("Merge and split")
    policy = st.selectbox("Label conflicts", CONFLICT_POLICIES, CONFLICT_POLICIES.index(remembered.conflict_policy),
                          key="ds_policy", help="newest version wins, first source wins, or drop conflicting tiles")
    split_mode = st.selectbox("Split", SPLIT_MODES, SPLIT_MODES.index(remembered.split_mode), key="ds_split_mode",
                              help="auto: the official split when the files carry val and test rows, else grouped "
                              "by observation")
    val_fraction = st.slider("Validation share", 0.0, share_max, min(remembered.val_fraction, share_max),
                             FRACTION_STEP, key="ds_val_fraction")
    test_fraction = st.slider("Test share", 0.0, share_max, min(remembered.test_fraction, share_max), FRACTION_STEP,
                              key="ds_test_fraction")
    seed_low, seed_high = field_bounds("split_seed")
    seed_text = st.text_input("Split seed", str(remembered.split_seed), key="ds_split_seed",
                              help=f"Which grouped split: a whole number from {seed_low} to {seed_high:,}")
    repeats = st.checkbox("Keep the split file's repeated rows", remembered.keep_split_repeats, key="ds_repeats")

try:
    seed = int(seed_text.strip())
    seed_problem = "" if seed_low <= seed <= seed_high else f"{seed} is outside {seed_low} to {seed_high:,}"
except ValueError:
    seed_problem = f"`{_shown(seed_text.strip(), 40)}` is not a whole number" if seed_text.strip() else \
        "empty: enter a whole number"
if seed_problem:
    st.error(f"Split seed: {seed_problem}. The data below keeps seed {remembered.split_seed}; nothing was changed.")
    seed = remembered.split_seed
if val_fraction + test_fraction >= FRACTION_LIMIT:
    st.error(f"Validation share {val_fraction:.2f} and test share {test_fraction:.2f} add up to "
             f"{val_fraction + test_fraction:.2f}: together they must stay under 1, leaving tiles to train on. The data "
             f"below keeps the last shares ({remembered.val_fraction:.2f} and {remembered.test_fraction:.2f}); "
             "nothing was changed.")
    val_fraction, test_fraction = remembered.val_fraction, remembered.test_fraction
elif val_fraction == 0 and test_fraction != 0 and split_mode != "official":
    st.error("Validation share 0 means a refit: training on every tile, with no split to score on (see "
             "docs/cross-validation.md). Set the test share to 0 as well, or give validation a share. The data below "
             f"keeps the last shares ({remembered.val_fraction:.2f} and {remembered.test_fraction:.2f}).")
    val_fraction, test_fraction = remembered.val_fraction, remembered.test_fraction
spec = DataSpec(tuple(paths), policy, split_mode, val_fraction, test_fraction, seed, repeats)
if spec.problem():
    st.error(spec.problem())
    st.stop()
appstate.save_data_options(spec)
try:
    data = get_data(spec)
    summary = summarize(data)
except USER_ERRORS as exc:
    show_error(exc, "Cannot read the data")
    st.stop()

st.caption("A model that always answers the majority class scores the Always- figures below on each split: read "
           "macro-F1, balanced accuracy and per-class recall, not accuracy alone.")
splits = list(summary["counts"])
cols = st.columns(len(splits) + 2)
cols[0].metric("Tiles", f"{summary['total']:,}")
cols[1].metric("Train-only tiles", f"{summary['training_only_tiles']:,}",
               help="Tiles with no observation id: they cannot be split by observation, so they only train.")
for col, split in zip(cols[2:], splits, strict=True):
    base = summary["majority_baseline"][split]
    col.metric(f"Always-{base['class']}, {split}", f"{base['accuracy']:.1%}",
               help=f"The accuracy of a model that always answers {base['class']}, on this split's originals.")

st.subheader("Tiles per class and split")
st.plotly_chart(figures.class_counts(summary), width="stretch")
table = pd.DataFrame({f"{s} (originals)": [f"{n:,} ({o:,})" for n, o in zip(summary["counts"][s], summary["originals"][s], strict=True)]
                      for s in splits}, index=summary["classes"])
st.dataframe(table, width="stretch")
st.caption(f"Augmented copies per split: {', '.join(f'{s} {n:,}' for s, n in summary['augmented'].items())}. "
           f"Observations: {', '.join(f'{s} {n}' for s, n in summary['observations'].items())}. {RARE_NOTE}")

with st.container():
    st.subheader("Split and checks")
    st.write(f"**Split:** {summary['split_method']}")
    if summary["leakage"]:
        st.error("Leakage: " + "; ".join(summary["leakage"]) + ". Training refuses this split.")
    else:
        st.success("No observation or landmark falls on two sides.")
    if summary.get("label_overrides"):  # issue 16: corrections accepted on the Explore page
        lo = summary["label_overrides"]
        st.info(f"**Label overrides:** {len(lo['changed'])} label(s) changed by `{lo['file']}` (the data's own label "
                "files are untouched; review them on the Explore page).", icon=":material/edit_note:")
    if summary["pixel_mean"] is not None:
        norms = sorted({f"{s.imagenet_norm[0]} / {s.imagenet_norm[1]} ({name})" for name, s in MODELS.items()
                        if s.imagenet_norm})
        st.write(f"Training pixels: mean {summary['pixel_mean']:.4f}, std {summary['pixel_std']:.4f}: what a run "
                 "trained from scratch normalises with. A run from ImageNet weights keeps its weights' own: "
                 f"{'; '.join(norms)}. Each checkpoint stores the pair it was trained with.")
with st.container():
    st.subheader("Sources")
    st.dataframe(pd.DataFrame([{k: s[k] for k in ("name", "kind", "records", "missing", "split_repeats",
                                                  "unlabelled_files")} for s in summary["sources"]]),
                 hide_index=True, width="stretch")
    for s in summary["sources"]:
        if s["missing"]:
            st.warning(f"{s['name']}: {s['missing']} labelled files are missing (skipped), e.g. "
                       + ", ".join(f"`{m}`" for m in s["missing_examples"]))
for w in summary["warnings"]:
    st.warning(w)
if summary["unreadable"]:
    with st.expander(f"{len(summary['unreadable'])} unreadable tiles (skipped)"):
        st.dataframe(pd.DataFrame(summary["unreadable"]), hide_index=True)
if summary["merge"]:
    with st.expander("Merge report (duplicates and label conflicts)"):
        st.code("\n".join(summary["merge"]), language=None, wrap_lines=True)

st.subheader("Sample tiles")
per_class = st.slider("Tiles per class", 2, 12, 6)
rng = np.random.default_rng(0)
for label, name in enumerate(CLASS_NAMES):
    records = [r for r in data.records if r.label == label and r.is_original]
    left, right = st.columns([1, 3])
    left.markdown(f"**{name}** · {len(records):,} originals")
    left.caption(CLASS_DESCRIPTIONS[name])
    if records:
        pick = [records[i] for i in sorted(rng.choice(len(records), min(per_class, len(records)), replace=False))]
        right.image(list(data.tiles(pick)), width=110, caption=[r.name[:28] for r in pick])
