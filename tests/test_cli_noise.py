"""The CLI keeps other libraries' noise a user can do nothing about off the console, and nothing else."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from vichat.clitools import quiet_library_noise


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_only_the_two_known_messages_are_dropped():
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    keep = Keep()
    bnb.addHandler(keep)
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            quiet_library_noise()
            quiet_library_noise()  # twice: one filter
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("'path' is renamed 'base_path'", FutureWarning)
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please pip install kernels", "x")
        bnb.warning("some other bitsandbytes warning")
    finally:
        bnb.removeHandler(keep)
    assert [str(w.message) for w in shown] == ["'path' is renamed 'base_path'"]
    assert keep.messages == ["some other bitsandbytes warning"]
    assert sum(type(f).__name__ == "_DropMessage" for f in bnb.filters) == 1


def test_the_cli_no_longer_turns_on_other_libraries_resource_and_deprecation_warnings():
    code = ("import warnings, sys\n"
            "from click.testing import CliRunner\n"
            "from vichat.cli import main\n"
            "CliRunner().invoke(main, ['plugins'])\n"
            "warnings.warn_explicit('unclosed event loop', ResourceWarning, 'asyncio/base_events.py', 1, module='asyncio')\n"
            "warnings.warn_explicit('x is deprecated', DeprecationWarning, 'torch/jit/_script.py', 1, module='torch.jit')\n"
            "warnings.warn('vichat says', FutureWarning)\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stderr
    assert "vichat says" in err
    assert "unclosed event loop" not in err and "x is deprecated" not in err
