"""The set-up promises of the README: two commands, consistent dependency lists, a lab that serves."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _name_and_spec(requirement: str) -> tuple[str, str]:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement)
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["lab"] \
        + project["optional-dependencies"]["test"]
    conda = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        item = re.match(r"\s+- ([A-Za-z][^#:]*?)\s*(#.*)?$", line)
        if item:
            name, spec = _name_and_spec(item.group(1))
            conda[name] = spec
    for requirement in wanted:
        name, spec = _name_and_spec(requirement)
        assert name in conda, f"environment.yml lacks {name} (pyproject.toml has {requirement})"
        assert conda[name] == spec, f"{name}: pyproject says {spec!r}, environment.yml {conda[name]!r}"


def test_readme_commands_are_the_ones_ci_and_make_run():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (Path(sys.prefix) / "bin" / "jupyter").exists(),
                    reason="JupyterLab is not installed in this environment (run `make test`)")
def test_lab_command_serves_the_course():
    """`make lab` brings up JupyterLab on the course: /lab answers HTTP 200."""
    port = _free_port()
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token="
    env = dict(os.environ, VENV=str(Path(sys.prefix)), LAB_ARGS=args, JUPYTER_RUNTIME_DIR=
               str(ROOT / ".pytest_cache" / f"jupyter-runtime-{port}"))
    proc = subprocess.Popen(["make", "--no-print-directory", "lab"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status != 200:
            time.sleep(1)
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=5) as reply:
                    status = reply.status
                    page = reply.read().decode(errors="replace")
            except OSError:
                continue
        assert status == 200, "JupyterLab did not answer on /lab within 90 s"
        assert "JupyterLab" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/notebooks",
                                    timeout=5) as reply:
            assert b"00_why_paging.ipynb" in reply.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
