"""``python -m tools.prod_runtime``: prove that production's libtorch loads and runs every
exported ``model.pt`` with the outputs of eager PyTorch.

    python -m tools.prod_runtime [--repository model_repository] [--torch 2.5.0]
        [--images DIR] [--max-images 32] [--env-dir DIR] [--rebuild-env]

Production serves ``model.pt`` with NVIDIA's Triton (:data:`PRODUCTION_IMAGE`, the tag of
``deploy/compose.yaml`` and ``deploy/k8s/triton.yaml``), whose PyTorch backend is built on the
NGC PyTorch container of the same release: libtorch :data:`PRODUCTION_LIBTORCH`. Export writes
``model.pt`` with this environment's torch (2.14). So, for every version folder with a
``model.pt`` (ONNX files are not this check's), this tool:

1. builds once, or reuses, a side environment with the PyPI torch closest to production's
   (:data:`DEFAULT_TORCH`, the release of that development line) and numpy, outside the clone
   (:func:`default_env_root`, ``~/.cache/skinlesion/prod-runtime``) so a fresh clone, as CI's,
   reuses it; building it downloads about 2.5 GB and takes 5 GB on disk;
2. resizes real photos (``--images``, default REAL_LESIONS_DIR, else HAM10000_DIR) with
   ``contracts.images.eval_resize`` to the version's ``metadata.json`` input size, here;
3. has the side environment's python (``tools/prod_runtime_worker.py``, isolated: no project
   code, no PYTHONPATH) ``torch.jit.load`` each ``model.pt`` and run it on the batch, three
   times (the JIT optimises the graph after its first calls) and on one image alone, under
   inference mode as the production config asks;
4. compares those outputs with the version's eager model here: the modules export converted,
   rebuilt in Python from ``metadata.json`` with ``model.pt``'s own tensors
   (:func:`rebuild_eager`), or the caller's (``check_repository(eager=...)``); a version whose
   modules are not rebuilt here (an ensemble, the class-activation-map output) is compared
   with its TorchScript run by this environment's torch instead, and its line says so.

One line per version: loaded or not, the outputs compared, the largest difference, PASS/FAIL.
A version passes when the probabilities differ by at most :data:`TOLERANCE` (max abs, float32)
and every other output (the out-of-distribution score, a map) by at most ``SCORE_TOLERANCE``
(relative to ``max(1, |eager|)``, as export's own check of the score). Exit status 0 when all
pass, 1 when one fails (its line names the file and the error), 2 on a usage error (no
versions, no photos, no side environment).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from contracts.errors import ConfigError, DataError
from contracts.labels import NUM_CLASSES
from contracts.metadata import MetadataError, VersionMetadata, read_metadata
from contracts.triton_config import TORCHSCRIPT_FILE
from models.registry import create_classifier
from training.export.ood import (
    KNN_K,
    SCORE_TOLERANCE,
    GatedModel,
    Gaussians,
    Neighbours,
    split_classifier,
)
from training.export.torchscript import default_parity_dir, parity_batch, quiet_torchscript
from training.export.wrapper import LogProbabilities, ProbabilityModel
from training.tta import TTA

ROOT = Path(__file__).resolve().parents[1]
# What production runs (deploy/compose.yaml, deploy/k8s/triton.yaml; a test keeps them equal)
# and the libtorch of its PyTorch backend: NGC PyTorch 24.10 (NVIDIA's release notes and
# framework support matrix; docs/deployment.md, "Which libtorch production runs").
PRODUCTION_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
PRODUCTION_LIBTORCH = "2.5.0a0+e000cf0ad9 (NGC PyTorch 24.10)"
# The PyPI release of production's development line (2.5.0a0 is the 2.5 cycle before its
# release); `--torch 2.4.1` checks the release before it, bracketing the snapshot.
DEFAULT_TORCH = "2.5.0"
SIDE_NUMPY = "numpy==2.1.3"  # a numpy of torch 2.5's time, for .npy batches and outputs
TOLERANCE = 1e-4  # max abs difference of the probabilities, float32
MAX_IMAGES = 32
PASSES = 3
READY_FILE = "prod-runtime-ready.json"
WORKER = Path(__file__).with_name("prod_runtime_worker.py")
ENV_ROOT_VARIABLE = "SKIN_PROD_RUNTIME_DIR"


class SideEnvError(RuntimeError):
    """The side environment could not be built or does not run."""


class RebuildError(ValueError):
    """A version's eager modules cannot be rebuilt from its metadata.json and model.pt."""


