"""The deployment files against the code they deploy.

Docker and Kubernetes do not run in the tests, so the files are read (YAML with PyYAML's safe loader, the
Dockerfile line by line) and every fact in them that the code also knows is compared with the code: env names
and values with `Settings`, commands with the CLI's parser, probe paths with the app's routes, ports with the
default port, the queue KEDA watches with rq's key, torch pins and malloc settings with the Makefile.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from redis import Redis
from rq import Queue

from schemas.settings import Settings, env_names
from service.cli import build_parser
from workers.models import check_models
from workers.queue import queue_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE, COMPOSE, MAKEFILE = ROOT / "Dockerfile", ROOT / "docker-compose.yml", ROOT / "Makefile"
DEPLOY, K8S = ROOT / "deploy", ROOT / "deploy" / "k8s"
CPU_OVERRIDE = DEPLOY / "compose.cpu.yml"
MODELS = ROOT / "models"  # what the image bakes (BAKE_MODELS=1)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The HTTP contract of the gateway that the probes and the scrape config rely on.
LIVENESS, READINESS, METRICS = "/healthz", "/readyz", "/metrics"
# Variables the files may set that Settings does not read (besides the Makefile's exports, MALLOC_*): the
# interpreter's, the NVIDIA container toolkit's, and uv's in the Dockerfile's build stage.
EXTRA_ENV = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "NVIDIA_VISIBLE_DEVICES"}
EXTRA_ENV |= {"NVIDIA_DRIVER_CAPABILITIES", "UV_PYTHON_INSTALL_DIR", "UV_PYTHON_PREFERENCE", "UV_COMPILE_BYTECODE"}
EXTRA_ENV |= {"UV_LINK_MODE"}
REDIS_DEFAULT_PORT = 6379  # the redis image's, unless a file passes --port


# ---- reading the files ----


@dataclass(frozen=True)
class Tagged:
    """A Compose merge tag (`!reset`, `!override`) and the value it carries."""

    tag: str
    value: Any


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus Compose's two merge tags."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        return Tagged(node.tag, loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Tagged(node.tag, loader.construct_sequence(node, deep=True))
    return Tagged(node.tag, loader.construct_scalar(node))  # type: ignore[arg-type]


for _tag in ("!reset", "!override"):
    _Loader.add_constructor(_tag, _tagged)


def _documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=_Loader) if doc is not None]


YAML_FILES = [COMPOSE, *sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})]
MANIFESTS: list[dict[str, Any]] = [doc for p in sorted(K8S.rglob("*.yaml")) for doc in _documents(p)]


def _objects(kind: str) -> list[dict[str, Any]]:
    return [m for m in MANIFESTS if m["kind"] == kind]


def _object(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in _objects(kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name!r} in deploy/k8s, found {len(found)}"
    return found[0]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def _pod_labels(kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = _object(kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


def _compose(*overrides: Path) -> dict[str, Any]:
    """docker-compose.yml with override files merged in the way `docker compose -f ... -f ...` does."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(over, Tagged):
            return over.value  # !reset and !override both replace; a reset to {} or [] removes the content
        if isinstance(base, dict) and isinstance(over, dict):
            return {k: merge(base.get(k), v) for k, v in over.items()} | {
                k: v for k, v in base.items() if k not in over
            }
        return over

    config: dict[str, Any] = _documents(COMPOSE)[0]
    for path in overrides:
        config = merge(config, _documents(path)[0])
    return config


@dataclass
class Stage:
    base: str
    name: str | None
    lines: list[tuple[str, str]]  # (INSTRUCTION, arguments)


