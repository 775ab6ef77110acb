"""``python -m training search --config configs/search.yaml``: hyperparameter search with Optuna.

Each trial is one ``python -m training fit`` (the same LightningCLI, the same base config)
with the sampled values layered on top as a second config file, and its own W&B run in the
study's group (job_type ``search``). A median pruner stops trials whose
``val/balanced_accuracy`` trails the median of earlier trials at the same epoch. The best
configuration is written as a YAML file that ``python -m training fit --config`` takes as is.

The search file (see configs/search.yaml):

    base_config: configs/default.yaml     # what every trial starts from
    study_name: lesion-search
    n_trials: 20
    space:                                # dotted CLI keys -> distributions
      model.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      data.class_weighting: {type: categorical, choices: [none, sqrt_inverse]}
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from contracts.errors import ConfigError
from models.registry import get_spec
from training.cli import main as cli_main

log = logging.getLogger(__name__)
MONITOR = "val/balanced_accuracy"
_TYPES = ("float", "int", "categorical")

# The trial a running fit reports to: set by :func:`run_search` around each fit, read by the
# callback the CLI builds (a live Optuna trial cannot travel through a config file).
_ACTIVE_TRIAL: Any = None


class TrialPruning(L.Callback):
    """Reports ``monitor`` to the active Optuna trial after each validation epoch and stops
    the fit (cleanly: checkpoint and W&B run are closed) when the pruner says so.

    Args:
        monitor: the metric reported, maximised or minimised as the study says.
    """

    def __init__(self, monitor: str = MONITOR) -> None:
        self.monitor = monitor
        self.pruned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trial = _ACTIVE_TRIAL
        value = trainer.callback_metrics.get(self.monitor)
        if trial is None or trainer.sanity_checking or value is None:
            return
        trial.report(float(value), step=trainer.current_epoch)
        if trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


@dataclass
class SearchConfig:
    """The search file, validated. Keys as in the module docstring."""

    base_config: str
    space: dict[str, dict[str, Any]]
    study_name: str = "lesion-search"
    n_trials: int = 20
    timeout_s: float | None = None
    seed: int = 0
    storage: str | None = None
    output: str = "configs/best_search.yaml"
    runs_dir: str = "runs/search"
    pruner: dict[str, int] = field(
        default_factory=lambda: {"n_startup_trials": 3, "n_warmup_steps": 1}
    )
    overrides: dict[str, Any] = field(default_factory=dict)
    wandb_project: str = "skin-lesion"

    @classmethod
    def load(cls, path: str | Path) -> SearchConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read search config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"search config {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with base_config and space")
        known = set(cls.__dataclass_fields__)
        if unknown := sorted(set(raw) - known):
            raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        missing = [k for k in ("base_config", "space") if k not in raw]
        if missing:
            raise ConfigError(f"{path}: missing {missing}; see configs/search.yaml")
        config = cls(**raw)
        config.check(str(path))
        return config

    def check(self, where: str) -> None:
        if not Path(self.base_config).is_file():
            raise ConfigError(f"{where}: base_config {self.base_config} does not exist")
        if not self.space:
            raise ConfigError(f"{where}: 'space' is empty; give at least one parameter")
        for key, spec in self.space.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            if kind not in _TYPES:
                raise ConfigError(f"{where}: space.{key} needs type one of {_TYPES}")
            if kind == "categorical" and not spec.get("choices"):
                raise ConfigError(f"{where}: space.{key} needs a non-empty 'choices' list")
            if kind != "categorical" and not spec.get("low", 0) < spec.get("high", -1):
                raise ConfigError(f"{where}: space.{key} needs low < high")
        if self.n_trials < 1:
            raise ConfigError(f"{where}: n_trials must be at least 1")


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one value per dotted key. Categorical choices may be lists (an image size);
    Optuna stores them as JSON strings."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            values[key] = trial.suggest_float(
                key, spec["low"], spec["high"], log=spec.get("log", False)
            )
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(
                key, spec["low"], spec["high"], log=spec.get("log", False)
            )
        else:
            labels = [json.dumps(c) for c in spec["choices"]]
            values[key] = json.loads(trial.suggest_categorical(key, labels))
    return values


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"model.lr": 1e-3}`` -> ``{"model": {"lr": 1e-3}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (``extra`` wins), without touching ``base``."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def trial_values(config: SearchConfig, sampled: dict[str, Any]) -> dict[str, Any]:
    """Sampled values plus what they imply: a model's shipped ImageNet weights are used when
    the registry has them (``pretrained`` cannot be true for a model without them)."""
    values = {**config.overrides, **sampled}
    if "model.model_name" in sampled and "model.pretrained" not in config.overrides:
        values["model.pretrained"] = get_spec(sampled["model.model_name"]).pretrained
    return values


def _logger(config: SearchConfig, name: str) -> dict[str, Any]:
    # Offline unless WANDB_MODE=online, like every run of the CLI; one group per study.
    return {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": config.wandb_project, "name": name},
        "dict_kwargs": {"group": config.study_name, "job_type": "search"},
    }


def run_trial(trial: Any, config: SearchConfig) -> float:
    """One fit with the trial's values; returns its best ``val/balanced_accuracy``."""
    import optuna  # optional, only for a search; the rest of training runs without it

    global _ACTIVE_TRIAL
    values = trial_values(config, suggest(trial, config.space))
    folder = Path(config.runs_dir) / config.study_name / f"trial_{trial.number:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    layer = merge(
        nested(values),
        {
            "trainer": {
                "default_root_dir": str(folder),
                "limit_test_batches": 0,  # the search must not look at the test split
                "logger": _logger(config, f"{config.study_name}-{trial.number:03d}"),
            }
        },
    )
    (folder / "trial.yaml").write_text(yaml.safe_dump(layer, sort_keys=False))
    args = [
        "fit",
        "--config",
        config.base_config,
        "--config",
        str(folder / "trial.yaml"),
        "--trainer.callbacks+=training.search.TrialPruning",
    ]
    log.info("trial %d: %s", trial.number, values)
    _ACTIVE_TRIAL = trial
    try:
        cli = cli_main(args)
    finally:
        _ACTIVE_TRIAL = None
    trial.set_user_attr("values", values)
    trial.set_user_attr("run_dir", str(folder))
    if any(isinstance(cb, TrialPruning) and cb.pruned for cb in cli.trainer.callbacks):
        raise optuna.TrialPruned()
    best = getattr(cli.trainer.checkpoint_callback, "best_model_score", None)
    if best is None or not math.isfinite(float(best)):
        raise ConfigError(
            f"trial {trial.number} produced no {MONITOR}: the base config must validate "
            "(trainer.limit_val_batches > 0)"
        )
    return float(best)


