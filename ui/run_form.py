"""The run configuration form, generated from RunConfig's fields: the form offers what the CLI and validation accept."""
from __future__ import annotations

import contextlib
from typing import Any

import streamlit as st

from core.data.spec import DataSpec
from core.experiment.jobs import device_choices
from core.experiment.runs import folder_hint, list_runs
from core.models import DEFAULT_ARCH, stages
from core.models import spec as model_spec
from core.training.config import ConfigError, RunConfig, field_specs
from ui import appstate

GROUP_TITLES = {"data": "Data", "model": "Model", "freezing": "Freezing", "optimisation": "Optimisation",
                "augmentation": "Augmentation", "runtime": "Runtime"}


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


REMEMBERED = "cfg_remembered"  # the form's values as last shown, kept across pages (session) and restarts (app state)


def _remembered(name: str, spec: dict) -> Any:
    """The value this field last showed (this session, else the app's state file), if it still fits the field."""
    value = st.session_state[REMEMBERED].get(name, spec["default"])
    choices, kind = spec["choices"], spec["type"]
    if getattr(kind, "__origin__", None) is list:
        return [v for v in value if not choices or v in choices] if isinstance(value, list) else spec["default"]
    if choices and value not in choices:
        return spec["default"]
    if kind is bool and not isinstance(value, bool):
        return spec["default"]
    return value


def _widget(spec: dict, values: dict[str, Any]) -> Any:
    name, kind, key = spec["name"], spec["type"], f"cfg_{spec['name']}"
    default, help_text, choices = spec["default"], spec["help"], spec["choices"]
    if key not in st.session_state:  # first drawn in this session, or dropped by Streamlit when the page was left
        st.session_state[key] = _remembered(name, spec)
    if name == "data":
        if key + "_text" not in st.session_state:
            st.session_state[key + "_text"] = "\n".join(st.session_state.get(key) or [])
        text = st.text_area(_label(name), key=key + "_text", help=help_text, height=90)
        return [line.strip() for line in text.splitlines() if line.strip()]
    if name == "freeze_below":
        arch = values.get("model", DEFAULT_ARCH)
        options = ["", *list(stages(arch))[1:]]  # "": the architecture's own fine-tuning point (the default)
        if st.session_state[key] not in options:
            st.session_state[key] = ""
        own = model_spec(arch).fine_tune_from
        return st.selectbox(_label(name), options, key=key, help=help_text,
                            format_func=lambda v: v or f"the model's own ({own if own != stages(arch)[0] else 'none'})")
    if name == "init_from":
        runs = [str(r.path) for r in list_runs() if r.best_checkpoint.is_file()]
        if not runs:
            st.warning("No earlier run with a checkpoint to start from.")
            return ""
        if st.session_state[key] not in runs:
            st.session_state[key] = runs[0]
        return st.selectbox("Start from run", runs, key=key, help=help_text,
                            format_func=lambda p: p.rsplit("/", 1)[-1])
    if name == "device":
        choices = [c for c in choices if c in device_choices()]
        if st.session_state[key] not in choices:
            st.session_state[key] = default
    if getattr(kind, "__origin__", None) is list:
        return st.multiselect(_label(name), choices, key=key, help=help_text)
    if choices:
        return st.selectbox(_label(name), choices, key=key, help=help_text)
    if kind is bool:
        return st.checkbox(_label(name), key=key, help=help_text)
    # Numbers are typed as text: a number input replaces an out-of-range, empty or unreadable entry by a bound, 0
    # or the previous value behind the user's back. What is typed is what RunConfig checks and refuses (as the
    # CLI's flags are): "", "nan", "1e308" and "2.5 epochs" get a message at the field, and nothing is queued.
    if kind in (int, float):
        if not isinstance(st.session_state[key], str):
            st.session_state[key] = number_text(st.session_state[key])
        return st.text_input(_label(name), key=key, help=help_text).strip()
    return st.text_input(_label(name), key=key, help=help_text)


def number_text(value: Any) -> str:
    """A number as the form shows it: 0.001, 3.16e-05, 64."""
    return f"{value:g}" if isinstance(value, float) else str(value)


PENDING = "cfg_pending"


def propose(**values: Any) -> None:
    """Ask the form to take these values on its next run. A widget's value can be set only before the widget
    is drawn in a full run of the page (a button in a fragment that sets it directly changes nothing visible),
    so the form applies them first thing, and the caller reruns the page."""
    st.session_state.setdefault(PENDING, {}).update(values)


