"""The production load path (``python -m tools.prod_runtime``): every exported ``model.pt``
loaded and run by the torch that production's Triton image carries, and compared with eager.

The slow tests export a fresh small model the way ``python -m training export`` does, with the
gate (the knn out-of-distribution score), and its TTA variant, keep the eager modules export
checked against, and run the real check: a side environment with torch 2.5.0 from PyPI (built
once per machine outside the clone, about 2 minutes and 5 GB; then reused), loading the files in
its own process. Corrupted versions show that the check fails, naming the file.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from contracts.images import index_images
from contracts.metadata import read_metadata
from tools.prod_runtime import (
    DEFAULT_TORCH,
    PRODUCTION_IMAGE,
    TOLERANCE,
    Result,
    check_repository,
    compare,
    rebuild_eager,
    triton_images,
    within,
)
from training.export.ood import SCORE_TOLERANCE

ROOT = Path(__file__).resolve().parents[2]
GATE_LESIONS_PER_CLASS = 100  # as tests/fixtures_gate.py: about 1,000 HAM10000 images
GATE_IMAGES = 300


def test_the_deployments_run_the_image_whose_libtorch_the_check_stands_for() -> None:
    """A new Triton tag in compose or k8s without a new check of its libtorch fails here."""
    images = triton_images()
    assert set(images.values()) == {PRODUCTION_IMAGE}, images
    assert not PRODUCTION_IMAGE.endswith(":latest")


def test_a_nan_or_another_shape_is_never_a_pass() -> None:
    probs, score = np.full((2, 7), 1 / 7, np.float32), np.array([[0.5], [40.0]], np.float32)
    ref = {"batch": (probs, score), "single": (probs[:1], score[:1])}
    side = {"batch_first_0": probs, "batch_last_0": probs.copy(), "single_0": probs[:1]}
    shifted = score + np.array([[0.0], [0.004]], np.float32)
    side |= {"batch_first_1": score, "batch_last_1": shifted, "single_1": score[:1]}
    diffs = compare(side, ref)  # the score relative to max(1, |eager|): 0.004 / 40
    assert diffs == [0.0, pytest.approx(1e-4, rel=1e-2)] and within([0.0, 0.99e-4])
    side["batch_last_0"][1, 3] = np.nan
    diffs = compare(side, ref)
    assert diffs[0] != diffs[0] and not within(diffs)
    assert not Result("m/1", Path("model.pt"), loaded=True, diffs=diffs).passed
    side["single_1"] = np.zeros((1, 2), np.float32)
    with pytest.raises(ValueError, match="shape"):
        compare(side, ref)


@pytest.fixture(scope="module")
def fresh(
    tmp_path_factory: pytest.TempPathFactory,
    served_checkpoint: Path,
    real_lesions_dir: Path,
    ham_dir: Path,
) -> tuple[Path, dict[Path, nn.Module]]:
    """``served_checkpoint`` exported with the knn gate as version 1 and its TTA (4 flips) with
    the same gate as version 2, by export's own writer (its parity check included); and the
    eager module of each, the one export converted and checked."""
    from tests.factories import ham_layout
    from training.export import export_model, load_checkpoint, parity_images
    from training.export.gate import gate_for_checkpoint
    from training.export.wrapper import LogProbabilities, ProbabilityModel
    from training.tta import TTA

    tmp = tmp_path_factory.mktemp("prod-runtime")
    data = ham_layout(tmp / "gate-data", ham_dir, GATE_LESIONS_PER_CLASS)
    loaded = load_checkpoint(served_checkpoint)
    size = loaded.input_size
    photos = parity_images(real_lesions_dir, size)
    gate = gate_for_checkpoint(
        served_checkpoint, loaded.classifier, size, data, max_images=GATE_IMAGES
    )
    assert gate is not None and gate.metadata["ood"]["score"] == "knn"
    repo = tmp / "repository"
    metadata = dataclasses.replace(loaded.metadata, gate=gate.metadata)
    v1 = export_model(loaded.classifier, repo, size, photos, metadata, gated=gate.model)
    tta = TTA(ProbabilityModel(loaded.classifier, 1.0), input_size=size)
    served = LogProbabilities(tta)
    # What compute_gate(served=...) builds for a TTA variant (training.export.variants): the
    # same detector and bank (the score is the network's), serving the TTA's probabilities.
    gated_tta = copy.deepcopy(gate.model)
    gated_tta.classifier, gated_tta.separate = served, True
    tta_metadata = dataclasses.replace(
        metadata,
        model_name=f"tta({loaded.metadata.model_name})",
        extra={
            "tta": {"ops": list(tta.ops), "temperature": 1.0, "temperature_after_averaging": 1.0}
        },
    )
    v2 = export_model(served, repo, size, photos, tta_metadata, gated=gated_tta.eval())
    return repo, {v1: gate.model, v2: gated_tta}


@pytest.mark.slow
def test_production_torch_loads_every_version_and_gives_export_s_eager_outputs(
    fresh: tuple[Path, dict[Path, nn.Module]], real_lesions_dir: Path
) -> None:
    repo, eager = fresh
    results = check_repository(repo, images_dir=real_lesions_dir, eager=eager)
    for r in results:
        print(r.line())
    assert [r.name for r in results] == ["skin_lesion/1", "skin_lesion/2"]
    for r in results:
        assert r.passed, r.line()
        assert r.loaded and r.side_torch.startswith(DEFAULT_TORCH)
        assert r.images == len(index_images(real_lesions_dir))  # every photo, under MAX_IMAGES
        assert r.reference == "eager (export's own module)"
        assert r.outputs == read_metadata(r.path.parent).output_names()
        assert r.outputs[:2] == ["probabilities__0", "ood_score__1"]
        assert r.max_abs_diff is not None and r.max_abs_diff <= TOLERANCE
        assert r.other_rel_diff is not None and r.other_rel_diff <= SCORE_TOLERANCE


@pytest.mark.slow
def test_the_rebuilt_eager_model_is_the_one_export_checked(
    fresh: tuple[Path, dict[Path, nn.Module]], real_lesions_dir: Path
) -> None:
    """What the command line compares with (no checkpoint at hand) computes as export's own
    eager module does, for the gated network and the gated TTA alike."""
    from training.export import parity_images, quiet_torchscript

    _, eager = fresh
    for version, module in eager.items():
        with quiet_torchscript():
            scripted = torch.jit.load(str(version / "model.pt"))
        rebuilt = rebuild_eager(version, scripted)
        images = torch.from_numpy(
            parity_images(real_lesions_dir, read_metadata(version).input_size)
        )
        with torch.no_grad():
            for got, want in zip(rebuilt(images), module(images), strict=True):
                assert torch.equal(got, want), version


def _cli(repo: Path, photos: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.prod_runtime",
            "--repository",
            str(repo),
            "--images",
            str(photos),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.slow
def test_the_command_passes_a_good_repository_and_names_a_file_production_cannot_load(
    fresh: tuple[Path, dict[Path, nn.Module]], real_lesions_dir: Path, tmp_path: Path
) -> None:
    repo, _ = fresh
    good = _cli(repo, real_lesions_dir)
    print(good.stdout)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "PASS skin_lesion/1" in good.stdout and "PASS skin_lesion/2" in good.stdout
    assert "rebuilt from metadata.json" in good.stdout

    broken = tmp_path / "repository"
    shutil.copytree(repo, broken)
    model = broken / "skin_lesion" / "2" / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a truncated copy
    bad = _cli(broken, real_lesions_dir)
    print(bad.stdout, bad.stderr)
    assert bad.returncode == 1
    assert "PASS skin_lesion/1" in bad.stdout
    assert f"FAIL skin_lesion/2: {model}: NOT loaded by torch {DEFAULT_TORCH}" in bad.stdout
    assert "torch.jit.load failed" in bad.stdout and str(model) in bad.stderr


@pytest.mark.slow
def test_a_model_pt_that_computes_other_outputs_than_eager_fails(
    fresh: tuple[Path, dict[Path, nn.Module]], real_lesions_dir: Path, tmp_path: Path
) -> None:
    """One output corrupted in each version (the probabilities of 1, the OOD score of 2) while
    the eager modules stay export's: the check fails on the numbers, naming the file."""
    from training.export import quiet_torchscript

    repo, eager = fresh
    broken = tmp_path / "repository"
    shutil.copytree(repo, broken)
    given = {}
    for version, tensor in ((1, "detector.head.bias"), (2, "scales")):
        folder = broken / "skin_lesion" / str(version)
        with quiet_torchscript():
            scripted = torch.jit.load(str(folder / "model.pt"))
            with torch.no_grad():
                scripted.state_dict()[tensor][0] += 0.5  # one class's logit, one scale
            scripted.save(str(folder / "model.pt"))
        given[folder] = eager[repo / "skin_lesion" / str(version)]
    results = check_repository(broken, images_dir=real_lesions_dir, eager=given)
    for r in results:
        print(r.line())
    first, second = results
    assert all(r.loaded and not r.passed for r in results)
    assert first.max_abs_diff is not None and first.max_abs_diff > TOLERANCE
    assert second.max_abs_diff is not None and second.max_abs_diff <= TOLERANCE
    assert second.other_rel_diff is not None and second.other_rel_diff > SCORE_TOLERANCE
    for r in results:
        assert str(r.path) in (r.error or "") and r.line().startswith("FAIL")
