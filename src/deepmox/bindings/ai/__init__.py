"""The AI binding: inference providers behind one gate each.

- :mod:`.claude_cli`: ``claude -p --output-format json`` as a child process;
- :mod:`.anthropic_api`: the Messages API through the anthropic SDK;
- :mod:`.heuristic`: offline and deterministic;
- :mod:`.context`: the text a provider describes, by source priority;
- :mod:`.prompt`: what a model is asked, and the repair request;
- :mod:`.validate`: the answer decoded and checked for meaning;
- :mod:`.gate`: what keeps a failing or throttling API from being stormed.
"""

from __future__ import annotations

from .binding import AI, ProviderStatistics
from .context import Context, ContextSource, Cue, choose
from .gate import Gate, GateStatistics
from .interface import Completion, ModelProvider, Prompt, RateInfo, Turn, Usage
from .validate import Chapter, Draft, check, parse

__all__ = [
    "AI", "Chapter", "Completion", "Context", "ContextSource", "Cue", "Draft", "Gate",
    "GateStatistics", "ModelProvider", "Prompt", "ProviderStatistics", "RateInfo", "Turn",
    "Usage", "check", "choose", "parse",
]
