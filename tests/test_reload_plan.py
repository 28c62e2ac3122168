"""What a reload plans: sections a running daemon keeps until it restarts."""

from __future__ import annotations

from pathlib import Path

from gateway.config.model import load_config
from gateway.reload import plan


def _config(tmp_path: Path, name: str, body: str):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(f"gateway:\n  id: gw1\n  state_dir: {tmp_path / 'state'}\n{body}")
    return load_config(path)


def test_a_changed_history_section_needs_a_restart_and_is_kept(tmp_path: Path) -> None:
    running = _config(tmp_path, "a.yaml", "history:\n  enabled: true\n")
    new = _config(tmp_path, "b.yaml", "history:\n  enabled: true\n  flush_interval: 5m\n"
                  "readings:\n  max_string: 100\n")
    p = plan(running, new)
    assert p.restart_needed == ["history"]
    assert p.config.history == running.history  # left as the daemon runs it
    assert p.changed("readings") and not p.changed("history")
