"""`make run` and `make test` set up a fresh machine themselves (tools/setup_system.sh): a Python
3.11 for .venv, and for the tests the system packages they drive (PostgreSQL, Chromium,
chromedriver, docker-compose), installed as root with apt-get or else named with the command to
run, before anything else happens.

The real script runs on a machine the test lays out: a PATH of a few chosen programs, and for the
absolute paths the tests drive (/usr/lib/postgresql/*/bin/initdb, /usr/bin/chromium, ...) a root
given by SYSTEM_CHECK_ROOT. Nothing is installed: where apt-get must be there, a stand-in records
how it was called."""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "setup_system.sh"
BASH = "/bin/bash"  # what the Makefile's SHELL is
PACKAGES = ("postgresql", "chromium", "chromium-driver", "docker-compose")  # in install order
# Where each package's file is, under the machine's root ("" for docker-compose: on PATH).
FILES = {
    "postgresql": "usr/lib/postgresql/15/bin/initdb",
    "chromium": "usr/bin/chromium",
    "chromium-driver": "usr/bin/chromedriver",
    "docker-compose": "",
}
IS_ROOT = os.geteuid() == 0
SUDO = "" if IS_ROOT else "sudo "


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def machine(where: Path, lacking: set[str]) -> tuple[Path, Path]:
    """A root and a PATH folder holding every package's file but those of ``lacking``."""
    root, bindir = where / "root", where / "bin"
    root.mkdir(parents=True, exist_ok=True)
    bindir.mkdir(parents=True, exist_ok=True)
    for package in set(PACKAGES) - lacking:
        executable(root / FILES[package] if FILES[package] else bindir / package)
    return root, bindir


def install_line(*packages: str) -> str:
    return f"    {SUDO}apt-get update && {SUDO}apt-get install -y {' '.join(packages)}"


