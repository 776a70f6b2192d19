"""The suite draws the same random cases on every run, so CI passes or fails for the code
alone: Hypothesis's examples come from each test's source, not a fresh seed, and no test
seeds a generator from hash(), which differs between processes (PYTHONHASHSEED)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

TESTS = Path(__file__).parent


def test_property_tests_draw_the_same_examples_on_every_run():
    if settings.get_current_profile_name() != "ci":
        pytest.skip("a profile picked by hand (--hypothesis-profile) draws as it says")
    assert settings().derandomize and settings().deadline is None


def test_no_test_seeds_a_generator_from_hash():
    seeded_from_hash = re.compile(r"(default_rng|seed|Random|RandomState)\([^)\n]*\bhash\(")
    found = [f"{path.name}:{number}"
             for path in sorted(TESTS.glob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if seeded_from_hash.search(line)]
    assert found == [], f"seeded from hash(), new in each process: {found}"


def _profiles_where(ci: str | None) -> str:
    """The suite's two profiles as registered in a process whose CI variable is `ci`."""
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    show = ("import runpy; from hypothesis import settings; "
            "runpy.run_path('tests/conftest.py'); "
            "print([repr(settings.get_profile(p)) for p in ('ci', 'explore')])")
    done = subprocess.run([sys.executable, "-c", show], cwd=TESTS.parent, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_the_profiles_are_the_same_with_or_without_a_ci_variable():
    """Before: each profile inherited from the one loaded when it was registered, Hypothesis's
    own "ci" where a CI variable is set: CI suppressed the too_slow health check (a timing)
    and kept no example database for `explore`, a developer's machine did both."""
    assert _profiles_where("true") == _profiles_where(None)