# --- the side environment ------------------------------------------------------------------


def default_env_root() -> Path:
    """``$SKIN_PROD_RUNTIME_DIR``, else ``$XDG_CACHE_HOME/skinlesion/prod-runtime`` (``~/.cache``):
    outside the clone, so every clone on a machine (CI's fresh ones too) shares one build."""
    if os.environ.get(ENV_ROOT_VARIABLE):
        return Path(os.environ[ENV_ROOT_VARIABLE])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "skinlesion" / "prod-runtime"


def env_dir(torch_version: str, root: Path | None = None) -> Path:
    """The side environment of ``torch_version`` (for this Python's minor version)."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+){1,2}", torch_version):
        raise ConfigError(f"--torch {torch_version!r}: give a PyPI torch release, e.g. 2.5.0")
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return Path(root or default_env_root()) / f"torch-{torch_version}-{py}"


def _run(args: Sequence[str], what: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise SideEnvError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def side_env(
    torch_version: str = DEFAULT_TORCH,
    root: Path | None = None,
    rebuild: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """The python of the side environment with ``torch==torch_version`` and numpy, built when
    missing (or ``rebuild``), under a lock so that concurrent runs build it once.

    A build writes :data:`READY_FILE` last, with its torch version and how long it took; a
    folder without it (an interrupted build) is built again.

    Raises:
        SideEnvError: pip cannot install it (no network, no wheel for this Python), or the
            installed torch does not import or is another version.
    """
    env = env_dir(torch_version, root)
    python, ready = env / "bin" / "python", env / READY_FILE
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file() and python.exists() and not rebuild:
            return python
        if env.exists():
            shutil.rmtree(env)
        log(f"building the side environment {env} (torch=={torch_version}, {SIDE_NUMPY}) ...")
        start = time.perf_counter()
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(env)], f"python -m venv {env}")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        _run(
            [*pip, "-q", f"torch=={torch_version}", SIDE_NUMPY],
            f"pip install torch=={torch_version}",
        )
        found = _run(
            [str(python), "-I", "-c", "import torch; print(torch.__version__)"], "import torch"
        )
        if found.strip().split("+")[0] != torch_version:
            raise SideEnvError(f"{env} has torch {found.strip()}, not {torch_version}")
        seconds = time.perf_counter() - start
        facts = {"torch": found.strip(), "numpy": SIDE_NUMPY, "seconds": round(seconds, 1)}
        ready.write_text(json.dumps(facts) + "\n")
        log(f"built {env} in {seconds:.0f} s (torch {found.strip()})")
        return python


# --- the eager reference ---------------------------------------------------------------------


def load_tensors(model: nn.Module, scripted: nn.Module) -> None:
    """Give ``model`` every parameter and buffer of ``scripted`` (same names; shapes may differ
    from ``model``'s placeholders).

    Raises:
        RebuildError: the two hold different names: they are not the same modules.
    """
    theirs, ours = scripted.state_dict(), model.state_dict()
    if set(theirs) != set(ours):
        differ = sorted(set(theirs) ^ set(ours))
        raise RebuildError(
            f"its modules hold other tensors than model.pt ({len(differ)} names differ, e.g. "
            f"{differ[0]})"
        )
    for key, value in theirs.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        tensor = value.detach().clone()
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
        else:
            owner._buffers[leaf] = tensor


def rebuild_eager(version: Path, scripted: nn.Module) -> nn.Module:
    """The version's served module as export built it, in eager PyTorch: the classes named by
    ``metadata.json`` (network, temperature, TTA, the gate's score), holding ``model.pt``'s own
    parameters and buffers (which are the checkpoint's and the gate's).

    Raises:
        RebuildError: an ensemble (its members are not rebuilt here), an unknown network or
            score, or modules whose tensors are not model.pt's.
    """
    meta = read_metadata(version)
    extra = meta.extra or {}
    if "ensemble" in extra:
        raise RebuildError("an ensemble's members are not rebuilt here")
    name = meta.model_name or ""
    tta = extra.get("tta")
    if tta:
        name = name.removeprefix("tta(").removesuffix(")")
    try:
        base = create_classifier(name, NUM_CLASSES, dropout=0.0).eval()
    except (ConfigError, KeyError, ValueError) as exc:
        raise RebuildError(f"network {meta.model_name!r}: {exc}") from None
    served: nn.Module = base
    if tta:
        inner = ProbabilityModel(base, float(tta.get("temperature", 1.0)))
        served = LogProbabilities(TTA(inner, tta["ops"], tuple(meta.input_size)))
    if meta.has_ood_output:
        model: nn.Module = _gated(meta, base, served if tta else None)
    else:
        model = ProbabilityModel(served, meta.temperature)
    load_tensors(model, scripted)
    if isinstance(model, GatedModel) and model.kind == "knn":
        k = int(((meta.gate or {}).get("ood") or {}).get("k", KNN_K))
        model.k = min(k, int(model.bank.shape[1]))
    return model.eval()


def _gated(meta: VersionMetadata, base: nn.Module, served: nn.Module | None) -> GatedModel:
    """A :class:`GatedModel` of the version's score kind with placeholder statistics (the real
    ones come from model.pt)."""
    kind = ((meta.gate or {}).get("ood") or {}).get("score")
    one = np.ones((1, 1))
    gaussians = Gaussians(one, one, (0,), 0.0, 1) if kind == "mahalanobis" else None
    neighbours = Neighbours(one, one) if kind == "knn" else None
    try:
        return GatedModel(
            split_classifier(base),  # a copy: ``served`` keeps ``base`` itself
            kind,
            meta.temperature,
            gaussians,
            served,
            neighbours,
        )
    except ConfigError as exc:
        raise RebuildError(f"its gate: {exc}") from None


# --- the check ------------------------------------------------------------------------------


@dataclass
class Result:
    """One version's check.

    Attributes:
        name: ``<model>/<version>``.
        path: its ``model.pt``.
        checked: False when its metadata.json could not be read (nothing run).
        loaded: whether the side environment's torch loaded it.
        outputs: a name for each tensor the model returns (``metadata.json``'s Triton names
            by their ``__<index>``; ``output <i>`` for one no config lists).
        images: photos in the batch.
        diffs: per output, the largest difference from the reference over the batch's first
            and last call and the single image: max abs for the probabilities (output 0),
            max relative to ``max(1, |reference|)`` for the others (score, map). Empty when
            not compared.
        main_torch_diffs: the same, against this environment's TorchScript of the same file.
        reference: what the outputs were compared with.
        error: why it failed to load or run, or how the outputs disagree.
        side_torch: the side environment's torch version.
    """

    name: str
    path: Path
    checked: bool = True
    loaded: bool = False
    outputs: list[str] = field(default_factory=list)
    images: int = 0
    diffs: list[float] = field(default_factory=list)
    main_torch_diffs: list[float] = field(default_factory=list)
    reference: str = ""
    error: str | None = None
    side_torch: str = ""

    @property
    def max_abs_diff(self) -> float | None:
        """Of the probabilities."""
        return self.diffs[0] if self.diffs else None

    @property
    def other_rel_diff(self) -> float | None:
        """The largest of the other outputs' relative differences (None without others)."""
        return _worst(iter(self.diffs[1:])) if len(self.diffs) > 1 else None

    @property
    def passed(self) -> bool:
        return not self.error and within(self.diffs)

    def line(self) -> str:
        """The report line: loaded, outputs compared, largest differences, PASS/FAIL."""
        verdict = "PASS" if self.passed else "FAIL"
        where = f"{verdict} {self.name}: {self.path}"
        if not self.checked:
            return f"{where}: not checked: {self.error}"
        if not self.loaded:
            return f"{where}: NOT loaded by torch {self.side_torch}: {self.error}"
        if not self.diffs:
            return f"{where}: loaded by torch {self.side_torch}, {self.error}"
        found = [
            f"{name} max {'abs' if i == 0 else 'rel'} diff {d:.2g}"
            for i, (name, d) in enumerate(zip(self.outputs, self.diffs, strict=True))
        ]
        main = (
            f"; vs its TorchScript in torch {torch.__version__}: "
            f"{_worst(iter(self.main_torch_diffs)):.2g}"
            if self.main_torch_diffs and "TorchScript" not in self.reference
            else ""
        )
        why = f": {self.error}" if self.error else ""
        return (
            f"{verdict} {self.name}: loaded by torch {self.side_torch}; {len(self.diffs)} "
            f"output(s) compared with {self.reference} on {self.images} photos (batch "
            f"x{PASSES} and one alone): {', '.join(found)} (tolerance {TOLERANCE:g} abs, "
            f"{SCORE_TOLERANCE:g} rel){main}{why}"
        )


def within(diffs: Sequence[float]) -> bool:
    """Whether per-output differences (:func:`compare`) are within the tolerances; NaN never."""
    if not diffs or not diffs[0] <= TOLERANCE:
        return False
    return all(d <= SCORE_TOLERANCE for d in diffs[1:])


def find_models(repository: Path) -> list[Path]:
    """Every ``model.pt`` of a version folder under ``repository``: a repository
    (``<model>/<version>/model.pt``), a model folder or one version folder; by model, then
    version number."""
    repository = Path(repository)
    found = [repository / TORCHSCRIPT_FILE] if (repository / TORCHSCRIPT_FILE).is_file() else []
    for pattern in (f"[0-9]*/{TORCHSCRIPT_FILE}", f"*/[0-9]*/{TORCHSCRIPT_FILE}"):
        found += [p for p in repository.glob(pattern) if p.parent.name.isdigit()]
    return sorted(set(found), key=lambda p: (p.parent.parent.name, int(p.parent.name)))


def _tuple(out: object) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)  # type: ignore[arg-type]


