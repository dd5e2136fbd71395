"""The ``deepmox`` command line as a user runs it: real processes on a real
SQLite file.

Rules: every command runs as a subprocess of the installed entry point; errors
must be one line on stderr with exit code 2 (refused) or 1, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.cfg = tmp / "deepmox.toml"
        self.cfg.write_text(f'[d1]\npath = "{tmp / "cli.db"}"\n[server]\nlisten = ""\n')

    def __call__(self, *args: str, config: Path | None = None
                 ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "deepmox", "--config", str(config or self.cfg), *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert "Traceback" not in out.stderr, out.stderr
        return out


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    c = Cli(tmp_path)
    assert c("migrate").returncode == 0
    return c


def test_submit_status_jobs_events(cli: Cli) -> None:
    out = cli("submit", "sleep", "--payload", '{"seconds": 2, "steps": 2}', "--priority", "5")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert len(job_id) == 26
    status = json.loads(cli("status", job_id, "--json").stdout)
    for key in ("id", "kind", "state", "attempt", "max_attempts", "priority", "progress",
                "error_class", "error_message", "result", "created_at", "updated_at"):
        assert key in status
    assert (status["kind"], status["state"], status["priority"]) == ("sleep", "pending", 5)
    jobs = json.loads(cli("jobs", "--json").stdout)
    assert [j["id"] for j in jobs] == [job_id]
    events = json.loads(cli("events", job_id, "--json").stdout)
    assert [e["type"] for e in events] == ["submitted"]
    assert {"type", "ts", "attempt", "error_class", "detail"} <= set(events[0])
    human = cli("status", job_id)
    assert human.returncode == 0
    assert "pending" in human.stdout


def test_submit_json_and_idempotency(cli: Cli) -> None:
    first = json.loads(cli("submit", "noop", "--idempotency-key", "k1", "--json").stdout)
    again = cli("submit", "noop", "--idempotency-key", "k1")
    assert again.returncode == 0
    assert again.stdout.strip() == first["id"]
    assert "existing job" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "nope"], "unknown job kind 'nope'"),
        (["submit", "sleep", "--payload", "{bad"], "--payload is not valid JSON"),
        (["submit", "sleep", "--payload", '{"seconds": "x"}'], "at `$.seconds`"),
        (["submit", "noop", "--max-attempts", "0"], "at `$.max_attempts`"),
        (["status", "nosuchjob"], "no job with id 'nosuchjob'"),
        (["jobs", "--limit", "-1"], "--limit must be 0"),
        # each was a traceback (the hostile-input fuzz)
        (["jobs", "--limit", "99999999999999999999"], "--limit must be 0"),
        (["submit", "noop", "--payload", "[" * 5000 + "]" * 5000], "nests too deeply"),
        (["submit", "noop", "--idempotency-key", "k\x01"], "printable ASCII"),
        (["jobs", "--state", "done"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_refusals_exit_2_with_one_line(cli: Cli, args: list[str], message: str) -> None:
    out = cli(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stderr.strip().count("\n") <= 1 or args[0] == "frobnicate"


def test_bad_config_exits_2_naming_the_key(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor]\nbudget_s = 'soon'\n")
    out = cli("jobs", config=bad)
    assert out.returncode == 2
    assert "$.supervisor.budget_s" in out.stderr


def test_cancel_retry_and_conflicts(cli: Cli) -> None:
    job_id = cli("submit", "noop").stdout.strip()
    assert cli("cancel", job_id).stdout.strip() == f"{job_id} cancelled"
    again = cli("cancel", job_id)
    assert again.returncode == 2
    assert "already cancelled" in again.stderr
    retried = json.loads(cli("retry", job_id, "--json").stdout)
    assert retried["state"] == "pending"


def test_doctor_reports_each_check(cli: Cli) -> None:
    out = cli("doctor")
    assert "d1 reachable" in out.stdout
    assert "migrations" in out.stdout
    assert "ai provider claude-cli: " in out.stdout
    assert "ai provider heuristic: usable: offline, deterministic" in out.stdout
    assert out.returncode == 0, out.stdout


def test_doctor_fails_when_no_ai_provider_is_usable(cli: Cli, tmp_path: Path) -> None:
    cfg = tmp_path / "noai.toml"
    cfg.write_text(cli.cfg.read_text() + '\n[ai]\nproviders = ["claude-cli"]\n'
                   '[ai.claude-cli]\npath = "no-such-claude"\n')
    out = cli("doctor", config=cfg)
    assert "ai provider claude-cli: skipped: no `no-such-claude` on PATH" in out.stdout
    assert "no configured provider is usable" in out.stdout
    assert out.returncode == 1


def test_run_refuses_a_public_port_without_a_token(cli: Cli, tmp_path: Path) -> None:
    public = tmp_path / "public.toml"
    public.write_text(cli.cfg.read_text().replace('listen = ""', 'listen = "0.0.0.0:0"'))
    out = cli("run", config=public)
    assert out.returncode == 2, out.stderr
    assert "without a token" in out.stderr
    assert "$.server.listen" in out.stderr
