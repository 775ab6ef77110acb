"""``python -m training ensemble --config configs/ensemble_150.yaml``: an ensemble recipe as one
command.

An ensemble is several fits and one evaluation; run by hand that is four commands and a list of
checkpoint paths to type right. The recipe file names the member fit configs; this command fits
each member that has no finished fit, resumes one that was interrupted (``--ckpt_path last``),
leaves a finished one alone, then averages the members' best checkpoints with ``python -m
training evaluate --model FIRST --ensemble REST`` (the report under ``reports/<name>/``; with
``--export``, exported as one version into ``--repository``). Each step is the same command a
user would type, run as a child process and printed first, so its output and W&B run are the
ones documented for it.

The recipe file:

    name: ens150_ema3              # the report's name (reports/<name>/)
    tta: true                      # also score test-time augmentation (evaluate --tta)
    evaluate: [--target-sensitivity, "0.95"]   # more `evaluate` arguments (optional)
    members:                       # fit configs; their best checkpoints are averaged
      - configs/efficientnet_lite0_150_ema.yaml
      - configs/efficientnet_lite0_150_clinical_ema.yaml

A member's fit is finished when ``<default_root_dir>/summary.json`` holds its validation result
(the fit writes it at its end, after deleting it at its start) and the best checkpoint it names
exists; interrupted when only ``checkpoints/last.ckpt`` exists (the config must save it:
``checkpoint.save_last: true``); else it has not started.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from contracts.errors import ConfigError


@dataclass(frozen=True)
class Member:
    """One fit of the recipe and where its checkpoints go."""

    config: Path
    root: Path

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.ckpt"

    def state(self) -> str:
        """``finished``, ``interrupted`` or ``new`` (module doc)."""
        summary = self.root / "summary.json"
        try:
            done = json.loads(summary.read_text())
        except (OSError, ValueError):
            done = {}
        if isinstance(done, dict) and "val" in done and self.best.is_file():
            return "finished"
        return "interrupted" if self.last.is_file() else "new"

    def fit_args(self) -> list[str]:
        args = ["-m", "training", "fit", "--config", str(self.config)]
        return [*args, "--ckpt_path", "last"] if self.state() == "interrupted" else args


@dataclass(frozen=True)
class Recipe:
    name: str
    members: tuple[Member, ...]
    tta: bool = True
    extra: tuple[str, ...] = ()

    def evaluate_args(self, export: bool, repository: Path | None) -> list[str]:
        first, *rest = (str(m.best) for m in self.members)
        args = ["-m", "training", "evaluate", "--model", first, "--ensemble", *rest]
        args += ["--name", self.name] + (["--tta"] if self.tta else []) + list(self.extra)
        if export:
            args += ["--export", "ensemble"]
            if repository is not None:
                args += ["--repository", str(repository)]
        return args


def read_recipe(path: Path) -> Recipe:
    """The recipe at ``path``; member configs are read relative to the working folder, as
    ``python -m training fit --config`` reads them.

    Raises:
        ConfigError: a missing or malformed file, fewer than two members, a member config that
            is missing, has no ``trainer.default_root_dir``, or shares it with another member
            (their checkpoints would overwrite each other).
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the ensemble recipe {path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("members"), list):
        raise ConfigError(f"{path}: expected a mapping with a list under 'members'")
    unknown = set(raw) - {"name", "members", "tta", "evaluate"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (name, members, tta, evaluate)")
    extra = raw.get("evaluate") or []
    if not isinstance(extra, list):
        raise ConfigError(f"{path}: 'evaluate' is a list of arguments, got {extra!r}")
    if len(raw["members"]) < 2:
        raise ConfigError(f"{path}: an ensemble needs at least two members")
    members, roots = [], {}
    for entry in raw["members"]:
        config = Path(str(entry))
        try:
            fit = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: member {config}: {exc}") from None
        root = ((fit or {}).get("trainer") or {}).get("default_root_dir")
        if not root:
            raise ConfigError(f"{path}: member {config} sets no trainer.default_root_dir")
        if root in roots:
            raise ConfigError(
                f"{path}: members {roots[root]} and {config} both write to {root}: give each "
                "its own trainer.default_root_dir"
            )
        roots[root] = config
        members.append(Member(config, Path(root)))
    name = raw.get("name") or Path(path).stem
    return Recipe(str(name), tuple(members), bool(raw.get("tta", True)), tuple(map(str, extra)))


def _run(args: list[str]) -> None:
    print("+ python " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, *args], check=False)
    if done.returncode:
        raise ConfigError(f"`python {' '.join(args)}` failed (exit status {done.returncode})")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training ensemble",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, required=True, help="the recipe (YAML)")
    p.add_argument("--export", action="store_true", help="export the ensemble as one version")
    p.add_argument("--repository", type=Path, help="with --export (default model_repository)")
    p.add_argument(
        "--dry-run", action="store_true", help="print each member's state and the commands only"
    )
    args = p.parse_args(argv)
    recipe = read_recipe(args.config)
    for member in recipe.members:
        state = member.state()
        print(f"{member.config}: {state} ({member.root})", flush=True)
        if state == "finished":
            continue
        if args.dry_run:
            print("+ python " + " ".join(member.fit_args()), flush=True)
        else:
            _run(member.fit_args())
            if member.state() != "finished":
                raise ConfigError(
                    f"{member.config}: the fit ended without a finished run in {member.root} "
                    "(no validation result in summary.json or no best.ckpt)"
                )
    evaluate = recipe.evaluate_args(args.export, args.repository)
    if args.dry_run:
        print("+ python " + " ".join(evaluate), flush=True)
        return 0
    _run(evaluate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
