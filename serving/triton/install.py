"""Where the ``nvidia-pytriton`` wheel keeps ``tritonserver``, and the backend folder it needs.

Found without importing pytriton (see ``../shared/notes/triton-local.md``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = (
    "install it with `.venv/bin/pip install --no-deps nvidia-pytriton==0.7.0` (make install)"
)


class TritonServerError(RuntimeError):
    """The local Triton cannot be set up, started or reached; the message says how to fix it."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the server, its libraries, the Python backend and the stub."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_install(python: str | None = None) -> TritonInstall:
    """Locate the server files of the ``nvidia-pytriton`` wheel without importing pytriton.

    Args:
        python: ``"major.minor"`` whose backend stub to use; default: the running Python's.

    Raises:
        TritonServerError: the wheel, or one of its files, is missing.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(f"the nvidia-pytriton wheel is not installed: {INSTALL_HINT}")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        libs=package.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (install.binary, install.libs, install.python_backend, install.stub):
        if not path.exists():
            raise TritonServerError(f"{path} is missing (Python {version}): {INSTALL_HINT}")
    return install


def prepare_backends(install: TritonInstall, cache_dir: Path) -> Path:
    """A ``--backend-directory`` whose ``python/`` holds the backend library, utils and stub.

    Triton looks for the stub next to ``libtriton_python.so``, not in the wheel's stubs folder.

    Args:
        install: the wheel's files.
        cache_dir: the folder under which ``backends/python`` is (re)filled.

    Returns:
        The ``backends`` folder to pass as ``--backend-directory``.
    """
    target = Path(cache_dir) / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for source in [*install.python_backend.glob("*.so"), *install.python_backend.glob("*.py")]:
        _copy_if_changed(source, target / source.name)
    _copy_if_changed(install.stub, target / install.stub.name)
    return target.parent


def _copy_if_changed(source: Path, target: Path) -> None:
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(source, tmp)
        os.replace(tmp, target)


def server_environment(install: TritonInstall) -> dict[str, str]:
    """This process's environment with the wheel's libraries on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ)
    paths = [str(install.libs)]
    # The stub embeds libpython: prefer the running interpreter's, so stdlib versions match.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and list(Path(libdir).glob("libpython3*.so*")):
        paths.append(libdir)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*paths, env.get("LD_LIBRARY_PATH", "")])
    return env
