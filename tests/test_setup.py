"""The set-up promises of the README: two commands, consistent dependency lists, a lab that serves."""
import re
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from tests import lab_server

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


@pytest.mark.skipif(not (Path(sys.prefix) / "bin" / "jupyter").exists(),
                    reason="JupyterLab is not installed in this environment (run `make test`)")
def test_lab_command_serves_the_course(monkeypatch, tmp_path):
    """`make lab` brings up JupyterLab on the course: /lab answers HTTP 200. The first port it
    is given is taken (as another process may take it): it starts again on another."""
    given = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free = lab_server.free_port

        def taken_then_free():
            given.append(free() if given else taken.getsockname()[1])
            return given[-1]
        monkeypatch.setattr(lab_server, "free_port", taken_then_free)
        lab = lab_server.start_lab("--no-browser", {"JUPYTER_RUNTIME_DIR": str(tmp_path)},
                                   tmp_path / "lab.log")
    try:
        assert len(given) == 2 and lab.base.endswith(f":{given[1]}")
        with urllib.request.urlopen(f"{lab.base}/lab?token={lab.token}", timeout=5) as reply:
            assert reply.status == 200
            assert "JupyterLab" in reply.read().decode(errors="replace")
        with urllib.request.urlopen(f"{lab.base}/api/contents/notebooks?token={lab.token}",
                                    timeout=5) as reply:
            assert b"00_why_paging.ipynb" in reply.read()
    finally:
        lab_server.stop_lab(lab.process)
