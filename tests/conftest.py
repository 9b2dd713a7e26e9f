import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $VICHAT_SHARED_DATA): public data read in place, never copied."""
    path = Path(os.environ.get("VICHAT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "MANIFEST.md").exists():
        pytest.skip(f"shared data not found at {path}; set VICHAT_SHARED_DATA")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Caches that commands write by default go to a per-session temp folder, not ~/.cache.
    monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vichat-cache"))
