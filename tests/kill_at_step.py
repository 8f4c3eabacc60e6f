"""``python tests/kill_at_step.py N chexfusion-args...``: the command line, ended like ``kill -9`` right after
optimizer step N, so the resume tests interrupt training at an exact, repeatable point."""

import os
import signal
import sys

from chexfusion.cli import main
from chexfusion.training import loop

STEP = int(sys.argv[1])


def _stop_at(progress) -> None:
    if progress.global_step == STEP:
        os.kill(os.getpid(), signal.SIGKILL)


loop.after_optimizer_step = _stop_at
sys.exit(main(sys.argv[2:]))
