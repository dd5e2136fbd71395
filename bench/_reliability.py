"""Writing a bench's figures into docs/RELIABILITY.md, beside BENCHMARKS.md.

Each bench owns one block between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` markers in the doc; :func:`record_reliability` replaces
what lies between them and leaves the rest of the (hand-written) doc alone.
"""

from __future__ import annotations

import re
import time

from _harness import ROOT, machine

RELIABILITY = ROOT / "docs" / "RELIABILITY.md"


def record_reliability(name: str, body: str) -> bool:
    """Replace block ``name`` of docs/RELIABILITY.md; False when the doc has no
    such block (the figures are then only in BENCHMARKS.md)."""
    if not RELIABILITY.exists():
        return False
    text = RELIABILITY.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"{begin}\n_{stamp}; {machine()}_\n\n{body.strip()}\n{end}"
    RELIABILITY.write_text(pattern.sub(lambda _: block, text))
    return True
