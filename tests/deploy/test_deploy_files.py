"""The deployment files (Dockerfile.gpu, deploy/compose.yaml, deploy/k8s/) against the code:
they parse, name only settings that exist, probe routes that exist, and the commands the
images run work here. No container engine runs on this machine, so images are not built."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.security import hash_key
from serving.settings import Settings
from serving.triton.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile.gpu"
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "not-a-real-password",
    "SKIN_API_KEY_HASHES": hash_key("deploy-test-key-" + "k" * 32),
    "HAM10000_HOST_DIR": "/srv/ham10000",
}


def run(*cmd: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 180):
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (variables filled), else as YAML."""
    if shutil.which("docker-compose"):
        done = run(
            "docker-compose", "-f", str(COMPOSE), "config", env={**os.environ, **COMPOSE_ENV}
        )
        assert done.returncode == 0, done.stderr
        return yaml.safe_load(done.stdout)
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    """The Kubernetes objects, built by ``kubectl kustomize`` when kubectl is installed."""
    if shutil.which("kubectl"):
        done = run("kubectl", "kustomize", str(K8S))
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [
        d
        for f in kustomization["resources"]
        for d in yaml.safe_load_all((K8S / f).read_text())
        if d
    ]


def stages() -> dict[str, dict[str, Any]]:
    """Each Dockerfile stage's ENV names, ENTRYPOINT, CMD and pip extras."""
    out: dict[str, dict[str, Any]] = {}
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for block in re.split(r"^FROM ", text, flags=re.M)[1:]:
        name = re.match(r"\S+ AS (\S+)", block).group(1)
        exec_form = {
            k: json.loads(v) for k, v in re.findall(r"^(ENTRYPOINT|CMD) (\[.*\])$", block, re.M)
        }
        out[name] = {
            "env": dict(
                re.findall(r"\b(SKIN_\w+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", block, re.M)))
            ),
            "entrypoint": exec_form.get("ENTRYPOINT", []),
            "cmd": exec_form.get("CMD", []),
            "extras": re.findall(r"pip install '\.\[(\w+)\]'", block),
            "healthcheck": re.findall(r"HEALTHCHECK .*? CMD (.*)$", block, re.M),
        }
    return out


def env_names(compose: dict[str, Any], k8s: list[dict[str, Any]]) -> dict[str, str]:
    """Every SKIN_* variable the deployment sets -> where."""
    found: dict[str, str] = {}
    for service, spec in compose["services"].items():
        env = spec.get("environment") or {}
        names = env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        found.update({n: f"compose {service}" for n in names})
    for obj in k8s:
        for c in _containers(obj):
            found.update({e["name"]: f"k8s {obj['metadata']['name']}" for e in c.get("env", [])})
    for stage, spec in stages().items():
        found.update({n: f"Dockerfile.gpu {stage}" for n in spec["env"]})
    return {n: where for n, where in found.items() if n.startswith("SKIN_")}


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers", [])


def _deployment(k8s: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in k8s if o["kind"] == "Deployment" and o["metadata"]["name"] == name)


def test_compose_needs_its_secrets_and_says_which() -> None:
    secrets = ("POSTGRES_PASSWORD", "SKIN_API_KEY_HASHES")
    if not shutil.which("docker-compose"):  # then at least the guards are in the file
        text = COMPOSE.read_text()
        assert all(f"${{{name}:?" in text for name in secrets)
        assert "${HAM10000_HOST_DIR:?" not in text
        return
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    done = run("docker-compose", "-f", str(COMPOSE), "config", "-q", env=env)
    assert done.returncode != 0 and "set POSTGRES_PASSWORD" in done.stderr
    # A serve-only `up` needs the secrets, not the training data's folder ...
    given = {**env, **{k: COMPOSE_ENV[k] for k in secrets}}
    done = run("docker-compose", "-f", str(COMPOSE), "config", "-q", env=given)
    assert done.returncode == 0, done.stderr
    # ... and the train service then mounts a source that does not exist, so `run train` stops
    # at once instead of training on an empty folder; given, it mounts the folder read-only.
    for host_dir, expected in ((None, "/set-HAM10000_HOST_DIR"), ("/srv/ham", "/srv/ham")):
        env_here = {**given, **({"HAM10000_HOST_DIR": host_dir} if host_dir else {})}
        done = run(
            "docker-compose", "-f", str(COMPOSE), "--profile", "train", "config", env=env_here
        )
        assert done.returncode == 0, done.stderr
        mounts = yaml.safe_load(done.stdout)["services"]["train"]["volumes"]
        data = next(m for m in mounts if isinstance(m, dict) and m["target"] == "/data/ham10000")
        assert data["type"] == "bind" and data["read_only"] is True
        assert data["source"].startswith(expected)
    assert not Path(expected := "/set-HAM10000_HOST_DIR-to-your-HAM10000-copy").exists(), expected


