"""A run's note, tags and deletion (with a confirmation; never of a queued or running job)."""
from __future__ import annotations

import streamlit as st

from core.experiment.runs import Run, RunBusy, delete_run, parse_tags
from ui.errors import show_error


def notes_editor(run: Run) -> None:
    """A note and tags for the run, saved in its notes.json."""
    notes = run.notes()
    with st.form(f"notes_{run.name}", border=False):
        note = st.text_area("Note", value=notes["note"], height=80, placeholder="What this run tried, what it showed")
        tags = st.text_input("Tags (commas or spaces)", value=", ".join(notes["tags"]), placeholder="baseline, lr-sweep")
        if st.form_submit_button("Save note and tags"):
            try:
                run.save_notes(note, parse_tags(tags))
                st.session_state["notes_saved"] = run.name
                st.rerun()  # the jobs table above shows them at once
            except OSError as exc:
                show_error(f"cannot write to {run.path}: {exc.strerror or exc}", "Not saved")
    if st.session_state.pop("notes_saved", None) == run.name:
        st.success(f"Saved the note and tags of {run.name}.", icon=":material/check:")


def _ask(name: str) -> None:
    st.session_state["confirm_delete"] = name


def _forget() -> None:
    st.session_state.pop("confirm_delete", None)


def delete_button(run: Run, active: bool) -> None:
    """Delete, after an explicit confirmation naming the run; a queued or running job must be cancelled first
    (a confirmation asked before the run was resumed is withdrawn)."""
    if active and st.session_state.get("confirm_delete") == run.name:
        _forget()
    if st.session_state.get("confirm_delete") != run.name:
        st.button("Delete this run…", on_click=_ask, args=(run.name,), disabled=active, icon=":material/delete:",
                  help="A queued or running job cannot be deleted: cancel it first." if active else
                  "Removes the run's folder: checkpoints, metrics, log and evaluation.")
        return
    cvs = [t.removeprefix("cv:") for t in run.notes()["tags"] if t.startswith("cv:")]
    if cvs:
        st.warning(f"**{run.name}** is a fold of cross-validation {', '.join(cvs)}: deleting it leaves that "
                   "cross-validation incomplete until the fold is relaunched (Relaunch missing folds, under its "
                   "report), and its refit cannot be calibrated meanwhile.", icon=":material/call_split:")
    st.warning(f"Delete **{run.name}** and all its files (checkpoints, metrics, log, evaluation)? This cannot be "
               "undone.")
    yes, no = st.columns([1, 1])
    if yes.button(f"Yes, delete {run.name}", type="primary"):
        _forget()
        try:
            delete_run(run)
            st.session_state.pop("selected_run", None)
            st.session_state["deleted_run"] = run.name
            st.rerun()
        except RunBusy as exc:
            show_error(exc, "Not deleted")
        except OSError as exc:
            show_error(f"cannot delete {run.path}: {exc.strerror or exc}", "Not deleted")
    no.button("Keep it", on_click=_forget)
