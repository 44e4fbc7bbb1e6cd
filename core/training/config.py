"""One run's configuration: the dataclass that the CLI parses, the app's form edits and a run saves.

Each field's metadata says how to present it (help, choices, group) and when it applies (`when`):
an option set away from its default while it does not apply (a StepLR option for OneCycleLR,
say) is an error, reported before anything starts.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from core.choices import AUGMENT_MODES as AUGMENT_REGISTRY
from core.choices import IMBALANCE_POLICIES, SELECTION_METRICS
from core.data.merge import CONFLICT_POLICIES
from core.data.spec import MAX_FOLDS, DataSpec
from core.data.split import SPLIT_MODES
from core.gpu import cuda_available
from core.models import ARCHITECTURES, DEFAULT_ARCH, FREEZE_MODES, WeightsUnavailable, require_imagenet, spec, stages
from core.training import augment
from core.training.optim import OPTIMIZERS, SCHEDULERS

AUGMENT_MODES = tuple(AUGMENT_REGISTRY)
TRANSFORMS = tuple(augment.TRANSFORMS)  # the registry is core.training.augment's
IMBALANCE = tuple(IMBALANCE_POLICIES)
TRANSFORMED_MODES = tuple(m.name for m in AUGMENT_REGISTRY.values() if m.uses_transforms)
INITS = ("scratch", "imagenet", "run")


MIN_INPUT_SIZE = 32  # the smallest real model input; image_size 0 means "the model's native size"


class ConfigError(ValueError):
    """An unknown or inconsistent option; the message starts with the field's name."""

    @property
    def field(self) -> str:
        """The field the message is about (its first word), or "" when it names none: lets a form put the
        message next to the field."""
        match = re.match(r"[a-z_]+", str(self))
        return match.group(0) if match and match.group(0) in _FIELD_NAMES else ""


def opt(default: Any = MISSING, help: str = "", group: str = "", choices: tuple | None = None,
        when: tuple[str, tuple] | None = None, resumable: bool = False, not_gridable: str | None = None,
        **kw: Any) -> Any:
    """An option and everything that is decided per option, declared once beside it: its help and form group, its
    choices or bounds (`min`, `max`), when the form shows it, whether a resumed run may change it (`resumable`: how
    long and how it runs, not what it trains), and why a grid may not vary it (`not_gridable`)."""
    meta = {"help": help, "group": group, "choices": choices, "when": when, "resumable": resumable,
            "not_gridable": not_gridable, **kw}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


#: Upper bounds that catch a slip of the finger (1e308, 1e9) before a job is queued, not research choices:
#: an epoch count or schedule length beyond this, a rate above 10, a batch above 8192 are typing mistakes here.
MAX_EPOCHS = 10_000


