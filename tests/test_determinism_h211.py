"""The suite draws the same random cases on every run, so CI passes or fails for the code
alone: Hypothesis's examples come from each test's source, not a fresh seed, and no test
seeds a generator from hash(), which differs between processes (PYTHONHASHSEED)."""
import re
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
