"""What a user hits first, said in one line (issue 23, item 5): ports in use, a NATS URL that does not answer (named,
without its password), Ctrl-C on ``mvs demo`` (exit 130, no traceback). Each command runs as the user runs it."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.nats_servers import NatsServer
from tests.support import run_module, start_module

TIMEOUT_S = 120


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def _run(*argv: str) -> tuple[int, list[str]]:
    return await run_module("deploy.cli", *argv, timeout_s=TIMEOUT_S)


@pytest.mark.slow
async def test_nats_port_in_use_is_one_line(nats_server: NatsServer) -> None:
    code, err = await _run("nats", "--port", str(nats_server.port))
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"mvs nats: nats-server: Error listening on port: 127.0.0.1:{nats_server.port}, ")
    assert err[0].endswith('bind: address already in use"')


@pytest.mark.slow
async def test_gateway_port_in_use_is_one_line(nats_server: NatsServer, busy_port: int) -> None:
    code, err = await _run("gateway", "--nats", nats_server.url, "--port", str(busy_port), "--log-level", "warning")
    assert code == 1 and len(err) == 1, err
    assert err[0] == f"mvs gateway: error while attempting to bind on address ('127.0.0.1', {busy_port}): " + (
        "address already in use"
    )


@pytest.mark.slow
async def test_a_nats_url_that_does_not_answer_is_named_in_the_log_without_its_password(busy_port: int) -> None:
    url = f"nats://gw:s3cret@127.0.0.1:{busy_port}"  # listens, never speaks NATS
    proc = await start_module("deploy.cli", "gateway", "--nats", url, "--port", "0")
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT_S)
    finally:
        proc.kill()
        await proc.wait()
    assert f'"nats_url": "nats://127.0.0.1:{busy_port}"' in line.decode() and b"s3cret" not in line


@pytest.mark.slow
async def test_ctrl_c_on_the_demo_exits_130_without_a_traceback(tmp_path: Path) -> None:
    proc = await start_module(
        "deploy.cli",
        "demo",
        "--frames",
        "300",
        "--size",
        "160x90",
        "--out",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    while b"streaming" not in (line := await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)):
        assert line, "the demo ended before it streamed"
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode == 130 and b"Traceback" not in err, err.decode()
    assert err.decode().splitlines()[-1] == f"mvs demo: interrupted; what the phone had is in {tmp_path}"