def test_every_skin_variable_is_a_setting(compose: dict, k8s: list) -> None:
    names = env_names(compose, k8s)
    assert "SKIN_DATABASE_URL" in names and "SKIN_API_KEY_HASHES" in names  # found at all
    unknown = {
        n: w for n, w in names.items() if n[len("SKIN_") :].lower() not in Settings.model_fields
    }
    assert not unknown, f"not fields of serving.settings.Settings: {unknown}"


def test_gateway_and_triton_agree_on_model_ports_and_probes(compose: dict, k8s: list) -> None:
    from serving.app import create_app

    routes = set(create_app(Settings(allow_no_auth=True)).openapi()["paths"])
    gateway = _deployment(k8s, "gateway")
    (container,) = _containers(gateway)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = int(env.get("SKIN_PORT") or Settings.model_fields["port"].default)
    assert {p["containerPort"] for p in container["ports"]} == {port}

    triton_args = _containers(_deployment(k8s, "triton"))[0]["args"]
    compose_triton = compose["services"]["triton"]["command"]
    for args, model in (
        (triton_args, env["SKIN_MODEL_NAME"]),
        (compose_triton, compose["services"]["gateway"]["environment"]["SKIN_MODEL_NAME"]),
    ):
        assert f"--load-model={model}" in args
    grpc = compose["services"]["gateway"]["environment"]["SKIN_TRITON_URL"]
    assert grpc == "triton:8001" and env["SKIN_TRITON_URL"] == "triton:8001"
    assert "/healthz" in " ".join(compose["services"]["gateway"]["healthcheck"]["test"])