@dataclass
class RunConfig:
    """The defaults are the shipped model's recipe, chosen by 5-fold cross-validation grouped by observation
    (checkpoints/MODEL_CARD.md): Launch with nothing changed trains it."""

    # Data: the fields of a DataSpec (`data_spec`), flat here so that flags, form and config.json stay flat
    data: list[str] = opt([], "data sources: folders or zips (official v3.2/v3 layout or plain tiles)", "data")
    conflict_policy: str = opt(DataSpec.conflict_policy, "which copy wins a label conflict when merging", "data", CONFLICT_POLICIES)
    split_mode: str = opt(DataSpec.split_mode, "official split if the files carry one, else grouped by observation", "data",
                          SPLIT_MODES)
    val_fraction: float = opt(DataSpec.val_fraction, "share of observations for validation (grouped split)", "data",
                              when=("split_mode", ("auto", "grouped")))
    test_fraction: float = opt(DataSpec.test_fraction, "share of observations for test (grouped split)", "data",
                               when=("split_mode", ("auto", "grouped")))
    split_seed: int = opt(DataSpec.split_seed, "seed of the grouped split", "data", when=("split_mode", ("auto", "grouped")),
                          min=0, max=2**32 - 1)
    keep_split_repeats: bool = opt(DataSpec.keep_split_repeats, "keep the official split file's repeated minority rows", "data")
    allow_leakage: bool = opt(False, "train even if an observation or landmark is on two sides", "data")
    # set by the cross-validation launcher (core.experiment.cv), not typed: each fold is an ordinary run of these two
    cv_folds: int = opt(DataSpec.cv_folds, "cross-validation: the number of folds grouped by observation (0: off; "
                        "the split is then the fold's, with no test split)", "data", min=0, max=MAX_FOLDS, form=False)
    cv_fold: int = opt(DataSpec.cv_fold, "cross-validation: the fold this run validates on (0 .. cv_folds-1)", "data",
                       min=0, max=MAX_FOLDS - 1, form=False)
    calibrate_from: str = opt("", "for a run with no validation split (val_fraction 0, test_fraction 0: a refit on "
                              "all the data): the cross-validation id whose out-of-fold predictions set its "
                              "calibration temperature and out-of-distribution check", "data", form=False)
    # Model
    model: str = opt(DEFAULT_ARCH, "architecture", "model", ARCHITECTURES)
    init: str = opt("imagenet", "start from random weights, ImageNet weights, or an earlier run", "model", INITS)
    init_from: str = opt("", "run folder or checkpoint to start from", "model", when=("init", ("run",)),
                         not_gridable="it is a path; start the whole grid from one run instead")
    image_size: int = opt(260, "model input size in pixels (tiles are 227x227); 0: the model's native size "
                          "(224 for lite0 and the ResNets, 240 for lite1, 260 for lite2)", "model", min=0, max=512)
    # Freezing
    freeze: str = opt("below", "none, all but the classifier head, or everything below a stage", "freezing",
                      FREEZE_MODES)
    freeze_below: str = opt("", "stages below this one stay frozen (empty: the architecture's own point, blocks.4 "
                            "for EfficientNet-Lite, layer3 for the ResNets, nothing for simple_cnn)", "freezing",
                            when=("freeze", ("below",)))
    unfreeze_every: int = opt(0, "gradual unfreezing: release one more stage every N epochs (0: off)", "freezing",
                              when=("freeze", ("head_only", "below")), min=0)
    unfreeze_all_at: int = opt(0, "release every frozen stage after N epochs: a head-only warm-up, then full "
                               "fine-tuning (0: off)", "freezing", when=("freeze", ("head_only", "below")), min=0)
    # Optimisation
    optimizer: str = opt("adamw", "optimizer", "optimisation", tuple(OPTIMIZERS))
    lr: float = opt(2e-3, "learning rate (peak rate for OneCycleLR)", "optimisation", min=0.0, max=10.0)
    backbone_lr_scale: float = opt(0.3, "discriminative learning rates: the backbone learns at this fraction of "
                                   "the head's rate (1: one rate for all)", "optimisation", min=0.0, max=1.0)
    weight_decay: float = opt(0.02, "weight decay (convolution and linear weights; never biases or norms)",
                              "optimisation", min=0.0, max=1.0)
    momentum: float = opt(0.9, "SGD momentum", "optimisation", when=("optimizer", ("sgd",)), min=0.0, max=1.0)
    nesterov: bool = opt(False, "SGD Nesterov momentum", "optimisation", when=("optimizer", ("sgd",)))
    scheduler: str = opt("onecycle", "learning-rate schedule", "optimisation", tuple(SCHEDULERS))
    step_size: int = opt(5, "StepLR: epochs between decays", "optimisation", when=("scheduler", ("step",)), min=1,
                        max=MAX_EPOCHS)
    gamma: float = opt(0.1, "StepLR: decay factor", "optimisation", when=("scheduler", ("step",)))
    plateau_factor: float = opt(0.5, "ReduceLROnPlateau: factor", "optimisation", when=("scheduler", ("plateau",)))
    plateau_patience: int = opt(2, "ReduceLROnPlateau: epochs without improvement", "optimisation",
                                when=("scheduler", ("plateau",)), min=0, max=MAX_EPOCHS)
    pct_start: float = opt(0.3, "OneCycleLR: share of steps spent warming up", "optimisation",
                           when=("scheduler", ("onecycle",)), min=0.0, max=1.0)
    warmup_epochs: int = opt(1, "cosine: linear warm-up epochs", "optimisation", when=("scheduler", ("cosine",)),
                             min=0, max=MAX_EPOCHS)
    min_lr: float = opt(1e-6, "cosine: final learning rate", "optimisation", when=("scheduler", ("cosine",)),
                         max=10.0)
    epochs: int = opt(5, "epochs", "optimisation", min=1, max=MAX_EPOCHS, resumable=True)
    batch_size: int = opt(64, "batch size", "optimisation", min=1, max=8192)
    imbalance: str = opt("sqrt_weighted_loss", "class-imbalance handling: " + ", ".join(
        f"{p.name} ({p.help})" for p in IMBALANCE_POLICIES.values()), "optimisation", IMBALANCE)
    label_smoothing: float = opt(0.05, "label smoothing", "optimisation", min=0.0, max=0.5)
    early_stopping_metric: str = opt("macro_f1", "validation metric that picks the best epoch", "optimisation",
                                     SELECTION_METRICS)
    patience: int = opt(5, "early stopping: epochs without improvement (0: off)", "optimisation", min=0,
                        max=MAX_EPOCHS, resumable=True)
    # Augmentation
    augment: str = opt("online", ", ".join(f"{m.name} ({m.help})" for m in AUGMENT_REGISTRY.values()), "augmentation",
                       AUGMENT_MODES)
    transforms: list[str] = opt(["hflip", "vflip", "rot90", "color_jitter"], "transforms for online/expand", "augmentation",
                                TRANSFORMS, when=("augment", TRANSFORMED_MODES))
    mixup_alpha: float = opt(0.0, "MixUp alpha (0: off), a batch option", "augmentation", min=0.0, max=10.0)
    cutmix_alpha: float = opt(0.0, "CutMix alpha (0: off), a batch option", "augmentation", min=0.0, max=10.0)
    # Runtime
    device: str = opt("auto", "auto (GPU when there is one), cpu or cuda", "runtime", ("auto", "cpu", "cuda"),
                      resumable=True, not_gridable="every run of a grid runs on one device (jobs queue per device)")
    amp: bool = opt(True, "bf16 mixed precision (CUDA, or a CPU with native bf16); EfficientNet-Lite trains under "
                                 "it but is evaluated in fp32, since bf16 changes its predictions", "runtime", resumable=True)
    channels_last: bool = opt(True, "channels-last memory format (faster convolutions)", "runtime", resumable=True,
                              not_gridable="it changes how fast a run goes, not what it learns")
    compile: bool = opt(False, "torch.compile the model (CUDA)", "runtime", resumable=True,
                        not_gridable="it changes how fast a run goes, not what it learns")
    num_workers: int = opt(0, "DataLoader worker processes, for per-tile transforms and the expand mode (other "
                              "runs draw batches from tiles held on the device)", "runtime", min=0, max=64,
                          resumable=True, not_gridable="it changes how fast a run goes, not what it learns")
    seed: int = opt(0, "random seed (weights, order, augmentation)", "runtime", min=0, max=2**32 - 1)
    log_every: int = opt(10, "record the training loss every N steps", "runtime", min=1, max=100_000,
                         resumable=True, not_gridable="it changes how often a run logs, not what it learns")
    max_steps_per_epoch: int = opt(0, "cap on steps per epoch (0: whole epoch); for smoke tests", "runtime", min=0)
    name: str = opt("", "a label for the run; its folder is named after it (letters, digits, '.', '_' and '-' are "
                    "kept, anything else becomes '-')", "runtime", resumable=True,
                    not_gridable="each run of a grid is named after its values (the form's name becomes their prefix)")

    # ---- validation -------------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Raise ConfigError on the first unknown or inconsistent value; return self."""
        defaults = RunConfig()
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            choices = meta.get("choices")
            if choices:
                values = value if isinstance(value, list) else [value]
                bad = [v for v in values if v not in choices]
                if bad:
                    raise ConfigError(f"{f.name}: unknown value {bad[0]!r} (expected one of {', '.join(choices)})")
            if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison below
                raise ConfigError(f"{f.name}: {value} is not a finite number")
            if "min" in meta and value < meta["min"]:
                raise ConfigError(f"{f.name}: {value} is below the minimum {meta['min']}")
            if "max" in meta and value > meta["max"]:
                raise ConfigError(f"{f.name}: {value} is above the maximum {meta['max']}")
            when = meta.get("when")
            if when and getattr(self, when[0]) not in when[1] and value != getattr(defaults, f.name):
                raise ConfigError(f"{f.name} applies only when {when[0]} is {' or '.join(when[1])}, "
                                  f"not {getattr(self, when[0])!r}")
        if not self.data:
            raise ConfigError("data: give at least one data source (folder or zip)")
        if self.freeze == "below" and self.freeze_below and self.freeze_below not in stages(self.model):
            raise ConfigError(f"freeze_below: {self.model} has no stage {self.freeze_below!r} "
                              f"(stages: {', '.join(stages(self.model))})")
        if self.init == "run" and not self.init_from:
            raise ConfigError("init_from: name the run folder or checkpoint to start from")
        if self.init == "imagenet" and not spec(self.model).weight_sources:
            raise ConfigError(f"init: {self.model} has no ImageNet weights; use init=scratch")
        if 0 < self.image_size < MIN_INPUT_SIZE:
            raise ConfigError(f"image_size: at least {MIN_INPUT_SIZE} px (or 0 for the model's native size)")
        if self.backbone_lr_scale <= 0:
            raise ConfigError("backbone_lr_scale must be above 0 (freeze the backbone to stop it learning)")
        if self.unfreeze_every and self.unfreeze_all_at:
            raise ConfigError("unfreeze_every and unfreeze_all_at are two unfreezing plans: choose one")
        if self.augment in TRANSFORMED_MODES and not self.transforms:
            raise ConfigError(f"augment={self.augment} needs at least one transform")
        problem = self.data_spec.problem()
        if problem:
            raise ConfigError(problem)
        if self.cv_folds and (self.val_fraction, self.test_fraction) != (defaults.val_fraction, defaults.test_fraction):
            raise ConfigError("val_fraction: cross-validation makes its own validation folds and no test split; "
                              "give either the folds or the shares, not both")
        if self.calibrate_from and not self.data_spec.refit:
            raise ConfigError("calibrate_from: only a run with no validation split (val_fraction 0 and test_fraction "
                              "0) takes its calibration from a cross-validation; this run calibrates on its own "
                              "validation split")
        if self.calibrate_from and not re.fullmatch(r"[A-Za-z0-9._-]+", self.calibrate_from):
            raise ConfigError(f"calibrate_from: {_short(self.calibrate_from)} is not a cross-validation id "
                              "(python -m core.train report cv lists them)")
        if self.data_spec.refit and self.scheduler == "plateau":
            raise ConfigError("scheduler: plateau lowers the rate when validation stops improving, and this run has "
                              "no validation split (val_fraction 0); choose cosine, onecycle, step or none")
        if self.scheduler == "onecycle" and not 0 < self.pct_start < 1:
            raise ConfigError("pct_start must be between 0 and 1")
        _check_open_ranges(self)
        if self.device == "cuda" and not cuda_available():
            raise ConfigError("device: cuda was asked for, but this machine has no GPU that torch can use "
                              "(choose auto or cpu)")
        return self

    def check_ready(self, resume: bool = False) -> RunConfig:
        """What the values alone cannot say, checked before anything is queued: the data sources exist, the run
        to start from has a checkpoint, the ImageNet weights are here (not needed to resume: last.pt holds the
        weights). Raises ConfigError naming the field; returns self."""
        missing = [p for p in self.data if not Path(p).expanduser().exists()]
        if missing:
            raise ConfigError(f"data: not found: {', '.join(missing)}")
        if resume:
            return self
        if self.init == "run":
            path = Path(self.init_from).expanduser()
            if not (path / "best.pt" if path.is_dir() else path).is_file():
                raise ConfigError(f"init_from: no checkpoint at {self.init_from}")
        if self.init == "imagenet":
            try:
                require_imagenet(self.model)
            except WeightsUnavailable as exc:
                raise ConfigError(f"init: {exc}") from None
        return self

    @property
    def data_spec(self) -> DataSpec:
        """The data this run trains on, merged and split how."""
        return DataSpec.from_mapping(self.to_dict())

    @property
    def input_size(self) -> int:
        """The model's input size in pixels: `image_size`, or the architecture's native size when 0."""
        return self.image_size or spec(self.model).native_size

    # ---- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"a configuration is a JSON object of options, not a {_json_kind(values)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
        hints = get_type_hints(cls)
        clean = {}
        for k, v in values.items():
            try:
                clean[k] = _coerce(v, hints[k])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{k}: {_not_valid(v, hints[k])}") from exc
        return cls(**clean)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        try:
            values = json.loads(Path(path).read_text())
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read configuration {path}: not a text file (expected JSON)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
        return cls.from_dict(values)