def _dockerfile(build_args: dict[str, str] | None = None) -> list[Stage]:
    """The stages, continuation lines joined, comments dropped, FROM lines with the global ARGs substituted."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    joined = re.sub(r"\\\n(?:\s*#.*\n)*", " ", DOCKERFILE.read_text())
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            tokens = [t for t in rest.split() if not t.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], tokens[0])
            stages.append(Stage(base, tokens[2] if len(tokens) == 3 else None, []))
        elif not stages and word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = (build_args or {}).get(name, default)
        else:
            stages[-1].lines.append((word, rest))
    return stages


def _image(bake_models: str | None = None) -> list[tuple[str, str]]:
    """The instructions of the final image, its parent stages first, for a BAKE_MODELS build argument."""
    stages = _dockerfile(None if bake_models is None else {"BAKE_MODELS": bake_models})
    named = {s.name: s for s in stages if s.name}
    chain = [stages[-1]]
    while chain[-1].base in named:
        chain.append(named[chain[-1].base])
    return [line for stage in reversed(chain) for line in stage.lines]


def _env_pairs(arguments: str) -> dict[str, str]:
    return dict(t.split("=", 1) for t in shlex.split(arguments))  # NAME=value pairs (not the legacy form)


def _image_env(bake_models: str | None = None) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _image(bake_models):
        if word == "ENV":
            env |= _env_pairs(rest)
    return env


def _exec_form(arguments: str) -> list[str]:
    """A CMD or HEALTHCHECK's command, flags and the word CMD removed."""
    words = [w for w in arguments.split(" ") if not w.startswith("--")]
    rest = " ".join(words).removeprefix("CMD").strip()
    argv: list[str] = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return argv


