"""Project-wide locations, defined once. Each can be moved with an environment variable."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


#: Which engine the app's forward passes use (`--engine` for the CLIs): auto (a checkpoint's verified ONNX twin
#: when it has one, else torch), onnx (only a twin: a checkpoint without one is refused) or torch. HIRISE_ENGINE.
ENGINES = ("auto", "onnx", "torch")
_ENGINE = os.environ.get("HIRISE_ENGINE", "auto").strip().lower() or "auto"
ENGINE = _ENGINE if _ENGINE in ENGINES else "auto"
#: Said where the engine is named, when HIRISE_ENGINE held something else (never replaced without a word).
ENGINE_WARNING = None if _ENGINE in ENGINES else (f"HIRISE_ENGINE={_ENGINE[:40]!r} is not one of "
                                                 f"{', '.join(ENGINES)}: auto is used")

#: The registry of default models (`core.defaults`): which checkpoint is the default, and why.
DEFAULTS_REGISTRY = _env_path("HIRISE_DEFAULTS", PROJECT_ROOT / "checkpoints" / "defaults.json")
#: The default before the registry existed: what loads when the registry is missing, or damaged with no good copy.
BUILTIN_DEFAULT = PROJECT_ROOT / "checkpoints" / "hirise-efficientnet-lite0.pt"


def _registry_default():
    from core.registry import default_serving
    return default_serving(DEFAULTS_REGISTRY.parent, BUILTIN_DEFAULT, DEFAULTS_REGISTRY)


_SERVING = _registry_default()
REGISTRY_WARNING = _SERVING.warning
#: Whether predictions average the 8 flips and turns unless told otherwise (`--tta`/`--no-tta`, the pages' toggle):
#: the registry's decision for the current default (HIRISE_TTA=0/1 overrides it).
DEFAULT_TTA = os.environ.get("HIRISE_TTA", "1" if _SERVING.tta else "0").strip() not in ("0", "", "false", "no")
#: The checkpoint that `core.predict`, `core.evaluate` and the pages use by default: the registry's current default
#: (read when the process starts), or HIRISE_CHECKPOINT.
DEFAULT_CHECKPOINT = _env_path("HIRISE_CHECKPOINT", _SERVING.checkpoint)
#: A scan's standard detection threshold: a window is a detection when its likeliest class is a landmark at this
#: calibrated probability or more. What the cross-validation reports false alarms at, for every recipe alike.
STANDARD_SCAN_THRESHOLD = 0.9
#: The threshold a scan with the default checkpoint uses unless told (`--threshold`, the Scan page's field), and
#: why: the registry entry's, chosen out of fold (`core.defaults.set_scan_threshold`), else the standard one.
DEFAULT_SCAN_THRESHOLD, SCAN_THRESHOLD_WHY = (
    _SERVING.scan_threshold if _SERVING.scan_threshold and _SERVING.checkpoint == DEFAULT_CHECKPOINT
    else (STANDARD_SCAN_THRESHOLD, "the scan's standard threshold"))
#: Where training runs (and the jobs that make them) live.
RUNS_DIR = _env_path("HIRISE_RUNS_DIR", PROJECT_ROOT / "runs")
#: Where decoded-tile caches and content-hash indexes live.
CACHE_DIR = _env_path("HIRISE_CACHE_DIR", PROJECT_ROOT / ".cache" / "hirise")
#: The shared development data (real tiles), next to the project checkout.
SHARED_DATA_DIR = _env_path("HIRISE_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")
#: Small app state remembered across restarts (the chosen data set, ...).
APP_STATE_FILE = _env_path("HIRISE_APP_STATE", PROJECT_ROOT / ".hirise-app.json")
#: Label corrections accepted in the Explore page's label review (issue 16); applied by `core.data.load_dataset`,
#: never written into the data's own label files.
LABEL_OVERRIDES_FILE = _env_path("HIRISE_LABEL_OVERRIDES", PROJECT_ROOT / "label_overrides.csv")
#: Suggestions the researcher rejected in the label review (the label kept, in the overrides' format): kept across
#: sessions so a rejected suspect is not asked about again; never applied to the data.
LABEL_REJECTIONS_FILE = _env_path("HIRISE_LABEL_REJECTIONS", PROJECT_ROOT / "label_rejections.csv")
#: The labelling loop (`core.label`, the Label page): queues of windows to label under `queues/`, and the labelled
#: tiles (a data source like any other) in `labelled-tiles/`.
LABELLING_DIR = _env_path("HIRISE_LABELLING_DIR", PROJECT_ROOT / "labelling")
LABEL_QUEUES_DIR = LABELLING_DIR / "queues"
LABEL_STORE_DIR = LABELLING_DIR / "labelled-tiles"