def _not_valid(value: Any, kind: Any) -> str:
    """Why `value` is not a `kind`, in the reader's words."""
    if isinstance(value, str) and not value.strip() and kind in (int, float):
        return "empty: enter a number"
    return f"{_short(value)} is not " + {int: "a whole number", float: "a number"}.get(kind, f"a valid {_type_name(kind)}")


def _coerce(value: Any, kind: Any) -> Any:
    """`value` (from JSON, a form or a flag) as `kind`, or TypeError/ValueError: nothing is guessed
    (`true` is not an epoch count, a list is not a name)."""
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise TypeError(value)
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    if getattr(kind, "__origin__", None) is list:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise TypeError(value)
        return list(items)
    return value


_FIELD_NAMES = frozenset(f.name for f in fields(RunConfig))


def _check_open_ranges(cfg: RunConfig) -> None:
    """Bounds that a field's inclusive `min`/`max` cannot say: a rate above zero, factors that shrink."""
    if cfg.lr <= 0:
        raise ConfigError(f"lr: {cfg.lr} must be above 0")
    if not 0 < cfg.gamma <= 1:
        raise ConfigError(f"gamma: the StepLR decay factor {cfg.gamma} must be in (0, 1]")
    if not 0 < cfg.plateau_factor < 1:
        raise ConfigError(f"plateau_factor: the ReduceLROnPlateau factor {cfg.plateau_factor} must be in (0, 1)")
    if cfg.min_lr < 0:
        raise ConfigError(f"min_lr: {cfg.min_lr} must be 0 or more")
    if cfg.scheduler == "cosine" and cfg.min_lr > cfg.lr:
        raise ConfigError(f"min_lr: {cfg.min_lr} is above lr ({cfg.lr}): the cosine schedule would raise the rate "
                          "as it goes; give a final rate at or below lr")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value),
                                                                                            type(value).__name__)


