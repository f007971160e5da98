"""Packaging for the Comfy Registry / ComfyUI-Manager: pyproject, requirements, registry validation."""
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMFY_CLI = ROOT / ".cache" / "comfy-cli" / "bin" / "comfy"


def test_pyproject_has_registry_metadata_and_matches_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert key in comfy, key
    assert project["name"] and project["version"] and project["description"]
    reqs = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    name = lambda r: r.split(">")[0].split("=")[0].split("<")[0].strip().lower()
    assert sorted(map(name, reqs)) == sorted(map(name, project["dependencies"]))
    assert not any(name(r) == "torch" for r in reqs), "torch comes with ComfyUI"


def test_comfy_node_validate_accepts_the_pack():
    if not COMFY_CLI.exists():
        if os.environ.get("PACKFORCING_REQUIRE_COMFY"):
            pytest.fail("comfy-cli missing: run `bash .ci/setup.sh`")
        pytest.skip("comfy-cli not installed (bash .ci/setup.sh installs it)")
    out = subprocess.run([str(COMFY_CLI), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checks passed" in out.stdout + out.stderr


def test_ci_runs_the_test_command_that_readme_gives():
    section = (ROOT / "README.md").read_text().split("## Set up and test on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"`(\.venv/bin/python -m pytest [^`]*)`", section)
    assert len(commands) == 1, commands
    run = [line.split("||")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[0] in run, f"README's test command is not a line of .ci/run: {commands[0]}"
