"""Explain: upload tiles (or pick one from the data set); see the predicted class and a Grad-CAM overlay.

Cold start, in order: the uploader; the answers from the model's verified ONNX twin (ONNX Runtime, no torch import:
under a second); then torch, the model and the CAM library load, and the Grad-CAM maps follow. A model without a
usable twin answers on torch, loaded first."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.classes import CLASS_NAMES
from core.imageio import IMAGE_SUFFIXES, TILE_SIZE, decode_gray
from core.settings import DEFAULT_TTA, ENGINE_WARNING

MAX_FILES = 24

# Cold start: the uploader comes first, before torch, the model and the CAM library are imported or loaded.
uploads = st.file_uploader("Upload tiles (JPEG, PNG, TIFF, BMP, GIF or WebP up to 64 MB each; colour images are "
                           "converted to grayscale)", type=[s.lstrip(".") for s in IMAGE_SUFFIXES], accept_multiple_files=True)
items: list[tuple[str, bytes]] = [(u.name, u.getvalue()) for u in uploads or []]
if len(items) > MAX_FILES:
    st.warning(f"{len(items)} files uploaded: showing the first {MAX_FILES}.")
    items = items[:MAX_FILES]

from ui import appstate, figures  # noqa: E402 - after the uploader, see above
from ui.errors import USER_ERRORS, show_error  # noqa: E402
from ui.loaders import get_data, get_model, get_twin, require_model_choices  # noqa: E402
from ui.uploads import unique_names  # noqa: E402
from ui.widgets import kept, kept_selectbox  # noqa: E402

picked = None  # a tile picked from the data set: the model may have trained on it (said below)
with st.expander("…or pick a tile from the data set"):
    paths = appstate.data_paths()
    if not paths:
        st.write("No data set chosen (Dataset page).")
    elif st.toggle("Browse the data set", key="browse"):
        c1, c2 = st.columns(2)
        cls = c1.selectbox("Class", CLASS_NAMES, key="pick_class")
        try:
            data = get_data(appstate.data_spec())
            records = [r for r in data.records if r.label == CLASS_NAMES.index(cls) and r.is_original]
            if records:
                i = c2.number_input(f"Tile (of {len(records)})", 1, len(records), 1) - 1
                buf = io.BytesIO()
                Image.fromarray(data.tiles([records[i]])[0]).save(buf, format="PNG")
                if st.checkbox("Explain this tile", key="use_pick"):
                    items.insert(0, (f"{records[i].name} (labelled {cls})", buf.getvalue()))
                    picked = records[i]
        except USER_ERRORS as exc:
            show_error(exc, "Cannot read the data set")

# Cold start: the first prediction is drawn before torch (with a twin), pytorch-grad-cam and the scikit-learn it
# imports are loaded, and before the model's frozen trace is made (`_warm_up`, after the first answers).
from core.dihedral import VIEW_NAMES  # noqa: E402
from core.predict import Served, predict_bytes  # noqa: E402
from core.tiling import legend_strip, render_class_map  # noqa: E402

choices = require_model_choices()

with st.sidebar:
    st.header("Model and explanation")
    label = kept_selectbox("Model", list(choices), "explain_model")  # kept across pages, as Evaluate's is
    method_slot = st.empty()  # filled once the CAM library is loaded, below
    method_slot.caption("Grad-CAM method: offered once a tile is classified (the CAM library and torch load after "
                        "the first answers).")
    target_name = st.selectbox("Explain class", ["predicted class", *CLASS_NAMES])
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05)
    aug_smooth = st.checkbox("Aug smooth", help="Average the map over flipped and scaled views (slower, steadier)")
    eigen_smooth = st.checkbox("Eigen smooth", help="Keep the first principal component of the activations")
    stride = st.slider("Window stride for large images (px)", 57, TILE_SIZE, TILE_SIZE, 10)
    tta = kept(st.toggle, "Average 8 flips and turns (TTA)", "explain_tta", DEFAULT_TTA,
               valid=lambda v: isinstance(v, bool),  # kept when leaving the page and coming back
               help="The prediction is the mean of the tile's 8 flips and 90-degree turns (Mars has no 'up'): "
                         "8x the compute. The default model's registry entry says "
                         f"{'on' if DEFAULT_TTA else 'off'} (Home says why). Grad-CAM always explains the tile as "
                         "uploaded.")

checkpoint = choices[label]
model = None  # the torch model: Grad-CAM's, loaded after the answers when a twin gives them
try:
    served: Served | None
    served, engine_note = get_twin(checkpoint)  # no torch import
    if served is None:  # no usable twin: torch answers, so it loads first (the note says why)
        served = model = get_model(checkpoint)
        engine_note = getattr(model, "engine_note", engine_note)
except USER_ERRORS as exc:
    show_error(exc, "Cannot load the model")
    st.stop()
st.sidebar.caption(f"Predictions: {engine_note}; Grad-CAM: torch" +
                   (", loaded after the first answers." if model is None else ".") +
                   (f" {ENGINE_WARNING}." if ENGINE_WARNING else ""))
seen_slot = st.empty()  # whether the model trained on a tile picked from the data set: said once torch has loaded
target = None if target_name == "predicted class" else CLASS_NAMES.index(target_name)
st.caption(f"Model: **{label}** · {served.arch}, input {served.image_size}px, calibration "
           f"temperature {served.temperature:.2f}. "
           "Probabilities are calibrated; a HiRISE tile is 227x227 grayscale, other images are converted and, "
           "when larger than a tile, classified window by window.")
model_key = f"{checkpoint}:{checkpoint.stat().st_mtime}"


@st.cache_data(show_spinner=False, max_entries=64)
def _predict(model_key: str, engine: str, digest: str, name: str, data: bytes, stride: int, tta: bool):
    return predict_bytes(served, data, name, top_k=3, stride=stride, tta=tta)


shown = []  # (name, digest, prediction, the CAM column, the probabilities column): their CAMs follow
first_name: dict[str, str] = {}  # content digest -> the name it was first shown under
items = unique_names(items)
class_legend = legend_strip(list(served.class_names), 900)  # under every class map: drawn once, a few ms
for name, payload in items:
    st.divider()
    digest = hashlib.sha1(payload).hexdigest()
    if digest in first_name:
        st.caption(f"{name}: the same image as {first_name[digest]}, shown above.")
        continue
    first_name[digest] = name
    try:
        with st.spinner(f"Classifying {name}…"):
            pred = _predict(model_key, engine_note, digest, name, payload, stride, tta)
    except USER_ERRORS as exc:
        show_error(exc, "" if str(exc).startswith(name) else name)  # decoder messages already name the file
        continue
    whole = pred.class_map is not None
    windows = pred.class_map.classes.size if whole else 1
    st.markdown(f"### {name}\n" + (f"Whole image, mean over its {windows:,} windows: **{pred.label}** "
                                    f"({pred.confidence:.1%})" if whole else
                                    f"Predicted **{pred.label}** ({pred.confidence:.1%})") +
                (f" · explaining **{CLASS_NAMES[target]}**" if target is not None and target != pred.index else ""))
    if pred.ood is not None:  # the out-of-distribution verdict, as core.ood.judge worded it
        text = pred.ood.text.replace("python -m core.ood CHECKPOINT", f"python -m core.ood {checkpoint}")
        (st.warning if pred.ood.flagged else st.caption)(text, **({"icon": ":material/help:"} if pred.ood.flagged
                                                                  else {}))
    for note in pred.notes:
        st.caption(f"ℹ️ {note}")
    cols = st.columns([1, 1, 1.3])
    cols[0].image(pred.tile, width="stretch", clamp=True,
                  caption=f"the window surest of {pred.label}, as the model sees it" if whole
                  else "tile (as the model sees it)")
    cols[2].plotly_chart(figures.probability_bars([pred.probabilities[c] for c in served.class_names],
                                                  served.class_names, pred.index), width="stretch", key=f"probs-{digest}")
    if pred.tta:
        cols[2].caption("Probabilities: the mean of the 8 flips' and turns' logits (TTA). The Grad-CAM explains the "
                        "tile as uploaded." if not whole else "Each window's probabilities: the mean of its 8 flips "
                        "and turns (TTA). The Grad-CAM explains the window as it lies in the image.")
    if pred.view_probabilities is not None:  # full width: in the probabilities' column it was cut at 1400 px
        with st.expander("The 8 views' own probabilities (their mean logits make the prediction above)"):
            st.dataframe(pd.DataFrame(pred.view_probabilities, index=list(VIEW_NAMES),
                                      columns=list(served.class_names))
                         .style.format(lambda p: "<0.1%" if p < 0.001 else f"{p:.1%}"), width="stretch")
    if pred.class_map is not None:
        # decoded again rather than kept in the cached prediction: a large image would pin up to 64 MB there
        gray, _ = decode_gray(payload, name)
        st.image(render_class_map(gray, pred.class_map), width="stretch",
                 caption="Class map: each window coloured by its predicted class (other left uncoloured); the CAM "
                         "above explains the window surest of the predicted class")
        st.image(class_legend, width="stretch")
    shown.append((name, digest, pred, cols[1], cols[2]))

if not items:
    st.info("Upload one or more tiles to classify and explain them.")
    st.stop()  # torch and the CAM library load after the first answers, not now: an upload would wait for them
if not shown:
    st.stop()  # nothing could be read: each file said why above
if model is None:  # the answers came from the twin: now torch, for Grad-CAM
    try:
        with shown[0][3], st.spinner("Loading torch and the model for Grad-CAM (the answers came from ONNX Runtime; "
                                     "the maps follow)…"):
            model = get_model(checkpoint)
    except USER_ERRORS as exc:
        shown[0][3].error(f"No Grad-CAM: cannot load the model with torch: {exc}")
        st.stop()
if picked is not None:
    from core.seen import training_set
    try:
        seen = training_set(model, label)
        if seen.trained_on(picked):
            seen_slot.warning(f"{label} trained on {picked.name} ({seen.basis}): its answer shows how it fits its "
                              "training tiles, not how it does on observations it never saw.", icon=":material/school:")
    except USER_ERRORS:
        pass  # its data is not on this machine: nothing to say about this tile

from core.explain import CAM_METHODS, PERTURBATION_METHODS, colour_scale, explain, overlay_heatmap  # noqa: E402 - after the answers, see above

with method_slot:
    method = kept_selectbox(
        "Method", list(CAM_METHODS), "explain_method",
        help="Gradient-based methods take tens of milliseconds. AblationCAM runs the layers above the target once per "
        "channel (about half a second); ScoreCAM runs the whole model once per channel: seconds for the ResNets, "
        "about a minute on this project's 2-core CPU for EfficientNet-Lite (1,280 channels)")


@st.cache_data(show_spinner=False, max_entries=128)
def _explain(model_key: str, digest: str, _tile: np.ndarray, method: str, target: int | None, aug: bool, eig: bool):
    return explain(model, _tile, method, target, aug, eig)


slow = (f" It runs {PERTURBATION_METHODS[method]} once per channel of the layer" + (", for each smoothing view" if aug_smooth else "")
        + ": a minute or more on a CPU.") if method in PERTURBATION_METHODS else ""
for number, (name, digest, pred, cam_col, side_col) in enumerate(shown, 1):
    of_n = f" (tile {number} of {len(shown)})" if len(shown) > 1 else ""
    try:
        with cam_col, st.spinner(f"{method} on {name}{of_n}…{slow}"):
            exp = _explain(model_key, f"{digest}:{stride}", pred.tile, method, target, aug_smooth, eigen_smooth)
    except USER_ERRORS as exc:
        cam_col.error(f"{name}: no {method} map: {exc}")
        continue
    overlay = overlay_heatmap(pred.tile, exp.heatmap, alpha)
    cam_col.image(overlay, caption=f"{exp.method} on {exp.layer} for {exp.target_name}", width="stretch")
    cam_col.image(colour_scale(), width="stretch")
    cam_col.caption(f"Colour scale: blue 0, red 1: where {exp.method} places this tile's evidence for "
                    f"{exp.target_name}, scaled per tile (red is where, not how strong); the map is "
                    "upsampled from the layer's coarse grid" +
                    (f" (the model gives {exp.target_name} {pred.probabilities[exp.target_name]:.1%})"
                     if exp.target != pred.index else "") + ".")
    if exp.keep_top_confidence is not None:
        on = "the window shown" if pred.class_map is not None else "the tile"
        side_col.caption(f"Faithfulness: {exp.target_name} confidence {exp.confidence:.0%} on {on}, "
                         f"{exp.keep_top_confidence:.0%} keeping only the hottest 20%, {exp.remove_top_confidence:.0%} "
                         f"with it removed ({exp.seconds * 1000:.0f} ms).")
        if exp.keep_top_confidence < 0.5 * exp.confidence and exp.remove_top_confidence > 0.5 * exp.confidence:
            cam_col.warning(f"This map is not faithful here: the hottest 20% alone keeps {exp.keep_top_confidence:.0%}"
                            f" of {exp.target_name}, and removing it leaves {exp.remove_top_confidence:.0%}. The "
                            "model's evidence is spread over the tile; read the colours as a rough hint at most.",
                            icon=":material/help:")
    buf = io.BytesIO()
    Image.fromarray(overlay).save(buf, format="PNG")
    side_col.download_button("Download overlay (PNG)", buf.getvalue(), file_name=f"{name.rsplit('.', 1)[0]}-{method}-{exp.target_name.replace(' ', '_')}.png",
                             mime="image/png", key=f"dl-{digest}")


@st.cache_resource(show_spinner="Preparing the model for fast predictions (once)…", max_entries=4)
def _warm_up(model_key: str) -> bool:
    """After the first answers: the frozen trace that halves every later torch prediction (`bench_inference`; not
    needed when the twin answers), and one Grad-CAM, whose one-time allocations (about 30 MiB,
    bench/bench_memory.py) then happen now, so memory stays flat over a long session."""
    from core.inference import prepare_trace
    if model.onnx is None:
        prepare_trace(model)
    explain(model, np.full((TILE_SIZE, TILE_SIZE), 128, np.uint8))
    return True


_warm_up(model_key)