def _worst(values: Iterator[float]) -> float:
    """The largest value, NaN winning."""
    worst = 0.0
    for v in values:
        if v != v or v > worst:
            worst = v
            if v != v:
                break
    return worst


def compare(
    side: Mapping[str, np.ndarray], reference: Mapping[str, tuple[np.ndarray, ...]]
) -> list[float]:
    """Per output, the largest difference over the runs: max abs for output 0 (the
    probabilities), max relative to ``max(1, |reference|)`` for the others; NaN when any is.

    Args:
        side: the worker's arrays (``batch_first_0``, ``batch_last_0``, ``single_0``, ...).
        reference: ``{"batch": outputs, "single": outputs}`` of the reference model.

    Raises:
        ValueError: another number of outputs or another shape.
    """
    runs = {"batch_first": "batch", "batch_last": "batch", "single": "single"}
    n = len(reference["batch"])
    side_n = len({k.rsplit("_", 1)[1] for k in side})
    if side_n != n:
        raise ValueError(f"it returns {side_n} output(s), the reference {n}")
    diffs = []
    for j in range(n):
        found = []
        for run, ref_run in runs.items():
            got, want = side[f"{run}_{j}"], reference[ref_run][j]
            if got.shape != want.shape:
                raise ValueError(
                    f"output {j} has shape {list(got.shape)}, the reference {list(want.shape)}"
                )
            a, b = got.astype(np.float64), want.astype(np.float64)
            d = np.abs(a - b) if j == 0 else np.abs(a - b) / np.maximum(np.abs(b), 1.0)
            found.append(float(np.max(d)) if d.size else 0.0)
        diffs.append(_worst(iter(found)))
    return diffs