def run_form(default_data: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Draw every option, grouped; options that do not apply to the current choices are hidden. Returns the
    values and, by field name, an empty slot under each widget for a message about it."""
    if REMEMBERED not in st.session_state:
        stored = appstate.load_state().get("run_form")
        st.session_state[REMEMBERED] = dict(stored) if isinstance(stored, dict) else {}
    if "cfg_data" not in st.session_state:
        remembered = st.session_state[REMEMBERED].get("data")
        st.session_state["cfg_data"] = remembered if isinstance(remembered, list) and remembered else default_data
    _follow_dataset_page()
    for name, value in st.session_state.pop(PENDING, {}).items():
        st.session_state[f"cfg_{name}"] = value  # a number is written as text where its field is drawn
    specs = field_specs()
    defaults = {s["name"]: s["default"] for s in specs}
    values: dict[str, Any] = {s["name"]: s["default"] for s in specs if not s.get("form", True)}
    slots: dict[str, Any] = {}
    groups = list(GROUP_TITLES)
    tabs = st.tabs([GROUP_TITLES[g] for g in groups])
    for group, tab in zip(groups, tabs, strict=True):
        with tab:
            cols = st.columns(3)
            shown = 0
            for spec in [s for s in specs if s["group"] == group and s.get("form", True)]:
                when = spec["when"]
                if when and values.get(when[0], defaults[when[0]]) not in when[1]:
                    values[spec["name"]] = spec["default"]
                    continue
                with cols[shown % 3] if spec["name"] != "data" else st.container():
                    values[spec["name"]] = _widget(spec, values)
                    slots[spec["name"]] = st.empty()
                    if spec["name"] == "name" and isinstance(values["name"], str) and values["name"].strip() \
                            and folder_hint(values["name"]) != values["name"].strip():
                        st.caption(f"The run's folder will be named after "
                                   f"'{folder_hint(values['name']) or '(nothing: only the date)'}': a name keeps "
                                   "letters, digits, '.', '_' and '-', and is never a path.")
                shown += spec["name"] != "data"
    _remember({name: st.session_state[f"cfg_{name}"] if name != "data" else values["data"]
               for name in values if f"cfg_{name}" in st.session_state})
    return values, slots


SYNCED = "cfg_dataset_page"  # the Dataset page's data choices the form last took


def _follow_dataset_page() -> None:
    """The data sources and how they are merged and split are chosen on the Dataset page: whenever those choices
    change (or a session starts), the form's Data tab takes them, so a run trains on the split the other pages
    show. A change made in the Data tab afterwards holds for the form until the Dataset page changes again."""
    spec = appstate.data_spec().flat()
    chosen = {k: v for k, v in spec.items() if k not in ("cv_folds", "cv_fold")}
    if st.session_state.get(SYNCED) == chosen:
        return
    st.session_state[SYNCED] = chosen
    for name, value in chosen.items():
        if name == DataSpec.PATHS_KEY:
            if value:
                st.session_state["cfg_data"] = list(value)
                st.session_state["cfg_data_text"] = "\n".join(value)
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        st.session_state[f"cfg_{name}"] = number_text(value) if is_number else value


def _remember(shown: dict[str, Any]) -> None:
    """Keep what the form shows, so that leaving the page, a refresh or a restart brings the same values back (a
    launch never uses values the user did not see); written to the app's state file only when they change. The data
    field is kept for the session only: a new session starts from the Dataset page's choice."""
    remembered = st.session_state[REMEMBERED]
    if any(remembered.get(k) != v for k, v in shown.items()):
        remembered.update(shown)
        st.session_state["cfg_data"] = shown.get("data", st.session_state.get("cfg_data"))
        # the data sources are the Dataset page's to remember; the rest of the form is kept here. A read-only state
        # file: the values are still kept for this session.
        with contextlib.suppress(OSError):
            appstate.save_state(run_form={k: v for k, v in remembered.items() if k != "data"})


def checked_config(values: dict[str, Any], slots: dict[str, Any]) -> tuple[RunConfig | None, ConfigError | None]:
    """The form's values as a valid, ready RunConfig, or the first problem, shown in red under its field (and
    returned, for the Launch button to refuse with). The one validation path: RunConfig's, as the CLI's."""
    try:
        return RunConfig.from_dict(values).validate().check_ready(), None
    except ConfigError as exc:
        slot = slots.get(exc.field)
        if slot is not None:
            slot.error(str(exc), icon=":material/error:")
        return None, exc


def group_of(name: str) -> str:
    """The form tab a field is drawn in."""
    return next(s["group"] for s in field_specs() if s["name"] == name)
