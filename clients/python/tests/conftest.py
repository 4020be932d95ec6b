"""A real platformd for the tests: the binary cargo built, on a fresh SQLite data dir, on a free
loopback port (it logs the address it bound as JSON), stopped after the session."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tempfile
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


def platformd_binary() -> pathlib.Path:
    if os.environ.get("PLATFORMD_BIN"):
        return pathlib.Path(os.environ["PLATFORMD_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "platformd"


class Server:
    def __init__(self, addr: str, token: str) -> None:
        self.addr = addr
        self.token = token


@pytest.fixture(scope="session")
def server():
    binary = platformd_binary()
    if not binary.exists():
        pytest.fail(f"{binary} is missing: build it first (cargo build -p platformd)")
    data = tempfile.TemporaryDirectory()
    process = subprocess.Popen(
        [
            str(binary),
            "serve",
            "--listen=127.0.0.1:0",
            "--data-dir",
            data.name,
            "--log-format=json",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PLATFORM_")},
    )
    bound = threading.Event()
    found: dict[str, str] = {}
    log: list[str] = []

    def drain() -> None:  # reads the log for the whole run, so the server never blocks on it
        for line in process.stderr:
            log.append(line)
            try:
                addr = json.loads(line).get("local_addr")
            except ValueError:
                continue
            if addr and not bound.is_set():
                found["addr"] = addr
                bound.set()

    threading.Thread(target=drain, daemon=True).start()
    if not bound.wait(60):
        process.kill()
        pytest.fail("platformd did not start:\n" + "".join(log))
    token = (pathlib.Path(data.name) / "bootstrap-admin.token").read_text().strip()
    yield Server(f"http://{found['addr']}", token)
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
    data.cleanup()
