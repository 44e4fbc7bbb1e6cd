"""Label: work through a queue of windows the model is unsure of, one at a time; every answer is saved at once into
the labelled-tiles source, which trains like any other data source (docs/labelling.md)."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from core.classes import CLASS_NAMES
from core.defaults import read_registry
from core.digest import file_digest
from core.experiment import cv, jobs
from core.label.queue import MAX_BUDGET, QueueError, list_queues, make_queue, parse_budget, valid_name
from core.label.retrain import FINETUNE_EPOCHS, cv_configs, finetune_config
from core.label.store import RARE_CLASSES, LabelStore, StoreError, progress_line
from core.label.strategies import DEFAULT_STRATEGY, STRATEGIES
from core.ood import describe
from core.registry import current_entry
from core.scan.job import list_scans
from core.settings import DEFAULT_CHECKPOINT, LABEL_QUEUES_DIR, LABEL_STORE_DIR
from ui import appstate
from ui.errors import USER_ERRORS, show_error
from ui.progress import progress_bar
from ui.shortcuts import bind_keys
from ui.widgets import kept

store = LabelStore(LABEL_STORE_DIR)
queues, unreadable = list_queues(LABEL_QUEUES_DIR)

st.caption("Rank the windows of a scan or a folder by what the model needs, then label them here: keys 1-8 choose "
           "the class, s skips, u undoes. Every answer is saved at once into "
           f"`{LABEL_STORE_DIR}`, a data source like any other.")


# ---- making a queue ----------------------------------------------------------------------------------------------
def _source_choice() -> Path | None:
    scans = [j for j in list_scans() if j.status().get("state") == "completed"]
    kinds = ["A finished scan", "A file or folder"]
    kind = kept(st.radio, "Source", "lbl_source_kind", kinds[0] if scans else kinds[1], kinds, horizontal=True,
                valid=lambda v: v in kinds)
    if kind == "A finished scan":
        if not scans:
            st.info("No finished scan yet: scan observations on the Scan page, or give a file or folder.")
            return None
        job = st.selectbox("Scan", scans, format_func=lambda j: f"{j.name} ({len(j.request().get('inputs', []))} "
                           "input(s))", key="lbl_scan")
        return job.path
    typed = kept(st.text_input, "An image, or a folder of images or observations", "lbl_source_path", "")
    return Path(typed.strip()).expanduser() if typed.strip() else None


with st.expander("Make a queue", expanded=not queues):
    source = _source_choice()
    left, mid, right = st.columns([2, 1, 2])
    with left:
        strategy = kept(st.selectbox, "Strategy", "lbl_strategy", DEFAULT_STRATEGY, list(STRATEGIES),
                        valid=lambda v: v in STRATEGIES)
        st.caption(STRATEGIES[strategy].description)
    with mid:
        budget_text = kept(st.text_input, "Budget (windows)", "lbl_budget", "50",
                           help=f"how many windows to ask about: 1 to {MAX_BUDGET}")
    with right:
        name = kept(st.text_input, "Queue name", "lbl_name", f"queue-{datetime.now():%Y%m%d-%H%M}")
    if st.button("Make the queue", type="primary"):
        try:
            budget = parse_budget(budget_text)
            queue_name = valid_name(name)
            if source is None:
                raise QueueError("choose a finished scan, or give a file or folder")
            if not source.exists():
                raise QueueError(f"{source}: no such file or folder")
            made = make_queue(source, LABEL_QUEUES_DIR / queue_name, strategy, int(budget),
                              on_progress=progress_bar("Reading the source's windows"))
        except (QueueError, *USER_ERRORS) as exc:
            show_error(exc, "No queue was made")
        else:
            st.session_state["lbl_queue"] = made.name
            st.session_state["lbl_flash"] = (f"Queue {made.name}: {len(made.candidates)} windows of "
                                             f"{made.meta['windows_read']:,} read, ranked by {strategy}."
                                             + "".join(f" Note: {n}." for n in made.meta["notes"]))
            st.rerun()

for line in unreadable:
    st.warning(f"Not a usable queue: {line}")
if "lbl_flash" in st.session_state:
    st.success(st.session_state.pop("lbl_flash"))
if not queues:
    st.info("No queue yet: make one above (or `python -m core.label candidates SOURCE --out "
            f"{LABEL_QUEUES_DIR}/NAME`).")
    st.stop()

# ---- labelling ---------------------------------------------------------------------------------------------------
names = [q.name for q in queues]
if st.session_state.get("lbl_queue") not in names:
    gone = st.session_state.get("lbl_queue")
    if gone:  # its folder was deleted meanwhile: said, not silently replaced by another queue
        st.warning(f"Queue {gone} is gone (its folder was deleted or is no longer readable); showing {names[0]}.")
    st.session_state["lbl_queue"] = names[0]
queue = queues[names.index(st.selectbox("Queue", names, key="lbl_queue"))]
meta = queue.meta
st.caption(f"Ranked by **{meta['strategy']}** ({meta.get('strategy_description', '')}) from `{meta['source']}`, "
           f"{meta['windows_read']:,} windows read, by {meta['model']['name'] or 'the default model'}.")
try:
    default_digest = file_digest(DEFAULT_CHECKPOINT)[:16]
except OSError:
    default_digest = None
problems = queue.problems(CLASS_NAMES, default_digest)
if problems and problems[0].startswith("this queue was made for the classes"):
    st.error(problems[0] + ". Nothing can be labelled from it.")
    st.stop()
for note in problems:
    st.info(note)
store_problem = store.problem()
if store_problem:
    st.error(f"The labelled tiles cannot take labels now: {store_problem}")

if "lbl_said" in st.session_state:
    said, ok = st.session_state.pop("lbl_said")
    (st.success if ok else st.error)(said)


def _label(index: int, label: str) -> None:
    c = queue.candidates[index]
    problem = queue.window_problem(index)
    if problem:
        st.session_state["lbl_said"] = (f"Not saved: {problem}.", False)
        return
    try:
        store.label(queue.name, index, label, queue.tile(index), image=c["image"], x=c["x"], y=c["y"],
                    size=c["size"], observation=c.get("observation"), original=queue.whole_image(index))
        st.session_state["lbl_said"] = (f"Saved: window {index + 1} is **{label}**.", True)
    except (QueueError, StoreError) as exc:
        st.session_state["lbl_said"] = (f"Not saved: {exc}", False)


def _skip(index: int) -> None:
    try:
        store.skip(queue.name, index)
        st.session_state["lbl_said"] = (f"Skipped window {index + 1}.", True)
    except StoreError as exc:
        st.session_state["lbl_said"] = (f"Not saved: {exc}", False)


def _undo() -> None:
    try:
        undone = store.undo(queue.name)
    except StoreError as exc:
        st.session_state["lbl_said"] = (f"Not undone: {exc}", False)
        return
    st.session_state["lbl_said"] = (("Nothing to undo in this queue.", False) if undone is None else
                                    (f"Undone: window {undone.candidate + 1} "
                                     f"({undone.label or 'skipped'}) is asked again.", True))


try:
    decided = store.decisions(queue.name)
except StoreError:
    decided = {}
done = sum(1 for (q, _) in decided if q == queue.name)
st.progress(done / max(1, len(queue.candidates)), text=progress_line(queue, store) if not store_problem else
            f"{done} of {len(queue.candidates)} decided")
waiting = [i for i in range(len(queue.candidates)) if (queue.name, i) not in decided]
disabled = bool(store_problem)

if not waiting:
    st.success(f"Every window of {queue.name} has an answer. Fine-tune below, or make another queue.")
    st.button("u · Undo the last answer", on_click=_undo, disabled=disabled, key="lbl_undo_end")
    bind_keys({"u": "lbl_undo_end"})
else:
    index = waiting[0]
    c = queue.candidates[index]
    st.subheader(f"Window {index + 1} of {len(queue.candidates)}")
    tile_col, answer_col = st.columns([1, 1])
    try:
        tile = queue.tile(index)
    except QueueError as exc:
        tile = None
        tile_col.error(f"{exc}.")
    if tile is not None:
        tile_col.image(tile, width=420, caption=f"{Path(c['image']).name}, window at x {c['x']}, y {c['y']} "
                       f"({c['size']} px)")
    with answer_col:
        st.write("**Which class is it?** (keys 1-8)")
        grid = st.columns(2)
        for k, cls in enumerate(CLASS_NAMES):
            grid[k % 2].button(f"{k + 1} · {cls}{' (rare)' if cls in RARE_CLASSES else ''}", key=f"lbl_class_{k}",
                               on_click=_label, args=(index, cls), disabled=disabled or tile is None,
                               width="stretch")
        skip_col, undo_col = st.columns(2)
        skip_col.button("s · Skip", key="lbl_skip", on_click=_skip, args=(index,), disabled=disabled,
                        width="stretch")
        undo_col.button("u · Undo", key="lbl_undo", on_click=_undo, disabled=disabled or done == 0,
                        width="stretch")
        st.write("**What the model says**")
        st.dataframe(pd.DataFrame([{"class": n, "probability": f"{p:.1%}"} for n, p in c["top3"]]),
                     hide_index=True, width="stretch")
        if c.get("typicality") is not None:
            text, flagged = describe(float(c["typicality"]))
            (st.warning if flagged else st.caption)(f"Typicality: {text}")
    context = queue.context(index)
    if context is not None:
        st.image(context, width=420, caption="Where it is: the window outlined in yellow, in the image around it")
    bind_keys({**{str(k + 1): f"lbl_class_{k}" for k in range(len(CLASS_NAMES))}, "s": "lbl_skip", "u": "lbl_undo"})

# ---- back to training --------------------------------------------------------------------------------------------
st.divider()
st.subheader("Train on the new labels")
try:
    labelled = store.labelled()
except StoreError:
    labelled = {}
counts = pd.Series([r["label"] for r in labelled.values()], dtype="object").value_counts()
if not labelled:
    st.caption("No labelled tile yet.")
    st.stop()
st.write(f"{len(labelled)} labelled tile(s) in `{LABEL_STORE_DIR}`: "
         + ", ".join(f"{n} {cls}" for cls, n in counts.items()) + ".")
in_use = appstate.data_paths()
if str(LABEL_STORE_DIR.resolve()) not in {str(Path(p).resolve()) for p in in_use}:
    if st.button("Add the labelled tiles to the data sources", key="lbl_add_source"):
        appstate.save_state(data_paths=[*in_use, str(LABEL_STORE_DIR.resolve())])
        st.session_state["lbl_said"] = ("Added: the Dataset page now lists the labelled tiles as a source.", True)
        st.rerun()
else:
    st.caption("The labelled tiles are among the data sources (Dataset page).")
st.write(f"**Fine-tune the default on them**: a {FINETUNE_EPOCHS}-epoch run from the current default's weights and "
         "recipe, on the data in use plus the labelled tiles, split by observation as usual. Its figures are one "
         "split's, not a cross-validation's: to make it the default, cross-validate its recipe on the champion's "
         "folds and promote it (Train page).")
if st.button("Fine-tune on the new labels", key="lbl_finetune"):
    try:
        run = jobs.launch(finetune_config(DEFAULT_CHECKPOINT, appstate.data_spec(), LABEL_STORE_DIR).check_ready())
    except USER_ERRORS as exc:
        show_error(exc, "Not started")
    else:
        st.success(f"Queued {run.path.name}: follow it on the Train page.")

try:
    champion = current_entry(read_registry())
except USER_ERRORS:
    champion = None
if champion and champion.get("cv"):
    folds = champion["cv"].get("folds")
    st.write(f"**Cross-validate with the new labels**: the default's recipe on its own {folds} folds (seed "
             f"{champion['cv'].get('seed')}), on the data in use plus the labelled tiles. The labelled tiles never "
             "move the default's folds, so once it is complete and refit, Promote (Train page) pairs it with the "
             f"default {champion['id']} on the default's own files, and makes it the default only if it wins.")
    if st.button(f"Cross-validate with the new labels ({folds} folds)", key="lbl_cv"):
        try:
            cv_id, runs = cv.launch(cv_configs(champion, appstate.data_spec(), LABEL_STORE_DIR))
        except (*USER_ERRORS, jobs.JobError) as exc:
            show_error(exc, "Not launched")
        else:
            st.success(f"Cross-validation {cv_id}: queued {len(runs)} folds; its report and Refit are on the Train "
                       "page under Cross-validations.")
else:
    st.caption("The default has no cross-validation on record, so the fine-tune's figures are a single split's.")
