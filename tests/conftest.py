import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A shell that starts the suite in the background (`cmd &` without job control) makes it ignore
# SIGINT, and Python then never turns Ctrl-C into KeyboardInterrupt, nor do the commands the tests
# start (an ignored signal stays ignored across exec). The Ctrl-C tests need the real behaviour.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