def _outputs(model: nn.Module, images: np.ndarray) -> dict[str, tuple[np.ndarray, ...]]:
    batch = torch.from_numpy(images)
    with torch.inference_mode(), quiet_torchscript():
        return {
            "batch": tuple(t.float().numpy() for t in _tuple(model(batch))),
            "single": tuple(t.float().numpy() for t in _tuple(model(batch[:1]))),
        }


def _run_worker(python: Path, jobs: list[dict[str, str]], folder: Path) -> dict[str, object]:
    job = {"result": str(folder / "result.json"), "passes": PASSES, "models": jobs}
    (folder / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [str(python), "-I", str(WORKER), str(folder / "job.json")],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
        env=env,
    )
    if done.returncode != 0 or not (folder / "result.json").is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise SideEnvError(
            f"the side environment's worker {python} failed ({done.returncode}):\n{tail}"
        )
    report: dict[str, object] = json.loads((folder / "result.json").read_text())
    return report


def check_repository(
    repository: Path,
    torch_version: str = DEFAULT_TORCH,
    images_dir: Path | None = None,
    max_images: int = MAX_IMAGES,
    env_root: Path | None = None,
    eager: Mapping[Path, nn.Module] | None = None,
) -> list[Result]:
    """Check every ``model.pt`` under ``repository`` (module doc); one :class:`Result` each.

    Args:
        eager: the version's eager module by version folder (what export converted); a
            version not in it gets :func:`rebuild_eager`.

    Raises:
        ConfigError: no ``model.pt`` under ``repository``, or no photos configured.
        DataError: no photos in ``images_dir``.
        SideEnvError: the side environment cannot be built or run.
    """
    models = find_models(repository)
    if not models:
        raise ConfigError(f"no {TORCHSCRIPT_FILE} under {repository}: export a model first")
    try:
        photos = Path(images_dir) if images_dir else default_parity_dir()
    except ConfigError:
        raise ConfigError(
            "no real photos to run the models on: pass --images DIR (JPEG/PNG lesion photos) "
            "or set REAL_LESIONS_DIR or HAM10000_DIR"
        ) from None
    given = {Path(k).resolve(): v for k, v in (eager or {}).items()}
    python = side_env(torch_version, env_root)
    results, references, jobs = [], [], []
    with tempfile.TemporaryDirectory(prefix="prod-runtime-") as tmp:
        folder = Path(tmp)
        for i, path in enumerate(models):
            version = path.parent
            result = Result(f"{version.parent.name}/{version.name}", path)
            results.append(result)
            try:
                meta = read_metadata(version)
            except MetadataError as exc:
                result.error, result.checked = f"its metadata.json: {exc}", False
                references.append(None)
                continue
            images = parity_batch(photos, tuple(meta.input_size), max_images)
            result.images, result.outputs = len(images), meta.output_names()
            np.save(folder / f"{i}.npy", images)
            jobs.append(
                {
                    "model": str(path),
                    "images": str(folder / f"{i}.npy"),
                    "out": str(folder / f"{i}.npz"),
                }
            )
            references.append((version, images, len(jobs) - 1))
        report = (
            _run_worker(python, jobs, folder) if jobs else {"torch": torch_version, "models": []}
        )
        side_results = report["models"]
        assert isinstance(side_results, list)
        for result, ref in zip(results, references, strict=True):
            result.side_torch = str(report["torch"])
            if ref is None:
                continue
            version, images, j = ref
            outcome = side_results[j]
            result.loaded = "error" not in outcome or outcome["error"].startswith("forward")
            if "error" in outcome:
                result.error = outcome["error"]
                continue
            _compare(result, version, images, dict(np.load(folder / f"{j}.npz")), given)
    return results