def test_dockerfile_extras_exist_in_pyproject() -> None:
    """``pip install '.[x]'`` with an extra pyproject.toml lacks only warns and installs the
    core dependencies: the build passes, and the "slim" gateway image silently gets torch,
    Lightning and W&B, or an image misses what only the extra would bring."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {}
    )
    wanted = {e: stage for stage, spec in stages().items() for e in spec["extras"]}
    missing = {e: s for e, s in wanted.items() if e not in extras}
    assert not missing, (
        f"Dockerfile.gpu installs extras {missing} (extra: stage) that pyproject.toml does not "
        f"define (it has {sorted(extras)}): add them under [project.optional-dependencies]"
    )


@pytest.mark.slow
def test_the_training_image_commands_run_here() -> None:
    train = stages()["train"]
    assert train["entrypoint"] == ["python", "-m", "training"]
    python = [sys.executable, "-m", "training"]
    for command in ("fit", "export", "evaluate"):
        done = run(*python, command, "--help")
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert "usage" in done.stdout.lower(), command
    # The records tool ships in the same image (its `records` extra), run with
    # `--entrypoint python ... -m tools.records_dataset`.
    done = run(sys.executable, "-m", "tools.records_dataset", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    # The image's default command, with its config from the image's /app/configs.
    cmd = [a.replace("/app/", f"{ROOT}/") for a in train["cmd"]]
    done = run(*python, *cmd, "--print_config")
    assert done.returncode == 0, done.stderr[-2000:]
    printed = yaml.safe_load(done.stdout)
    assert printed["trainer"]["accelerator"] == "gpu"
    assert printed["trainer"]["precision"] == "bf16-mixed"


@pytest.mark.slow
def test_the_gateway_image_command_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    gateway = stages()["gateway"]
    assert gateway["entrypoint"] == ["python", "-m", "serving"]
    # No keys: the gateway refuses to start, with a sentence and no traceback.
    bare = {k: v for k, v in os.environ.items() if not k.startswith("SKIN_")}
    done = run(sys.executable, "-m", "serving", env=bare, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "no API keys configured" in done.stderr
    assert "Traceback" not in done.stderr

    port = free_port()
    env = {
        **bare,
        "SKIN_HOST": "127.0.0.1",
        "SKIN_PORT": str(port),
        "SKIN_API_KEY_HASHES": COMPOSE_ENV["SKIN_API_KEY_HASHES"],
        "SKIN_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
        "SKIN_TRITON_URL": f"127.0.0.1:{free_port()}",  # nothing listens: not ready
        "SKIN_RULES_PATH": str(ROOT / "configs" / "body_location_rules.yaml"),
        "SKIN_IMAGE_DIR": str(tmp_path / "images"),
        "SKIN_MODEL_REPOSITORY": str(tmp_path),
    }
    # cwd is a fresh folder: no .env of a developer's checkout leaks in.
    server = subprocess.Popen(
        [sys.executable, "-m", "serving"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not answer /healthz in 90 s"
            time.sleep(0.5)
        assert httpx.get(f"{base}/readyz?strict=true", timeout=10).status_code == 503  # no Triton
        # The image's HEALTHCHECK (shell form), pointed at this port and this interpreter.
        (check,) = gateway["healthcheck"]
        check = re.sub(r"^python ", f"{sys.executable} ", check.replace(":8000/", f":{port}/"))
        assert run("sh", "-c", check, timeout=30).returncode == 0
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends
        # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.stdout.read()
        assert run("sh", "-c", check, timeout=30).returncode == 1  # and it notices a dead one
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_gateway_can_write_consented_photos(compose: dict, k8s: list) -> None:
    """Consented uploads are written under SKIN_IMAGE_DIR: with a read-only root filesystem
    that folder must be a mounted volume, or every consented upload fails."""
    default = stages()["gateway"]["env"]  # the image's ENV
    service = compose["services"]["gateway"]
    image_dir = service["environment"].get("SKIN_IMAGE_DIR", default["SKIN_IMAGE_DIR"])
    mounts = [v.split(":")[1] if isinstance(v, str) else v["target"] for v in service["volumes"]]
    assert any(image_dir.startswith(m) for m in mounts), (image_dir, mounts)

    (container,) = _containers(_deployment(k8s, "gateway"))
    env = {e["name"]: e.get("value") for e in container["env"]}
    image_dir = env.get("SKIN_IMAGE_DIR") or default["SKIN_IMAGE_DIR"]
    if (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
        mounts = [
            m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")
        ]
        assert any(image_dir.startswith(m) for m in mounts), (
            f"k8s gateway: SKIN_IMAGE_DIR={image_dir} is on the read-only root filesystem "
            f"(writable mounts: {mounts}): mount a volume there (shared by all replicas, e.g. "
            "a ReadWriteMany claim) so consented photos can be stored"
        )


def _dockerignored(path: str, rules: list[tuple[str, bool]]) -> bool:
    """Docker's rule for a context path: the last pattern that matches it or one of its parent
    folders decides; ``!`` re-includes (moby patternmatcher, MatchesOrParentMatches)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern, include in rules:
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not include
    return ignored


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else() -> None:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.lstrip("!"), line.startswith("!")))
    sources = set()
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            sources.update(s.rstrip("/") for s in args[:-1])
    assert sources and "." not in sources
    # Every file the Dockerfile copies reaches the builder ...
    for source in sorted(sources):
        files = (
            [source]
            if (ROOT / source).is_file()
            else [
                p.relative_to(ROOT).as_posix()
                for p in (ROOT / source).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ]
        )
        assert files, source
        assert not [f for f in files if _dockerignored(f, rules)], source
    # ... and nothing a local checkout holds besides.
    for local in (
        ".venv/bin/python",
        "runs/default/checkpoints/best.ckpt",
        "wandb/x",
        ".env",
        "reports/default/report.md",
        ".cache/serving/dev-api-key",
        ".git/HEAD",
        "model_repository/skin_lesion/1/model.pt",
        "tests/conftest.py",
        "serving/__pycache__/app.cpython-311.pyc",
        "data/HAM10000_metadata.csv",
    ):
        assert _dockerignored(local, rules), local
