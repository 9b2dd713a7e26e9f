"""Worker entry point: ``deepspeed ... --module vichat.train.launch PRESET [flags]`` runs this in
every process. It rebuilds the same configuration as `vichat train` and runs the training loop
in place (it never launches again)."""

import sys

from .commands import run_worker

if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_worker(sys.argv[1:]))