def _compare(
    result: Result,
    version: Path,
    images: np.ndarray,
    side: dict[str, np.ndarray],
    given: Mapping[Path, nn.Module],
) -> None:
    """Fill ``result``'s differences against the eager model (given or rebuilt), else against
    this environment's TorchScript of the same file."""
    with quiet_torchscript():
        scripted = torch.jit.load(str(result.path), map_location="cpu").eval()
    main = _outputs(scripted, images)
    listed = {int(n.rsplit("__", 1)[1]): n for n in result.outputs if "__" in n}
    result.outputs = [listed.get(i, f"output {i}") for i in range(len(main["batch"]))]
    with contextlib.suppress(ValueError):  # the comparison with eager below says why
        result.main_torch_diffs = compare(side, main)
    reference: dict[str, tuple[np.ndarray, ...]] | None = None
    if version.resolve() in given:
        reference = _outputs(given[version.resolve()], images)
        result.reference = "eager (export's own module)"
    else:
        try:
            reference = _outputs(rebuild_eager(version, scripted), images)
            result.reference = "eager (rebuilt from metadata.json with model.pt's tensors)"
        except Exception as exc:  # noqa: BLE001 - any failure to rebuild: compare with the file
            why = exc if isinstance(exc, RebuildError) else f"{type(exc).__name__}: {exc}"
            result.reference = f"its TorchScript in torch {torch.__version__} (no eager: {why})"
    try:
        result.diffs = compare(side, reference if reference is not None else main)
    except ValueError as exc:
        result.error = f"{result.path}: {exc}"
        return
    if result.passed:
        return
    if within(result.main_torch_diffs):
        result.error = (
            f"{result.path} differs from eager over the tolerance in torch {result.side_torch} "
            f"and in torch {torch.__version__} alike: the file is not the eager model (export "
            "it again)"
        )
    else:
        result.error = (
            f"{result.path}: torch {result.side_torch} computes other outputs than eager and "
            f"than torch {torch.__version__}: production's libtorch would not serve what "
            "export checked"
        )


