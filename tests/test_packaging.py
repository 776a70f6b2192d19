"""Set-up as a learner meets it (issue 9, item 3): no deprecation noise from the build, the
pip route and the GPU extras documented, and a GPU message that fits every set-up."""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab import backend

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()


def test_license_is_an_spdx_string_and_setuptools_can_read_it():
    """A TOML table (`{text = "MIT"}`) made setuptools print a deprecation warning three
    times during `make lab`; the SPDX string needs setuptools 77 or newer."""
    assert PYPROJECT["project"]["license"] == "MIT"
    floor = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert floor, "build-system.requires names no setuptools"
    version = re.search(r">=\s*(\d+)", floor[0])
    assert version and int(version.group(1)) >= 77, floor


def test_every_extra_the_readme_names_exists():
    extras = PYPROJECT["project"]["optional-dependencies"]
    named = set(re.findall(r"pip install (?:-q )?'\.\[([a-z0-9,]+)\]'", README))
    assert named, "the README shows no pip install of the course"
    for group in named:
        for extra in group.split(","):
            assert extra in extras, f"README installs '.[{group}]' but pyproject has no {extra}"
    assert "cupy-cuda12x" in extras["cuda12"][0]
    assert "cupy-cuda13x" in extras["cuda13"][0]
    assert any(r.startswith("playwright") for r in extras["browser"])


def test_readme_gives_the_pip_route_the_extras_the_order_and_the_times():
    setup = " ".join(README[README.index("## Set up"):README.index("## What is inside")].split())
    for must in ("pip install '.[lab]'", "cuda12", "cuda13", "nvidia-smi",
                 "lesson NN before workbook NN", "Colab"):
        assert must in setup, must
    assert re.search(r"took \d+ s", setup), "set-up time not stated"
    assert "SETUP_TEST" not in setup, "a measured time was left as a placeholder"


@pytest.fixture
def no_cupy(monkeypatch):
    """The process as a pip user without CuPy sees it."""
    monkeypatch.setitem(sys.modules, "cupy", None)    # `import cupy` raises ImportError
    backend._probe_cupy.cache_clear()
    yield
    backend._probe_cupy.cache_clear()


def test_gpu_status_without_cupy_fits_every_set_up(no_cupy):
    message = backend.gpu_status()
    assert not backend.gpu_available()
    assert "make" not in message, "a pip or hosted-notebook user has no Makefile"
    assert "%pip install cupy-cuda12x" in message and "cupy-cuda13x" in message
    assert "CPU executor" in message


def test_device_module_follows_the_device_asked_for(no_cupy):
    assert backend.device_module() is np and backend.device_module("cpu") is np
    with pytest.raises(RuntimeError, match="device='gpu'"):
        backend.device_module("gpu")
    with pytest.raises(ValueError, match="device"):
        backend.device_module("cuda")
