"""Start `python -m pagedllm.entrypoints.openai.api_server` as a subprocess on a free loopback port.

The server binds port 0 and logs its URL; we read it from the log file, then wait for /health.
`stop()` sends SIGTERM and returns the exit code (0 means a graceful shutdown).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import httpx

_URL_RE = re.compile(r"Serving on (http://[^\s]+)")


class ServerProcess:
    def __init__(
        self,
        model: str,
        *extra_args: str,
        startup_timeout: float = 120.0,
        via_cli: bool = False,
    ) -> None:
        """`via_cli` starts it as `python -m pagedllm.entrypoints.cli serve MODEL` instead."""
        self.log_file = tempfile.NamedTemporaryFile(
            "w+", prefix="pagedllm-server-", suffix=".log", delete=False
        )
        if via_cli:
            entry = ["-m", "pagedllm.entrypoints.cli", "serve", str(model)]
        else:
            entry = ["-m", "pagedllm.entrypoints.openai.api_server", "--model", str(model)]
        cmd = [
            sys.executable,
            *entry,
            "--port",
            "0",
            "--disable-uvicorn-access-log",
            *extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(Path(__file__).parent),
        )
        self.url = self._wait_for_url(startup_timeout)
        self.base_url = self.url + "/v1"

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            match = _URL_RE.search(self.log())
            if match:
                url = match.group(1)
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(url + "/health", timeout=2).status_code == 200:
                            return url
                    except httpx.TransportError:
                        pass
                    time.sleep(0.1)
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"server did not stop within {timeout}s:\n{self.log()}")
        return self.proc.returncode

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.log_file.close()
            os.unlink(self.log_file.name)


class InProcessServer:
    """The same server in a background thread of this process, so a test can reach its engine
    (e.g. `server.engine._fault_injector`). `stop()` asks uvicorn to exit and returns the code."""

    def __init__(self, model: str, *extra_args: str, startup_timeout: float = 120.0) -> None:
        import asyncio
        import threading

        from pagedllm.engine.arg_utils import AsyncEngineArgs
        from pagedllm.engine.async_llm_engine import AsyncLLMEngine
        from pagedllm.entrypoints.openai.api_server import make_parser, run_server

        args = make_parser().parse_args(
            ["--model", str(model), "--port", "0", "--disable-uvicorn-access-log", *extra_args]
        )
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs.from_cli_args(args))
        self.exit_code: Optional[int] = None
        self._ready = threading.Event()
        self._server = None

        def on_ready(url: str, server) -> None:
            self.url, self._server = url, server
            self._ready.set()

        def run() -> None:
            self.exit_code = asyncio.run(run_server(args, engine=self.engine, on_ready=on_ready))
            self._ready.set()

        self._thread = threading.Thread(target=run, name="pagedllm-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(startup_timeout) or self._server is None:
            raise RuntimeError("in-process server did not start")
        self.base_url = self.url + "/v1"

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("in-process server did not stop")
        return self.exit_code


def serve_for_fixture(model: str, *extra_args: str) -> Iterator[ServerProcess]:
    """For pytest fixtures (`yield from`): a server that is stopped afterwards and must have
    exited gracefully (0)."""
    proc = ServerProcess(model, *extra_args)
    try:
        yield proc
    finally:
        code = proc.stop()
        proc.close()
        assert code == 0, f"server exit code {code}"
