"""``mvs nats`` stops on SIGINT and SIGTERM even when started with SIGINT ignored (a script's background job)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


IGNORING_SIGINT = ["sh", "-c", "trap '' INT; exec \"$@\"", "sh"]
"""What a non-interactive shell does to a background job (``mvs nats &`` in a script): SIGINT ignored, which exec
keeps. (A shell rather than a ``preexec_fn``: Python code in a forked child of this threaded test process can hang.)"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_mvs_nats_stops_on_signals_even_if_started_with_sigint_ignored(tmp_path: Path, sig: signal.Signals) -> None:
    cmd = [sys.executable, "-m", "deploy.cli", "nats", "--port", "0", "--store-dir", str(tmp_path)]
    proc = subprocess.Popen([*IGNORING_SIGINT, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the server listens (port 0: any free one, in the URL)
        assert "nats-server listening" in line
        proc.send_signal(sig)
        assert proc.wait(timeout=STOP_TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
