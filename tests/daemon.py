"""Run the real ``gateway run`` daemon as a subprocess in tests; stop it by PID."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def outbox_readings(path: Path) -> list[tuple[str, str, Any]]:
    """(device, metric, value) of every reading in an outbox file, read with SQLite.

    One read transaction: beside a running daemon (WAL), the series and the rows come from
    the same commit, so every series a row names is there. Nothing before the file exists.
    """
    if not path.exists():
        return []
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        series = {sid: (d, m) for sid, d, m in db.execute("SELECT id, device, metric FROM series")}
        blobs = [blob for (blob,) in db.execute("SELECT blob FROM telemetry")]
        db.execute("COMMIT")
    finally:
        db.close()
    out = []
    for blob in blobs:
        flat = json.loads(blob)  # [base_ms, series, value, dt_ms, series, value, ...]
        for i in range(1, len(flat), 3):
            out.append((*series[flat[i]], flat[i + 1]))
    return out


class GatewayProcess:
    """A gateway daemon on a config written from ``config`` (a dict) into ``workdir``."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = self.workdir / "gateway.yaml"
        self.log_path = self.workdir / "gateway.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    def start(self, wait_ready: float = 20.0) -> GatewayProcess:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        if wait_ready:
            self.wait_for_log("ready in", wait_ready)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(needle) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.proc.returncode}):\n{self.log_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"{needle!r} not logged within {timeout} s:\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None
        return rc

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last commit: what a power cut or OOM kill does."""
        self.stop(signal.SIGKILL)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
