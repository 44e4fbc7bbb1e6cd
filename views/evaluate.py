"""Evaluate: a model on a split. Confusion matrix (click a cell for its tiles), per-class table, curves."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.data import DataSpec
from core.evaluate import EVALUATION_SPLITS, FEW_TILES, evaluate_model, load_report
from core.inference import bf16_suits
from core.precision import bf16_native
from core.seen import NothingUnseen, training_set
from core.settings import DEFAULT_TTA
from ui import appstate, figures
from ui.errors import USER_ERRORS, show_error
from ui.gallery import tile_gallery
from ui.imbalance import RARE_NOTE, imbalance_note
from ui.intervals import interval_caption, interval_text, refit_warning
from ui.loaders import data_for_config, get_model, model_choices, run_of_checkpoint
from ui.per_class import never_predicted, per_class_table
from ui.progress import progress_bar
from ui.widgets import kept, kept_selectbox

CELL_TILES = 24  # tiles of a clicked confusion-matrix cell shown, surest first

choices = model_choices()
if not choices:
    st.warning("No model yet: train one on the Train page (the shipped default model lives in checkpoints/).")
    st.stop()

top = st.columns([3, 1])
# every choice here survives a visit to another page (ui.widgets.kept)
with top[0]:
    label = kept_selectbox("Model", list(choices), "eval_model")
with top[1]:
    split = kept_selectbox("Split", list(EVALUATION_SPLITS), "eval_split")
toggles = st.columns(3)  # a row of their own: squeezed beside the selectors their labels were cut
originals_only = kept(toggles[0].toggle, "Originals only", "eval_originals", True,
                      help="Leave out the data set's augmented copies")
tta = kept(toggles[1].toggle, "Average 8 flips and turns (TTA)", "eval_tta", DEFAULT_TTA,
           help="Each tile's prediction is the mean of its 8 flips and 90-degree turns (8x the time); "
                f"the default model's registry entry says {'on' if DEFAULT_TTA else 'off'}")
path = choices[label]
run = run_of_checkpoint(path)

try:
    model = get_model(path)
except USER_ERRORS as exc:
    show_error(exc, "Cannot load the model")
    st.stop()
engine_note = getattr(model, "engine_note", "torch")  # a model cached by an older version of the app has none
st.caption(f"Forward passes: {engine_note}" + (" (bf16 runs on torch)" if engine_note.startswith("ONNX") else "") + ".")
bf16 = toggles[2].toggle("bf16 (faster)", disabled=not (bf16_native(model.device) and bf16_suits(model)),
                     help="bf16 autocast: about 2x faster where the device runs bf16 natively; a few predictions in "
                          "a thousand may change. Off: fp32, the reference figures. Not offered for "
                          "EfficientNet-Lite, whose predictions bf16 changes.")

if model.refit:
    st.warning(refit_warning(model), icon=":material/warning:")
elif split == "val" and model.splits.get("val", {}).get("files"):
    st.warning("This model's best epoch was chosen on this validation split (and, for a shipped baseline, its "
               "recipe too): its figures here are the luckiest of the choices made on it and flatter it. The test "
               "split, or a cross-validation of its recipe (Train page; Home shows the default's), says what to "
               "expect on observations it never saw.", icon=":material/warning:")

report = None
key = (str(path), path.stat().st_mtime, split, originals_only, tta, bf16)
if run and run.eval_file.is_file() and (split, originals_only, tta, bf16) == ("val", True, False, False):
    report = load_report(run.eval_file)
    st.caption("Saved evaluation from the end of training (best checkpoint, validation split: tiles it never "
               "trained on).")
elif st.session_state.get("eval_key") == key:
    report = st.session_state["eval_report"]
else:
    config = model.config if model.config.get("data") else {"data": appstate.data_paths()}
    if DataSpec.from_mapping(config).refit:  # trained on every tile of its data: that data has no split to score on
        config = appstate.data_spec().flat()
        st.info("Scored on the data and split chosen on the Dataset page (this model's own data has no held-out "
                "split).")
    if not all(Path(p).exists() for p in config["data"]):
        config = {"data": appstate.data_paths()}
        st.info("The model's training data is not here; evaluating on the data chosen on the Dataset page, "
                "leaving out every tile the model trained on.")
    if not config["data"]:
        st.warning("Choose a data set on the Dataset page first.")
        st.stop()
    if st.button(f"Evaluate on the {split} split", type="primary"):
        try:
            data = data_for_config(config)
            report = evaluate_model(model, data, split, originals_only, tta, on_progress=progress_bar("Predicting"),
                                    bf16=bf16, unseen_by=[training_set(model, label)])
            st.session_state.update(eval_key=key, eval_report=report, eval_config=config)
        except NothingUnseen as exc:  # every tile of the split is one it trained on: no figure, and why
            st.error(f"Not scored: {exc}.", icon=":material/block:")
            st.stop()
        except USER_ERRORS as exc:
            show_error(exc, "Cannot evaluate")
            st.stop()
if report is None:
    st.stop()

base = report["majority_baseline"]
st.caption(imbalance_note(base, " on these tiles"))
intervals = report.get("intervals")
cols = st.columns(3)  # two rows of three: six across cut the labels ("Always-other base...")
for col, key, label in ((cols[0], "macro_f1", "Macro-F1"), (cols[1], "balanced_accuracy", "Balanced accuracy"),
                        (cols[2], "accuracy", "Accuracy")):
    delta = round(report[key] - base[key], 3) + 0.0  # + 0.0: no '-0.000'
    col.metric(label, f"{report[key]:.3f}", f"{delta:+.3f} vs baseline",
               delta_color="normal" if delta else "off")  # no green arrow for no difference (the walk)
    if intervals and intervals.get(key):
        col.caption(f"95% interval {interval_text(intervals[key])}")
cols = st.columns(3)
cols[0].metric(f"Always-{base['class']} baseline accuracy", f"{base['accuracy']:.3f}",
               help="Accuracy of answering the majority class every time")
cols[1].metric("Top-2 accuracy", f"{report['top2_accuracy']:.3f}" if report.get("top2_accuracy") else "–")
if intervals and intervals.get("top2_accuracy"):
    cols[1].caption(f"95% interval {interval_text(intervals['top2_accuracy'])}")
cal = report.get("calibration", {})
calibrated = abs(float(cal.get("temperature", 1)) - 1.0) > 1e-9  # a fitted temperature is never exactly 1
cols[2].metric("ECE (calibrated)" if calibrated else "ECE (not calibrated)", f"{cal.get('ece_calibrated', 0):.3f}",
               help=f"temperature {cal.get('temperature', 1):.2f}; uncalibrated ECE "
                    f"{cal.get('ece_uncalibrated', 0):.3f}. The reliability diagram is below.")
if intervals and intervals.get("ece_calibrated"):
    cols[2].caption(f"95% interval {interval_text(intervals['ece_calibrated'])}")
st.caption(f"{report['n']:,} tiles · split {report['split']} · "
           f"{'originals only' if report['originals_only'] else 'all files'} · TTA {'on' if report['tta'] else 'off'}"
           f" · {report.get('precision', 'fp32')}"
           f" · {report['data']['split_method']}")
excluded = report.get("excluded")  # the tiles of the split it trained on, left out (core.seen)
if excluded and excluded.get("unknown"):
    st.warning(excluded["sentence"], icon=":material/warning:")
elif excluded and excluded.get("excluded"):
    st.info(excluded["sentence"], icon=":material/filter_alt:")
elif excluded:
    st.caption(excluded["sentence"])
if report.get("tiles_from"):
    st.caption(f"Scored on {report['tiles_from']} (tile-set fingerprint `{report.get('tiles_digest', '-')}`: two "
               "reports with the same fingerprint scored exactly the same tiles).")

# the matrix, then the per-class table full width under it: beside the matrix, the table's F1 and support were cut
left, right = st.container(), st.container()
with left:
    if "eval_normalize" not in st.session_state:
        st.session_state["eval_normalize"] = True
    normalize = st.toggle("Row-normalised (recall on the diagonal)", key="eval_normalize")
    event = st.plotly_chart(figures.confusion_matrix(report["confusion"], report["class_names"], normalize),
                            on_select="rerun", selection_mode="points", key="cm", width="stretch")
with right:
    st.markdown("**Per class**")
    st.dataframe(per_class_table(report["per_class"], report.get("confusion"), intervals), width="stretch")
    st.caption(interval_caption(intervals))
    absent = [c["class"] for c in report["per_class"] if c["support"] == 0]
    if absent:
        st.caption(f"This split has no tiles of {', '.join(absent)}: no recall or F1 for them, and the macro "
                   "figures average over the other classes.")
    unanswered = never_predicted(report["per_class"], report.get("confusion"))
    if unanswered:
        st.caption(f"The model never answered {', '.join(unanswered)}: their precision is undefined (n/a), not 0.")
    few = report.get("few_tiles") or []
    st.caption(RARE_NOTE + (f" On these tiles, every class with fewer than {FEW_TILES} tiles moves that way: "
                            f"{', '.join(few)}." if few else ""))
    if report.get("confused_pairs"):
        st.markdown("**Most confused**")
        st.dataframe(pd.DataFrame(report["confused_pairs"]).head(6), hide_index=True, width="stretch",
                     column_config={"fraction_of_true": st.column_config.NumberColumn("share of true", format="%.2f")})

points = (event or {}).get("selection", {}).get("points", []) if event else []
names = report["class_names"]
picked = (names.index(points[0]["y"]), names.index(points[0]["x"])) if points else None
st.subheader("Tiles in a cell")
c1, c2 = st.columns(2)
true_cls = c1.selectbox("True class", names, index=picked[0] if picked else 0)
pred_cls = c2.selectbox("Predicted class", names, index=picked[1] if picked else 1)


def _tiles(config: dict, items: list[dict]) -> tuple[list, list[dict]]:
    """The tiles of report rows, read from the data the model was evaluated on (memory-mapped: instant), and
    the rows found (kept in step with the images)."""
    data = data_for_config(config)
    by_key = {(r.source, r.path): r for r in data.records}
    found = [p for p in items if (p["source"], p["path"]) in by_key]
    return list(data.tiles([by_key[(p["source"], p["path"])] for p in found])), found


cell = [p for p in report["predictions"] if p["true"] == true_cls and p["pred"] == pred_cls]
cell.sort(key=lambda p: -max(p["probs"]))
if not cell:
    st.caption(f"No tile is {true_cls} and predicted {pred_cls} in this split.")
else:
    which = (f"the {CELL_TILES} surest are shown" if len(cell) > CELL_TILES else
             "it is shown" if len(cell) == 1 else "all are shown")
    st.caption(f"{len(cell)} tile{'s are' if len(cell) > 1 else ' is'} {true_cls} and predicted {pred_cls}; "
               f"{which}, each with its full file name (the copy button beside it copies it).")
config = st.session_state.get("eval_config") or (run.config() if run else model.config)
if cell and config.get("data"):
    try:
        tile_gallery(*_tiles(config, cell[:CELL_TILES]))
    except USER_ERRORS as exc:
        show_error(exc, "Cannot show tiles")

curves = report.get("curves", {})
if curves:
    a, b = st.columns(2)
    a.plotly_chart(figures.one_vs_rest_curves(curves, "pr"), width="stretch")
    b.plotly_chart(figures.one_vs_rest_curves(curves, "roc"), width="stretch")
    if curves.get("skipped"):
        st.caption("No curve for: " + "; ".join(f"{k} ({v})" for k, v in curves["skipped"].items()))

if cal.get("reliability_calibrated"):
    st.subheader("Calibration")
    a, b = st.columns([3, 2])
    a.plotly_chart(figures.reliability(cal), width="stretch")
    fitted_on = ("the cross-validation's out-of-fold predictions" if model.refit
                 else "the validation split at the end of training")
    b.markdown(
        (f"Temperature scaling divides the logits by **T = {cal.get('temperature', 1):.2f}**, fitted on {fitted_on}. "
         if calibrated else "**This model is not calibrated** (T = 1): no temperature was fitted, because its run "
         "did not complete (a cancelled or stopped run keeps its weights but never reached the end-of-training "
         "calibration). ") +
        "A point below the diagonal is over-confident: the model said that sure, and was right less often. "
        "Expected calibration error: " +
        (f"**{cal.get('ece_uncalibrated', 0):.3f}** before, **{cal.get('ece_calibrated', 0):.3f}** after."
         if calibrated else f"**{cal.get('ece_uncalibrated', 0):.3f}**."))
    b.caption("Marker size follows the number of tiles in the bin; a bin of a few tiles says little. " +
              ("The temperature was fitted on the cross-validation's out-of-fold predictions, which cover every "
               "named tile of its data: judge it here only on tiles from observations outside that data."
               if model.refit else
               "On the validation split the temperature was fitted on these very tiles: judge it on the test split."))

st.subheader("Top losses: wrong and sure")
losses = report.get("top_losses", [])
if losses and config.get("data"):
    try:
        tile_gallery(*_tiles(config, losses))
    except USER_ERRORS as exc:
        show_error(exc, "Cannot show tiles")
elif not losses:
    st.write("No misclassified tiles.")