def _type_name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def field_bounds(name: str) -> tuple[Any, Any]:
    """A field's inclusive (min, max) from its metadata (None where unbounded), for checks made elsewhere."""
    meta = next(f.metadata for f in fields(RunConfig) if f.name == name)
    return meta.get("min"), meta.get("max")


def field_specs() -> list[dict[str, Any]]:
    """Each option's name, type, default and metadata: what the app's form is built from."""
    hints = get_type_hints(RunConfig)
    defaults = RunConfig()
    return [{"name": f.name, "type": hints[f.name], "default": getattr(defaults, f.name), **f.metadata}
            for f in fields(RunConfig)]


def resumable_fields() -> tuple[str, ...]:
    """What a resumed run may change: how long and how it runs, not what it trains (that is a new run)."""
    return tuple(f.name for f in fields(RunConfig) if f.metadata.get("resumable"))


def add_option_flag(parser: argparse.ArgumentParser, option: dict[str, Any], default: Any = argparse.SUPPRESS,
                    bounded: bool = True) -> None:
    """One option's flag, with the help, choices and bounds its declaration (`opt`) gives: the one flag generator,
    for `python -m core.train`'s options and the data options every data CLI takes (`core.data.cli`). `bounded`:
    NaN, infinities and out-of-bounds numbers are a usage error at the flag; `core.train` checks the same bounds
    in `RunConfig.validate` instead, after `--config FILE` is merged, so that a file's value and a flag's get the
    same one-line error."""
    from core.cliargs import number_in
    flag = "--" + option["name"].replace("_", "-")
    shown = option["default"] if default is argparse.SUPPRESS else default
    kw: dict[str, Any] = {"default": default, "help": f"{option['help']} (default: {shown})"}
    kind = option["type"]
    if option["name"] == "data":
        parser.add_argument(flag, action="append", metavar="PATH", **kw)
    elif kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif getattr(kind, "__origin__", None) is list:
        parser.add_argument(flag, nargs="*", choices=option["choices"], metavar="NAME", **kw)
    elif kind in (int, float) and not option["choices"] and bounded:
        parser.add_argument(flag, type=number_in(kind, option.get("min"), option.get("max")), **kw)
    else:
        parser.add_argument(flag, type=kind, choices=option["choices"], **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per option; defaults are suppressed so only what the user typed overrides --config."""
    for option in field_specs():
        add_option_flag(parser, option, bounded=False)


def typed_config(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """The recipe typed on the command line over `base` (or `--config FILE`, or the defaults), not yet checked:
    a grid or a cross-validation checks each of its runs instead."""
    if base is None:
        base = RunConfig.load(args.config) if getattr(args, "config", None) else RunConfig()
    values = base.to_dict()
    names = {f.name for f in fields(RunConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return RunConfig.from_dict(values)


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    return typed_config(args, base or RunConfig()).validate()
