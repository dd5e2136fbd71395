"""What the AI binding costs a daemon that does not use the SDK."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import sys
from deepmox.bindings.ai import AI
from deepmox.config import Config
ai = AI(Config())
print(sorted(name for name in ("anthropic",) if name in sys.modules))
"""


def run_probe(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_the_sdk_is_not_imported_until_the_provider_is_used() -> None:
    # the anthropic SDK costs a process about 50 MB: a daemon whose anthropic
    # provider has no key (or is never called) must not carry it
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    assert run_probe(env) == "[]"
    assert run_probe({**env, "ANTHROPIC_API_KEY": "sk-ant-made-up"}) == "[]"
