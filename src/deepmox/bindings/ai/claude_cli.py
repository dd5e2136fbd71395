"""The ``claude-cli`` provider: ``claude -p --output-format json``.

The prompt goes in on standard input; the CLI prints one JSON result object.
The child runs in its own process group, in an empty folder of the actor's
(so no project file is read as instructions), without deepmox's own secrets
in its environment, and with a timeout from the actor's remaining budget: a
hang is killed with its whole group at the budget.

What the result means, read in this order: ``is_error`` first; then
``api_error_status`` (the API's status behind an error), then ``subtype``
(``success``, ``error_max_turns``, ``error_during_execution``, ...); then
``result``, ``total_cost_usd`` and ``usage``:

=============================================  ===================================
not JSON, nothing printed, a non-zero exit      transient (and a growing hold)
does not answer in time (killed)                transient (and a growing hold)
``api_error_status`` 429 or 529                 rate_limited, a growing wait
``api_error_status`` 5xx                        transient
``api_error_status`` 4xx                        permanent (the next provider)
``error_max_turns``                             permanent
``error_during_execution``, other errors        transient
=============================================  ===================================
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from ...config import ClaudeCliConfig
from ...errors import (
    AIPermanentError,
    AIRateLimitedError,
    AIUnavailableError,
    MediaBudgetError,
    MediaUnavailableError,
)
from ..media.process import NO_LIMITS, run
from .interface import Completion, Prompt, Usage

NAME = "claude-cli"
UPSTREAM = "ai:claude-cli"
_API_ERROR = re.compile(r"API Error:\s*(\d{3})")


class CliUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class CliResult(msgspec.Struct):
    """The CLI's result object (fields it may add are ignored)."""

    type: str = "result"
    subtype: str = ""
    is_error: bool = False
    result: str | None = None
    api_error_status: int | None = None
    total_cost_usd: float | None = None
    usage: CliUsage | None = None
    #: the model(s) used, when the CLI reports them
    modelUsage: dict[str, object] | None = None


_decode = msgspec.json.Decoder(CliResult).decode


def read_result(stdout: bytes) -> CliResult | None:
    """The result object on ``stdout`` (its last JSON line), or ``None``."""
    for line in reversed(stdout.decode("utf-8", "replace").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return _decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
    return None


def classify(result: CliResult) -> Exception | None:
    """The deepmox error for a result with ``is_error``, else ``None``."""
    if not result.is_error:
        return None
    status = result.api_error_status
    text = (result.result or "").strip()
    if status is None:
        m = _API_ERROR.search(text)
        status = int(m[1]) if m else None
    what = f"claude reported an error ({result.subtype or 'no subtype'}"
    what += f", API status {status})" if status is not None else ")"
    if text:
        what += f": {text[:300]}"
    if status in (429, 529):
        return AIRateLimitedError(what, upstream=UPSTREAM, retry_after=0.0, overloaded=True)
    if status is not None and status >= 500:
        return AIUnavailableError(what, upstream=UPSTREAM)
    if status is not None and 400 <= status < 500:
        return AIPermanentError(what)
    if result.subtype == "error_max_turns":
        return AIPermanentError(what + " (it stopped at its turn limit)")
    return AIUnavailableError(what, upstream=UPSTREAM)


def child_env(secret_names: Iterable[str]) -> dict[str, str]:
    """deepmox's environment without deepmox's own secrets."""
    drop = set(secret_names)
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith("DEEPMOX_")}


class ClaudeCliProvider:
    name = NAME
    upstream = UPSTREAM
    needs_workdir = True

    def __init__(self, cfg: ClaudeCliConfig, *, secret_names: Iterable[str] = (),
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self._secret_names = tuple(secret_names)
        self._extra_env = dict(extra_env or {})
        self.executable = shutil.which(cfg.path)

    def unusable(self) -> str | None:
        if self.executable is None:
            return f"no `{self.cfg.path}` on PATH"
        return None

    def argv(self) -> list[str]:
        assert self.executable is not None
        model = ["--model", self.cfg.model] if self.cfg.model else []
        return [self.executable, "-p", "--output-format", "json", *model, *self.cfg.extra_args]

    async def complete(self, prompt: Prompt, *, timeout_s: float,
                       workdir: Path | None) -> Completion:
        if self.executable is None:
            raise AIPermanentError(self.unusable() or "claude is not usable")
        try:
            done = await run(self.argv(), stdin=prompt.flat().encode(), limits=NO_LIMITS,
                             timeout_s=max(0.1, timeout_s), cwd=workdir,
                             env={**child_env(self._secret_names), **self._extra_env})
        except MediaBudgetError as exc:
            raise AIUnavailableError(
                f"claude did not answer within {timeout_s:.1f} s; its process group was "
                "killed", upstream=UPSTREAM) from exc
        except MediaUnavailableError as exc:
            raise AIPermanentError(f"cannot start claude: {exc.message}") from exc
        result = read_result(done.stdout)
        if result is None:
            said = done.stdout.decode("utf-8", "replace").strip()[:200]
            if done.returncode != 0:
                tail = done.stderr_tail.strip().splitlines()[-1:] or [""]
                raise AIUnavailableError(
                    f"claude exited with status {done.returncode} without a result"
                    + (f": {tail[0][:200]}" if tail[0] else ""), upstream=UPSTREAM)
            raise AIUnavailableError(
                "claude printed something that is not its JSON result"
                + (f": {said!r}" if said else " (nothing)"), upstream=UPSTREAM)
        error = classify(result)
        if error is not None:
            raise error
        if result.result is None:
            raise AIUnavailableError("claude's result has no text", upstream=UPSTREAM)
        u = result.usage or CliUsage()
        usage = Usage(u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens,
                      u.output_tokens, result.total_cost_usd)
        model = next(iter(result.modelUsage), None) if result.modelUsage else None
        return Completion(text=result.result, usage=usage, model=model or self.cfg.model or None)

    async def aclose(self) -> None:
        return None