def triton_images(
    files: Sequence[Path] = (ROOT / "deploy/compose.yaml", ROOT / "deploy/k8s/triton.yaml"),
) -> dict[str, str]:
    """``{file: image}`` of the Triton image each deployment file runs."""
    found = {}
    for f in files:
        m = re.search(r"image:\s*(\S*tritonserver\S*)", Path(f).read_text())
        found[str(f)] = m.group(1) if m else ""
    return found


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.prod_runtime", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument(
        "--torch",
        default=DEFAULT_TORCH,
        help="PyPI torch release standing in for production's libtorch",
    )
    p.add_argument(
        "--images",
        type=Path,
        help="folder of real photos (default: REAL_LESIONS_DIR, else HAM10000_DIR)",
    )
    p.add_argument("--max-images", type=int, default=MAX_IMAGES)
    p.add_argument(
        "--env-dir",
        type=Path,
        help=f"where side environments live (default: ${ENV_ROOT_VARIABLE}, else "
        "~/.cache/skinlesion/prod-runtime)",
    )
    p.add_argument("--rebuild-env", action="store_true", help="build the side environment again")
    args = p.parse_args(argv)
    print(
        f"production: {PRODUCTION_IMAGE}, PyTorch backend libtorch {PRODUCTION_LIBTORCH}; "
        f"standing in for it: torch {args.torch} from PyPI",
        flush=True,
    )
    try:
        if args.rebuild_env:
            side_env(args.torch, args.env_dir, rebuild=True)
        results = check_repository(
            args.repository, args.torch, args.images, args.max_images, args.env_dir
        )
    except (ConfigError, DataError, SideEnvError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(r.line(), flush=True)
    failed = [r for r in results if not r.passed]
    if failed:
        print(
            f"prod-runtime: {len(failed)} of {len(results)} model.pt FAIL in torch {args.torch}: "
            + ", ".join(str(r.path) for r in failed),
            file=sys.stderr,
        )
        return 1
    print(
        f"prod-runtime: all {len(results)} model.pt load in torch {args.torch} and give their "
        "reference's outputs within the tolerances"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