def run(*args: str | Path, env: dict[str, str], user: str | None = None):
    cmd = [BASH, str(SCRIPT), *map(str, args)]
    if user:
        cmd = [shutil.which("runuser") or "runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)


def make(*args: str, env: dict[str, str]):
    """`make -C ROOT ARGS` with only ``env`` (no MAKEFLAGS of a make running pytest)."""
    return subprocess.run(
        [shutil.which("make") or "make", "-C", str(ROOT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def packages_here() -> list[str]:
    """What this machine lacks, looked at as the tests that drive the packages look."""
    have = {
        "postgresql": bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        "chromium": os.access("/usr/bin/chromium", os.X_OK),
        "chromium-driver": os.access("/usr/bin/chromedriver", os.X_OK),
        "docker-compose": shutil.which("docker-compose") is not None,
    }
    return [p for p in PACKAGES if not have[p]]


def py_version(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


@pytest.fixture(scope="module")
def other_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A Python that is not 3.11 and its version: a real one of this machine when there is one
    (found through pyenv's shims too), else a stand-in that answers as 3.12 does."""
    for name in ("python3.12", "python3.13", "python3.10", "python3.9", "python3.8"):
        found = shutil.which(name)
        if not found:
            continue
        done = subprocess.run(
            [found, "-c", "import sys; print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        real = done.stdout.strip()
        if done.returncode == 0 and real and py_version(real) not in ("", "3.11"):
            return Path(real), py_version(real)
    fake = executable(tmp_path_factory.mktemp("py") / "python3.12", "#!/bin/sh\necho 3.12\n")
    return fake, "3.12"


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A folder the user `nobody` can read and write (pytest's tmp_path is root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="skin-setup-"))
    where.chmod(0o777)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


# --- the system packages --------------------------------------------------------------------


def test_here_everything_is_present_so_it_exits_0_at_once_and_installs_nothing(tmp_path):
    lacking = packages_here()
    if lacking:
        pytest.skip(f"this machine lacks {lacking}: `make test` installs them first")
    log = tmp_path / "apt-get.log"
    executable(tmp_path / "bin" / "apt-get", f'#!/bin/sh\necho "$*" >> {log}\n')
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    start = time.perf_counter()
    done = run("packages", env=env)
    took = time.perf_counter() - start
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not log.exists(), f"apt-get was run: {log.read_text()}"
    assert took < 1.0, f"the check took {took:.2f} s"


@pytest.mark.parametrize("package", PACKAGES)
def test_one_package_missing_without_apt_get_stops_naming_exactly_it(tmp_path, package):
    root, bindir = machine(tmp_path, lacking={package})
    done = run("packages", env={"PATH": str(bindir), "SYSTEM_CHECK_ROOT": str(root)})
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert install_line(package) in lines, done.stderr
    assert [line for line in lines if "install -y" in line] == [install_line(package)]
    missing = [line.strip() for line in lines if line.startswith("    ") and "(no " in line]
    assert [m.split()[0] for m in missing] == [package]
    # It ran nothing: a PATH without apt-get (or anything else) would have said so.
    assert "not found" not in done.stderr
    assert done.stdout == ""


def test_all_missing_named_in_one_command_and_told_how_to_skip(tmp_path):
    root, bindir = machine(tmp_path, lacking=set(PACKAGES))
    done = run("packages", env={"PATH": str(bindir), "SYSTEM_CHECK_ROOT": str(root)})
    assert done.returncode == 1
    assert install_line(*PACKAGES) in done.stderr.splitlines(), done.stderr
    assert "SKIP_SYSTEM_CHECK=1" in done.stderr
    # The same machine with the check skipped passes, and says it was skipped.
    skipped = run(
        "packages",
        env={"PATH": str(bindir), "SYSTEM_CHECK_ROOT": str(root), "SKIP_SYSTEM_CHECK": "1"},
    )
    assert skipped.returncode == 0
    assert "not checked" in skipped.stderr


def test_not_root_with_apt_get_gets_the_sudo_command_and_nothing_is_installed(
    world_readable_dir,
):
    """As a user who cannot install (`nobody` when the test runs as root) with apt-get there."""
    where = world_readable_dir
    root, bindir = machine(where, lacking={"chromium", "docker-compose"})
    log = where / "apt-get.log"
    executable(bindir / "apt-get", f'#!/bin/sh\necho "$*" >> {log}\n')
    for path in (root, bindir, *root.rglob("*")):
        path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
    env = {"PATH": str(bindir), "SYSTEM_CHECK_ROOT": str(root)}
    user = None
    if IS_ROOT:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: no way to be another user")
        user = "nobody"
        readable = subprocess.run(
            [
                shutil.which("runuser") or "runuser",
                "-u",
                user,
                "--",
                BASH,
                "-c",
                f"test -r {SCRIPT}",
            ],
            check=False,
        )
        if readable.returncode != 0:
            pytest.skip(f"`nobody` cannot read {SCRIPT}")
    done = run("packages", env=env, user=user)
    assert done.returncode == 1, done.stderr
    assert (
        "    sudo apt-get update && sudo apt-get install -y chromium docker-compose"
        in done.stderr.splitlines()
    ), done.stderr
    assert "installs them itself" in done.stderr
    assert not log.exists(), f"apt-get was run: {log.read_text()}"


FAKE_APT = """#!{python}
# A stand-in for apt-get: records how it was called and, when told to, "installs" by laying
# the package's file where the check looks.
import os, sys
from pathlib import Path
here = Path(sys.argv[0]).resolve().parent
with open(here.parent / "apt-get.log", "a") as log:
    log.write(os.environ.get("DEBIAN_FRONTEND", "-") + " " + " ".join(sys.argv[1:]) + "\\n")
files = {files!r}
if {really!r} and "install" in sys.argv:
    for package in sys.argv[sys.argv.index("install") + 1:]:
        if package in files:
            target = (Path(os.environ["SYSTEM_CHECK_ROOT"]) / files[package]
                      if files[package] else here / package)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("#!/bin/sh\\n")
            target.chmod(0o755)
"""


@pytest.mark.skipif(not IS_ROOT, reason="installs only as root")
@pytest.mark.parametrize("really", [True, False], ids=["installed", "apt-get-installs-nothing"])
def test_root_with_apt_get_installs_exactly_the_missing_packages(tmp_path, really):
    root, bindir = machine(tmp_path, lacking={"chromium", "docker-compose"})
    executable(
        bindir / "apt-get", FAKE_APT.format(python=sys.executable, files=FILES, really=really)
    )
    env = {"PATH": str(bindir), "SYSTEM_CHECK_ROOT": str(root)}
    done = run("packages", env=env)
    calls = (tmp_path / "apt-get.log").read_text().splitlines()
    assert calls == [
        "noninteractive update -qq",
        "noninteractive install -y -qq chromium docker-compose",
    ]
    if really:
        assert done.returncode == 0, done.stderr
        again = run("packages", env=env)  # now all there: apt-get is not run again
        assert again.returncode == 0
        assert len((tmp_path / "apt-get.log").read_text().splitlines()) == 2
    else:
        assert done.returncode == 1
        assert "Still missing after apt-get install -y chromium docker-compose" in done.stderr


def test_make_test_stops_before_anything_else_when_packages_are_missing(tmp_path):
    """Not even .venv is looked at: the first thing `make test` does is the check."""
    root, bindir = machine(tmp_path, lacking=set(PACKAGES))
    (bindir / "make").symlink_to(shutil.which("make") or "/usr/bin/make")
    venv = tmp_path / "venv"
    done = make("test", f"VENV={venv}", env={"PATH": str(bindir), "SYSTEM_CHECK_ROOT": str(root)})
    assert done.returncode != 0
    assert install_line(*PACKAGES) in done.stderr.splitlines(), done.stderr
    assert not venv.exists()
    assert "-m pytest" not in done.stdout + done.stderr
    assert "Python 3.11" not in done.stderr  # the venv step did not run


def test_make_test_checks_the_packages_first_and_make_run_not_at_all():
    test, run_ = make("-n", "test", env=dict(os.environ)), make("-n", "run", env=dict(os.environ))
    assert test.returncode == 0 and run_.returncode == 0, test.stderr + run_.stderr
    lines = test.stdout.splitlines()
    check = next(i for i, line in enumerate(lines) if "setup_system.sh packages" in line)
    venv = next(i for i, line in enumerate(lines) if "setup_system.sh venv" in line)
    pytest_ = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert check < venv < pytest_
    assert "setup_system.sh packages" not in run_.stdout
    assert "setup_system.sh venv" in run_.stdout


# --- Python 3.11 ----------------------------------------------------------------------------


def test_no_python311_and_python3_of_another_version_stops_saying_how_to_get_it(
    tmp_path, other_python
):
    python, version = other_python
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(python)
    venv = tmp_path / "venv"
    done = run("venv", venv, env={"PATH": str(bindir)})
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert any("needs Python 3.11" in line for line in lines), done.stderr
    assert "    python3.11: not found" in lines
    assert f"    python3: {bindir / 'python3'} is Python {version}" in lines
    assert any("apt-get install -y python3.11 python3.11-venv" in line for line in lines)
    assert any("pyenv install 3.11" in line for line in lines)
    assert not venv.exists()


def test_python_named_by_PYTHON_of_another_version_is_refused(tmp_path, other_python):
    """Even with a python3.11 on PATH: PYTHON, when given, is the one to use or none."""
    python, version = other_python
    venv = tmp_path / "venv"
    done = run("venv", venv, env={"PATH": os.environ["PATH"], "PYTHON": str(python)})
    assert done.returncode == 1
    assert f"    {python}: {python} is Python {version}" in done.stderr.splitlines()
    assert not venv.exists()


def test_existing_venv_of_another_python_is_reported_not_used(tmp_path, other_python):
    python, version = other_python
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(python)
    # python3.11 is on this PATH when the machine has one: it must not be used silently either.
    done = run("venv", venv, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 1
    assert f"{venv} was made with Python {version}" in done.stderr
    assert f"    rm -rf {venv}" in done.stderr.splitlines()
    assert sorted(p.name for p in venv.rglob("*")) == ["bin", "python"]


def test_existing_venv_whose_python_is_gone_is_reported(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "removed" / "python3.11")
    done = run("venv", venv, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 1
    assert "does not run" in done.stderr
    assert f"    rm -rf {venv}" in done.stderr.splitlines()


def test_the_venv_running_these_tests_passes_at_once_without_any_python_on_PATH(tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("these tests do not run in a virtual environment")
    start = time.perf_counter()
    done = run("venv", sys.prefix, env={"PATH": str(tmp_path)})
    took = time.perf_counter() - start
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert took < 1.0, f"the check took {took:.2f} s"


@pytest.mark.parametrize("target", ["run", "test"])
def test_make_without_python311_stops_naming_it(tmp_path, other_python, target):
    """`make run` reaches the Python check on a machine without any of the test packages;
    `make test` too once the package check is skipped."""
    python, version = other_python
    root, bindir = machine(tmp_path, lacking=set(PACKAGES))
    (bindir / "make").symlink_to(shutil.which("make") or "/usr/bin/make")
    (bindir / "python3").symlink_to(python)
    env = {"PATH": str(bindir), "SYSTEM_CHECK_ROOT": str(root)}
    if target == "test":
        env["SKIP_SYSTEM_CHECK"] = "1"
    venv = tmp_path / "venv"
    done = make(target, f"VENV={venv}", env=env)
    assert done.returncode != 0
    assert "needs Python 3.11" in done.stderr, done.stderr
    assert f"    python3: {bindir / 'python3'} is Python {version}" in done.stderr.splitlines()
    assert "system packages that are missing" not in done.stderr
    assert not venv.exists()


@pytest.mark.slow
def test_python3_that_is_311_makes_the_venv_and_a_second_run_keeps_it(tmp_path):
    """No python3.11 on PATH, a python3 that is 3.11: the venv is made with it (with pip)."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    if py_version(base) != "3.11":
        pytest.skip(f"{base} is not Python 3.11")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(base)
    venv = tmp_path / "venv"
    done = run("venv", venv, env={"PATH": str(bindir)})
    assert done.returncode == 0, done.stderr
    assert f"Creating {venv} with {bindir / 'python3'} (Python 3.11)" in done.stderr
    assert py_version(str(venv / "bin" / "python")) == "3.11"
    assert (venv / "bin" / "pip").exists()
    again = run("venv", venv, env={"PATH": str(bindir)})
    assert (again.returncode, again.stderr) == (0, "")
