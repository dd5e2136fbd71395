"""Configuration: defaults, the example file, refusals that name the key,
secrets from the environment and systemd credentials.

Rules: no file outside tmp_path is written; the environment is patched with
monkeypatch only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepmox import config
from deepmox.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_defaults() -> None:
    cfg = config.Config()
    assert cfg.d1.backend == "sqlite"
    assert cfg.d1.path == "var/deepmox.db"
    assert cfg.r2.path == "var/r2"
    assert cfg.d1.api_base == "https://api.cloudflare.com/client/v4"
    assert cfg.d1.requests_per_5min == 1200
    assert cfg.supervisor.budget_s == 30


def test_example_file_decodes_to_the_defaults() -> None:
    cfg = config.load(ROOT / "systemd" / "config.example.toml")
    assert cfg.d1 == config.Config().d1
    assert cfg.supervisor == config.Config().supervisor
    assert cfg.limits == config.Config().limits
    assert cfg.video == config.Config().video
    assert cfg.server == config.Config().server
    assert cfg.ai == config.Config().ai
    assert cfg.budget_for("sleep") == 30.0


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[d1]\nbackend = "postgres"', "$.d1.backend"),
        ("[supervisor]\nbudget = 3", "unknown key - at `$.supervisor.budget`"),
        ("[supervisor]\nbudget_s = -1", "$.supervisor.budget_s"),
        ('[supervisor]\nmax_actors = "many"', "$.supervisor.max_actors"),
        ("[kinds.noop]\nmax_actors = 0", "$.kinds.noop.max_actors"),
        ("[unknown]\nx = 1", "unknown key - at `$.unknown`"),
        ("[kinds.noop]\nbudget = 3", "unknown key - at `$.kinds.noop.budget`"),
        ('[kinds."video.transcode"]\nbudget_s = "x"', '$.kinds."video.transcode".budget_s'),
        ("[kinds.video.transcode]\nbudget_s = 1", "- at `$.kinds.video.transcode`"),
        ('[d1]\nbackend = "http"', "$.d1.account_id"),
        ("[supervisor]\npoll_min_s = 5\npoll_max_s = 1", "$.supervisor.poll_min_s"),
        ("[ai]\nproviders = []", "$.ai.providers"),
        ('[ai]\nproviders = ["heuristic", "heuristic"]', "$.ai.providers"),
        ('[ai]\nproviders = ["gpt"]', "Invalid enum value 'gpt'"),
        ("[ai.anthropic]\nmax_tokens = 0", "$.ai.anthropic.max_tokens"),
        ("[ai.claude-cli]\nmax_concurrent = 0", "$.ai.claude-cli.max_concurrent"),
        ("[ai.claude-cli]\nflags = []", "$.ai.claude-cli"),
        ("[ai.anthropic]\nrequests_per_minute = -5", "$.ai.anthropic.requests_per_minute"),
        ('[ai.anthropic.prices."m"]\ninput_per_mtok = 1', "$.ai.anthropic.prices"),
        ('[ai.anthropic.prices."m"]\ninput_per_mtok = -1\noutput_per_mtok = 1',
         "$.ai.anthropic.prices.m"),
        ('[kinds.video.publish]\nbudget_s = 5', "$.kinds"),
    ],
)
def test_bad_config_names_the_key(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.decode(text, source="x.toml")
    assert path in str(info.value)


def test_a_dotted_kind_name_gets_a_hint() -> None:
    with pytest.raises(ConfigError, match=r'quoted: \[kinds\."video\.publish"\]'):
        config.decode("[kinds.video.publish]\nbudget_s = 5")


def test_bad_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.decode("[d1\n")


@given(st.text(max_size=200))
def test_any_text_decodes_or_raises_config_error(text: str) -> None:
    message = "decoded"
    try:
        config.decode(text)
    except ConfigError as exc:
        message = str(exc)
    assert message


def test_load_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    assert config.load() == config.Config()
    (tmp_path / "deepmox.toml").write_text("[supervisor]\nbudget_s = 7\n")
    assert config.load().supervisor.budget_s == 7
    other = tmp_path / "other.toml"
    other.write_text("[supervisor]\nbudget_s = 9\n")
    monkeypatch.setenv(config.CONFIG_ENV, str(other))
    assert config.load().supervisor.budget_s == 9
    assert config.load(tmp_path / "deepmox.toml").supervisor.budget_s == 7
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")


def test_secrets_come_from_env_or_credentials(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPMOX_TEST_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert config.secret("DEEPMOX_TEST_TOKEN") is None
    (tmp_path / "DEEPMOX_TEST_TOKEN").write_text("from-credentials\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.secret("DEEPMOX_TEST_TOKEN") == "from-credentials"
    monkeypatch.setenv("DEEPMOX_TEST_TOKEN", "from-env")
    assert config.secret("DEEPMOX_TEST_TOKEN") == "from-env"


def test_http_backend_without_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepmox.bindings.d1 import open_d1

    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = config.decode('[d1]\nbackend = "http"\naccount_id = "a"\ndatabase_id = "b"')
    with pytest.raises(ConfigError, match="CLOUDFLARE_API_TOKEN"):
        open_d1(cfg.d1)