def _copies(lines: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of the COPY lines that read the build context."""
    copies = []
    for word, rest in lines:
        tokens = shlex.split(rest)
        if word == "COPY" and not any(t.startswith("--from") for t in tokens):
            paths = [t for t in tokens if not t.startswith("--")]
            copies.append((paths[:-1], paths[-1]))
    return copies


def _makefile_exports() -> dict[str, str]:
    return dict(re.findall(r"^export\s+(\w+)\s*:?=\s*(\S+)", MAKEFILE.read_text(), re.M))


def _torch_pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b(torch|torchvision)==([\w.+]+)", text))


# ---- the containers that run the image ----


@dataclass
class Role:
    where: str
    argv: list[str]
    env: dict[str, str]  # the image's ENV, then the file's
    mounts: set[str]  # container paths of volumes
    ports: list[int]  # container ports published or declared
    models_baked_at: str | None  # where the image, built as this file builds it, holds models/


def _baked_models_dir(bake_models: str | None) -> str | None:
    copies = [dest for sources, dest in _copies(_image(bake_models)) if "models" in {s.strip("/") for s in sources}]
    return copies[0].rstrip("/") if copies else None


def _compose_roles(config: dict[str, Any], where: str) -> list[Role]:
    roles = []
    for name, service in config["services"].items():
        if not str(service.get("image", "")).startswith("editgan") and "build" not in service:
            continue
        bake = service.get("build", {}).get("args", {}).get("BAKE_MODELS")
        env = service.get("environment", {})
        env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
        roles.append(
            Role(
                f"{where} service {name}",
                service["command"] if isinstance(service["command"], list) else shlex.split(service["command"]),
                _image_env(bake) | {k: str(v) for k, v in env.items()},
                {v["target"] if isinstance(v, dict) else str(v).split(":")[1] for v in service.get("volumes", [])},
                [int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])],
                _baked_models_dir(bake),
            )
        )
    return roles


def _k8s_roles() -> list[Role]:
    roles = []
    for workload in _objects("Deployment") + _objects("StatefulSet"):
        for c in _containers(workload):
            if not c["image"].startswith("editgan"):
                continue
            env = dict(_image_env())
            for source in c.get("envFrom", []):
                env |= _object("ConfigMap", source["configMapRef"]["name"])["data"]
            env |= {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            ports = [p["containerPort"] for p in c.get("ports", [])]
            where = f"deploy/k8s {workload['kind']} {workload['metadata']['name']}"
            roles.append(Role(where, c["command"] + c.get("args", []), env, mounts, ports, _baked_models_dir(None)))
    return roles


ROLES = _compose_roles(_compose(), "docker-compose.yml")
ROLES += [r for r in _compose_roles(_compose(CPU_OVERRIDE), "+compose.cpu.yml") if "worker" in r.where]
ROLES += _k8s_roles()


def _role(where: str, command: str) -> Role:
    found = [r for r in ROLES if r.where.startswith(where) and r.argv[1] == command]
    assert len(found) == 1, f"expected one `editgan {command}` container in {where}, found {len(found)}"
    return found[0]


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the container's process builds them from its environment."""
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name in env_names():
            monkeypatch.setenv(name, value)
    return Settings()


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def _editgan_commands() -> list[tuple[str, list[str]]]:
    """Every `editgan ...` command line in the deployment files: (where, argv)."""
    found: list[tuple[str, list[str]]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, Tagged):
            walk(node.value, where)
        elif isinstance(node, dict):
            for key in ("command", "entrypoint", "test"):  # Compose, Kubernetes containers and exec probes
                value = node.get(key)
                argv = shlex.split(value) if isinstance(value, str) else [str(v) for v in value or []]
                argv += [str(a) for a in node.get("args", [])] if key == "command" else []
                if argv[:1] == ["CMD-SHELL"]:
                    argv = shlex.split(" ".join(argv[1:]))
                argv = argv[1:] if argv[:1] == ["CMD"] else argv
                if argv[:1] == ["editgan"]:
                    found.append((where, argv))
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in YAML_FILES:
        for doc in _documents(path):
            walk(doc, str(path.relative_to(ROOT)))
    for word, rest in _image():
        if word in {"CMD", "HEALTHCHECK", "ENTRYPOINT"}:
            found.append((f"Dockerfile {word}", _exec_form(rest)))
    return found


# ---- the tests ----


def test_every_env_name_is_a_setting_or_an_allowed_extra() -> None:
    names: dict[str, set[str]] = {}
    for word, rest in [line for stage in _dockerfile() for line in stage.lines]:
        if word == "ENV":
            names.setdefault("Dockerfile", set()).update(_env_pairs(rest))
    for path in YAML_FILES:
        text = path.read_text()
        found = names.setdefault(str(path.relative_to(ROOT)), set(re.findall(r"\$\{(\w+)", text)))  # interpolation
        for doc in _documents(path):
            for service in doc.get("services", {}).values():
                env = service.get("environment", {})
                found |= {e.split("=")[0] for e in env} if isinstance(env, list) else set(env)
            if doc.get("kind") == "ConfigMap":
                found |= set(doc["data"])
            if doc.get("kind") in {"Deployment", "StatefulSet"}:
                found |= {e["name"] for c in _containers(doc) for e in c.get("env", [])}
    allowed = set(env_names()) | set(_makefile_exports()) | EXTRA_ENV
    assert {where: sorted(n - allowed) for where, n in names.items() if n - allowed} == {}
    assert names["Dockerfile"] and names["docker-compose.yml"] and names["deploy/k8s/config.yaml"]


@pytest.mark.parametrize("where,argv", _editgan_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_editgan_command_is_one_the_cli_accepts(where: str, argv: list[str]) -> None:
    subcommands = _subcommands()
    assert len(argv) > 1, f"{where}: `editgan` without a subcommand"
    assert argv[1] in subcommands, f"{where}: the CLI has no `{argv[1]}`, only {sorted(subcommands)}"
    assert argv[1] != "up", f"{where}: `editgan up` embeds Redis and spawns workers: not for containers"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{' '.join(argv)}` is refused by the CLI's parser")


@pytest.mark.parametrize("role", ROLES, ids=lambda r: f"{r.where} {r.argv[1]}")
def test_each_container_environment_is_valid_settings(role: Role, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(role.env, monkeypatch)  # raises on a value Settings refuses
    assert settings.redis_url is not None, f"{role.where}: REDIS_URL is unset (`serve` and `worker` need it)"
    models = str(settings.editgan_models_dir)
    assert models in role.mounts or models == role.models_baked_at, (
        f"{role.where}: EDITGAN_MODELS_DIR={models} is neither mounted nor where the image holds models/ "
        f"({role.models_baked_at})"
    )
    if role.argv[1] == "serve":
        assert settings.editgan_host == "0.0.0.0", f"{role.where}: the gateway must bind all interfaces"
        assert role.ports == [settings.editgan_port], f"{role.where}: ports {role.ports}, EDITGAN_PORT is elsewhere"
    else:
        assert role.ports == [], f"{role.where}: a worker serves no port (and fixed host ports stop --scale)"


def test_redis_url_names_the_redis_of_each_file(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()["services"]
    redis_cmd = compose["redis"]["command"]
    port = int(redis_cmd[redis_cmd.index("--port") + 1]) if "--port" in redis_cmd else REDIS_DEFAULT_PORT
    k8s_services = {s["metadata"]["name"]: s for s in _objects("Service")}
    for role in ROLES:
        url = urlsplit(str(_settings(role.env, monkeypatch).redis_url))
        if role.where.startswith("deploy/k8s"):
            service = k8s_services[str(url.hostname)]
            assert service["spec"]["selector"].items() <= _pod_labels("StatefulSet", "redis").items()
            assert url.port == service["spec"]["ports"][0]["port"], role.where
        else:
            assert compose[str(url.hostname)]["image"].startswith("redis"), role.where
            assert url.port == port, role.where


def test_app_answers_the_paths_the_probes_and_prometheus_use() -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/0"), bundles={})
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: neither models nor Redis needed
    assert client.get(LIVENESS).status_code == 200  # liveness holds while the process runs
    for path in (READINESS, METRICS):
        assert client.get(path).status_code != 404, f"the app has no {path}"


def test_image_exposes_the_default_port_and_runs_the_gateway_as_a_non_root_user() -> None:
    default_port = Settings.model_fields["editgan_port"].default
    stages = {s.name for s in _dockerfile() if s.name}
    for bake in sorted(name.removeprefix("models-") for name in stages if name.startswith("models-")):
        lines = _image(bake)
        words = dict(lines)  # the last of each instruction wins, as in Docker
        assert [int(p) for w, p in lines if w == "EXPOSE"] == [default_port], bake
        user = words["USER"].split(":")[0]
        assert user not in {"root", "0"}, f"BAKE_MODELS={bake}: the image runs as root"
        assert _exec_form(words["CMD"])[:2] == ["editgan", "serve"]
        assert _exec_form(words["HEALTHCHECK"])[:2] == ["editgan", "healthcheck"]
    assert _baked_models_dir("1") == _image_env().get("EDITGAN_MODELS_DIR"), "models/ is copied elsewhere"
    assert _baked_models_dir("0") is None


def test_image_sets_the_makefiles_malloc_settings() -> None:
    exports = _makefile_exports()
    assert exports, "no `export NAME := value` lines found in the Makefile"
    image = _image_env()
    assert {name: image.get(name) for name in exports} == exports


def test_image_pins_torch_as_the_makefile_does() -> None:
    makefile = _torch_pins(MAKEFILE.read_text())
    assert set(makefile) == {"torch", "torchvision"}, "the Makefile's torch install line changed shape"
    runs = " ".join(rest for stage in _dockerfile() for word, rest in stage.lines if word == "RUN")
    assert _torch_pins(runs) == makefile


def test_image_installs_dependencies_before_copying_the_source() -> None:
    """Layer caching: a change to the code must not reinstall torch and the dependencies."""
    build = next(s for s in _dockerfile() if any("-r pyproject.toml" in rest for _, rest in s.lines))
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {s for sources, _ in _copies(build.lines) for s in sources}
    assert packages <= copied, f"packages not copied into the image: {sorted(packages - copied)}"
    lines = build.lines
    first_source = min(i for i, (w, r) in enumerate(lines) if w == "COPY" and packages & set(shlex.split(r)))
    installs = [i for i, (w, r) in enumerate(lines) if w == "RUN" and " install " in r]
    project = [i for i in installs if lines[i][1].endswith(" .")]
    assert project and min(project) > first_source, "the project is installed before its source is copied"
    assert max(i for i in installs if i not in project) < first_source, "a dependency install follows the source"


def test_dockerignore_keeps_everything_the_image_copies() -> None:
    patterns = [p.strip().strip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [p for p in patterns if p and not p.startswith(("#", "!"))]

    def regex(pattern: str) -> re.Pattern[str]:
        body = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.compile(f"{body}(?:/.*)?")

    ignored = [regex(p) for p in rules]
    copied = {s.rstrip("/") for stage in _dockerfile() for sources, _ in _copies(stage.lines) for s in sources}
    files = [p for s in copied for p in ([ROOT / s] if (ROOT / s).is_file() else (ROOT / s).rglob("*"))]
    files = [p for p in files if p.is_file() and "__pycache__" not in p.parts]
    assert files, "nothing found to check"
    dropped = sorted(
        str(p.relative_to(ROOT)) for p in files if any(r.fullmatch(str(p.relative_to(ROOT))) for r in ignored)
    )
    assert dropped == []


def test_non_python_package_files_are_package_data() -> None:
    """The image installs a wheel, not the source tree: a data file missing from package-data is missing there."""
    package_data = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    packages = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    missing = []
    for package in packages:
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and path.suffix not in {".py", ".pyc", ".typed"} and "__pycache__" not in path.parts:
                relative = path.relative_to(ROOT / package)
                if not any(relative.match(p) for p in package_data.get(package, [])):
                    missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_images_carry_the_project_version() -> None:
    version = PYPROJECT["project"]["version"]
    images = [s["image"] for s in _compose()["services"].values() if "build" in s]
    images += [c["image"] for w in _objects("Deployment") for c in _containers(w) if c["image"].startswith("editgan")]
    assert images and {i.rpartition(":")[2] for i in images} == {version}, images
    # compose builds without the models (BAKE_MODELS=0): a name of its own, so that a local build is never
    # mistaken for the image deploy/k8s runs, which serves the models baked into it
    compose = {s["image"] for s in _compose()["services"].values() if "build" in s}
    assert all(s["build"]["args"]["BAKE_MODELS"] == "0" for s in _compose()["services"].values() if "build" in s)
    assert not compose & {c["image"] for w in _objects("Deployment") for c in _containers(w)}, compose


def test_compose_worker_reserves_a_gpu_and_can_be_scaled() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "container_name" not in worker and "ports" not in worker
    assert "devices" not in services["api"].get("deploy", {}).get("resources", {}).get("reservations", {})
    assert not _compose(CPU_OVERRIDE)["services"]["worker"].get("deploy"), "the CPU override keeps the GPU"
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) >= 30, "the worker needs time to requeue its job on SIGTERM"


def test_compose_services_wait_for_a_healthy_persistent_redis() -> None:
    compose = _compose()
    services = compose["services"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["healthcheck"]["test"][:2] == ["CMD", "editgan"], name
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["command"][redis["command"].index("--save") + 1] == ""  # no snapshot bursts besides the log
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    volume = next(v.split(":")[0] for v in redis["volumes"] if v.split(":")[1] == "/data")
    assert volume in compose["volumes"], "Redis' /data is not a named volume"


def test_k8s_probes_use_the_health_paths_on_the_served_port() -> None:
    api = _object("Deployment", "editgan-api")
    (container,) = _containers(api)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("startupProbe", LIVENESS), ("livenessProbe", LIVENESS), ("readinessProbe", READINESS)):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) in ports.values(), probe
    notes = api["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/path"] == METRICS and int(notes["prometheus.io/port"]) in ports.values()
    service = _object("Service", "editgan-api")
    assert all(ports.get(p["targetPort"], p["targetPort"]) in ports.values() for p in service["spec"]["ports"])
    assert service["spec"]["selector"].items() <= _pod_labels("Deployment", "editgan-api").items()


def test_k8s_gateway_keeps_listening_until_the_service_has_dropped_it() -> None:
    api = _object("Deployment", "editgan-api")
    (container,) = _containers(api)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pause = int(command[1])
    assert pause >= 3  # endpoint updates reach kube-proxy and ingresses within seconds, not at once
    # the pause counts against the grace period, which must leave uvicorn time to finish open requests
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= pause + 15
    # EDITGAN_KEEP_ALIVE (75 s) is longer than an ingress's idle upstream timeout (60 s): the proxy, not the
    # gateway, closes idle connections
    assert Settings.model_fields["editgan_keep_alive"].default > 60


def test_k8s_worker_gets_a_gpu_a_grace_period_and_a_worker_liveness_check() -> None:
    worker = _object("Deployment", "editgan-worker")
    (container,) = _containers(worker)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    assert container["livenessProbe"]["exec"]["command"][1:] == ["healthcheck", "--worker"]
    (api,) = _containers(_object("Deployment", "editgan-api"))
    assert "nvidia.com/gpu" not in api["resources"].get("limits", {})


def test_k8s_redis_is_a_statefulset_with_a_volume_and_appendonly() -> None:
    redis = _object("StatefulSet", "redis")
    (container,) = _containers(redis)
    args = container.get("command", []) + container.get("args", [])
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--save") + 1] == ""
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/data"} <= claims
    headless = _object("Service", redis["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= _pod_labels("StatefulSet", "redis").items()


def test_k8s_autoscalers_target_the_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    (hpa,) = _objects("HorizontalPodAutoscaler")
    (api,) = _containers(_object("Deployment", hpa["spec"]["scaleTargetRef"]["name"]))
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"] and "cpu" in api["resources"]["requests"]

    (scaler,) = _objects("ScaledObject")
    worker = _role(f"deploy/k8s Deployment {scaler['spec']['scaleTargetRef']['name']}", "worker")
    settings = _settings(worker.env, monkeypatch)
    # one trigger per model the workers take jobs for: those of EDITGAN_WORKER_MODELS, else the baked ones
    models = settings.editgan_worker_models.split(",") if settings.editgan_worker_models else check_models(MODELS)
    queues = {Queue(queue_name(settings, model), connection=Redis()).key for model in models}
    triggers = scaler["spec"]["triggers"]
    assert {t["metadata"]["listName"] for t in triggers} == queues and len(triggers) == len(queues), "other queues"
    url = urlsplit(str(settings.redis_url))
    namespace = _documents(K8S / "kustomization.yaml")[0]["namespace"]
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["address"] == f"{url.hostname}.{namespace}.svc:{url.port}"
        assert int(meta["databaseIndex"]) == int(url.path.strip("/") or 0)
    assert _documents(K8S / "keda" / "kustomization.yaml")[0]["namespace"] == namespace


def test_kustomizations_list_every_manifest_beside_them() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = set(_documents(kustomization)[0]["resources"])
        present = {p.name for p in kustomization.parent.glob("*.yaml")} - {kustomization.name}
        assert listed == present, kustomization


def test_prometheus_scrapes_the_api_pods() -> None:
    (job,) = _documents(DEPLOY / "prometheus.yml")[0]["scrape_configs"]
    namespace = _documents(K8S / "kustomization.yaml")[0]["namespace"]
    assert [sd["namespaces"]["names"] for sd in job["kubernetes_sd_configs"]] == [[namespace]]
    labels = _pod_labels("Deployment", "editgan-api")
    notes = _object("Deployment", "editgan-api")["spec"]["template"]["metadata"]["annotations"]
    for rule in (r for r in job["relabel_configs"] if r.get("action") == "keep"):
        (source,) = rule["source_labels"]
        key = source.removeprefix("__meta_kubernetes_pod_label_").removeprefix("__meta_kubernetes_pod_annotation_")
        values = {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in (labels | notes).items()}
        assert re.fullmatch(rule["regex"], values.get(key, "")), f"{source} drops the api pods"
