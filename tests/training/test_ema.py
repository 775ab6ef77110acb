"""training.callbacks.WeightEMA and Checkpoint through the real CLI on real images: the
checkpoints hold the average of the weights step by step, last.ckpt is the last epoch's, the
fit's own test scores the average, and a fit resumed from last.ckpt carries the average on."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch

from tests.training import weight_recorder
from training.callbacks import WeightEMA
from training.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "compact_cnn.yaml"
DECAY = 0.5  # far from 1, so the average and the raw weights differ clearly after 3 steps


def _callbacks(path: Path) -> Path:
    path.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: tests.training.weight_recorder.WeightRecorder\n"
        "    - class_path: training.callbacks.WeightEMA\n"
        f"      init_args: {{decay: {DECAY}}}\n"
    )
    return path


def _fit(run_dir: Path, extra_config: Path, epochs: int, *extra: str) -> object:
    args = [
        "fit",
        f"--config={CONFIG}",
        f"--config={extra_config}",
        "--model.image_size=[48, 64]",
        "--data.limit_per_class=8",
        "--data.num_workers=0",
        "--data.batch_size=16",
        f"--trainer.max_epochs={epochs}",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--checkpoint.save_last=true",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        return cli_main(args)


def _ema(
    steps: list[dict[str, torch.Tensor]],
    start: dict[str, torch.Tensor] | None = None,
    n: int = 0,
) -> dict[str, torch.Tensor]:
    """The average, computed here: the first update copies, each later one blends; ``start``
    is the average after ``n`` updates."""
    avg = None if start is None else {k: v.clone() for k, v in start.items()}
    for weights in steps:
        if avg is None:
            avg = {k: v.clone() for k, v in weights.items()}
        else:
            d = min(DECAY, (1 + n) / (10 + n))  # n updates so far: TensorFlow's warm-up rule
            avg = {k: d * avg[k] + (1 - d) * weights[k] for k in avg}
        n += 1
    assert avg is not None
    return avg


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(want) <= set(got)
    for k, v in want.items():
        torch.testing.assert_close(got[k].float(), v.float(), rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_checkpoints_hold_the_average_and_a_resume_carries_it_on(
    tmp_path: Path, ham_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAM10000_DIR", str(ham_dir))
    monkeypatch.setattr(sys, "argv", ["python -m training"])
    flags = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    extra = _callbacks(tmp_path / "ema.yaml")
    run_dir = tmp_path / "run"
    weight_recorder.SEEN.clear()
    try:
        cli = _fit(run_dir, extra, epochs=2)
        first = list(weight_recorder.SEEN)
        assert len(first) == 6  # 2 epochs x 3 steps

        last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        # last.ckpt is the last epoch's even where it was not the best (training.callbacks.
        # Checkpoint): Lightning alone leaves it at the last epoch that improved.
        best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=False)
        assert (last["epoch"], last["global_step"]) == (1, 6)
        assert best["epoch"] == 0  # with 2 validation batches, balanced accuracy never moved
        floats = set(first[0])
        average = {k: v for k, v in last["state_dict"].items() if k in floats}
        _assert_same(average, _ema(first))  # state_dict: the average, step by step
        _assert_same(last["current_model_state"], first[-1])  # the raw weights beside it
        moved = max(float((average[k] - first[-1][k]).abs().max()) for k in floats)
        assert moved > 1e-4  # the average is not the raw weights

        # The fit's own test scored the weights best.ckpt holds, the average; Lightning's
        # callback alone would have put the raw weights back before testing.
        tested = cli.model.state_dict()  # type: ignore[attr-defined]
        _assert_same(tested, {k: v for k, v in best["state_dict"].items() if k in floats})

        # Resumed for a third epoch: the raw weights go on from the raw ones, the average
        # from the average.
        weight_recorder.SEEN.clear()
        _fit(run_dir, extra, 3, f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
        third = list(weight_recorder.SEEN)
        assert len(third) == 3
        resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        _assert_same(resumed["state_dict"], _ema(third, start=_ema(first), n=len(first)))
        _assert_same(resumed["current_model_state"], third[-1])
    finally:
        torch.use_deterministic_algorithms(flags, warn_only=warn_only)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, 1.5])
def test_a_decay_outside_0_1_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="decay must be in"):
        WeightEMA(decay=decay)