def run_search(config: SearchConfig) -> tuple[Any, Path]:
    """Run the study; write the best configuration. Returns ``(study, path of the YAML)``."""
    import optuna  # optional, only for a search; the rest of training runs without it

    study = optuna.create_study(
        study_name=config.study_name,
        storage=config.storage,
        load_if_exists=config.storage is not None,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(**config.pruner),
    )
    study.optimize(
        lambda t: run_trial(t, config),
        n_trials=config.n_trials,
        timeout=config.timeout_s,
        catch=(),
    )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(
            f"no trial of {config.study_name} completed (all pruned or failed): "
            "raise n_trials or the pruner's n_startup_trials"
        )
    return study, write_best(config, study.best_trial)


def write_best(config: SearchConfig, best: Any) -> Path:
    """The base config with the best trial's values: a complete ``fit --config`` file."""
    base = yaml.safe_load(Path(config.base_config).read_text()) or {}
    values = best.user_attrs.get("values") or trial_values(config, best.params)
    merged = merge(base, nested(values))
    header = (
        f"# Best of Optuna study {config.study_name!r}: trial {best.number}, "
        f"{MONITOR} = {best.value:.4f}.\n# Base: {config.base_config}; searched: "
        f"{', '.join(config.space)}.\n# Train it: python -m training fit --config {config.output}\n"
    )
    out = Path(config.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(merged, sort_keys=False))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training search``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m training search", description=__doc__)
    p.add_argument("--config", required=True, help="search file, e.g. configs/search.yaml")
    p.add_argument("--n-trials", type=int, help="override the file's n_trials")
    p.add_argument("--output", help="override the file's output YAML")
    args = p.parse_args(argv)
    config = SearchConfig.load(args.config)
    if args.n_trials:
        config.n_trials = args.n_trials
    if args.output:
        config.output = args.output
    study, path = run_search(config)
    best = study.best_trial
    print(f"best trial {best.number}: {MONITOR} {best.value:.4f} with {best.params}")
    print(f"wrote {path}: train it with `python -m training fit --config {path}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
