"""Shared test fixtures: where the golden reference sets are, and how to compare."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    """ZEMOSAIC_OOC_FIXTURES, else ../shared/fixtures beside the checkout (ACCEPTANCE §7)."""
    env = os.environ.get("ZEMOSAIC_OOC_FIXTURES")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "fixtures"


def fixture_dirs() -> list[Path]:
    """Every folder under the fixtures root that has a ref.json (new layouts may appear)."""
    root = fixtures_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "ref.json").is_file())


def require_fixtures() -> list[Path]:
    dirs = fixture_dirs()
    if not dirs:
        message = f"golden fixtures not found under {fixtures_root()}"
        if os.environ.get("ZEMOSAIC_OOC_REQUIRE_FIXTURES") == "1":
            pytest.fail(message + " (ZEMOSAIC_OOC_REQUIRE_FIXTURES=1)")
        pytest.skip(message)
    return dirs


def pytest_generate_tests(metafunc):
    if "fixture_dir" in metafunc.fixturenames:
        dirs = fixture_dirs()
        if dirs:
            metafunc.parametrize("fixture_dir", dirs, ids=[d.name for d in dirs])
        else:
            metafunc.parametrize("fixture_dir", [None], ids=["no-fixtures"])


@pytest.fixture
def fixture_dir_checked(fixture_dir):
    if fixture_dir is None:
        require_fixtures()
    return fixture_dir
