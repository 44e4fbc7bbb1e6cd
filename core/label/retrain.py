"""From new labels back to a model: the run that fine-tunes the current default with the labelled tiles added.

The run starts from the default's weights and trains its recipe (model, input size, imbalance policy, ...) on
the data sources in use plus the labelled-tiles source, split by observation as usual: the new tiles are grouped
with their observations, never split from them. Its figures are one grouped split's; the promotion gate needs a
cross-validation on the champion's folds (`python -m core.train cv`, then `promote`)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.data.spec import DataSpec
from core.training.config import ConfigError, RunConfig

#: Fine-tuning epochs: the default already knows the classes; a few passes take in the new tiles.
FINETUNE_EPOCHS = 3


def finetune_config(default_checkpoint: Path, spec: DataSpec, store: Path, epochs: int = FINETUNE_EPOCHS,
                    name: str = "finetune-new-labels") -> RunConfig:
    """The run: the default's recipe from its checkpoint, started from its weights, on the data `spec` in use
    (merged and split as chosen on the Dataset page) plus `store`. A spec with no validation split (a refit's)
    gets the usual shares: the run would otherwise have no figures at all."""
    from core.checkpoint import read_checkpoint

    if not (Path(store) / "labels.csv").is_file():
        raise ConfigError(f"no labelled tiles yet at {store}: label some on the Label page first")
    payload = read_checkpoint(default_checkpoint)
    recipe = dict(payload.get("config") or {})
    # the model and its input size from what the weights are (a config may be missing or partial)
    recipe.update(model=payload["arch"], image_size=int(payload["image_size"]))
    base = RunConfig.from_dict({k: v for k, v in recipe.items() if k in RunConfig.__dataclass_fields__})
    shares = spec if not spec.refit else DataSpec()
    data = list(dict.fromkeys([*spec.paths, str(Path(store).resolve())]))
    cfg = replace(base, data=data, conflict_policy=spec.conflict_policy, split_mode=spec.split_mode,
                  val_fraction=shares.val_fraction, test_fraction=shares.test_fraction, split_seed=spec.split_seed,
                  keep_split_repeats=spec.keep_split_repeats, init="run", init_from=str(default_checkpoint),
                  epochs=epochs, cv_folds=0, cv_fold=0, calibrate_from="", name=name)
    return cfg.validate()


def cv_configs(entry: dict, spec: DataSpec, store: Path) -> list[RunConfig]:
    """The current default's cross-validation again, on its folds (count and seed) and its recipe (as the
    registry records it), on the data in use plus the labelled tiles. The labelled tiles never move the folds of
    the others (`core.data.split.fold_of_observation`), so the promotion gate pairs it with the default on the
    default's own files; it refuses, naming the difference, when the data in use is not the default's."""
    from core.experiment.cv import plan

    if not (Path(store) / "labels.csv").is_file():
        raise ConfigError(f"no labelled tiles yet at {store}: label some on the Label page first")
    cv = entry.get("cv") or {}
    recipe = {k: v for k, v in (cv.get("recipe") or {}).items()
              if v is not None and k in RunConfig.__dataclass_fields__}
    data = list(dict.fromkeys([*spec.paths, str(Path(store).resolve())]))
    base = RunConfig.from_dict({**recipe, "data": data, "conflict_policy": spec.conflict_policy,
                                "keep_split_repeats": spec.keep_split_repeats,
                                "name": f"{entry.get('id', 'default')}-new-labels"[:60]})
    return plan(base, cv.get("folds", 3), cv.get("seed", 0))
