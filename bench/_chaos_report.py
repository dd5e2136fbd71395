"""The checks' report of bench/chaos.py and how it is written down: the
console lines, the BENCHMARKS.md section and the docs/RELIABILITY.md block."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def expected_video_keys(job_id: str, manifest: dict[str, Any], audio: bool) -> set[str]:
    p = f"jobs/{job_id}"
    keys = {f"{p}/source", f"{p}/manifest.json", f"{p}/thumbs/00.jpg", f"{p}/thumbs/poster.jpg"}
    for name, chunks in manifest["chunks"].items():
        keys.add(f"{p}/{name}.mp4")
        keys |= {f"{p}/chunks/{name}/{n:05}.mp4" for n in range(chunks["count"])}
    if audio:
        keys.add(f"{p}/audio.m4a")
    return keys


def budget_violations(stamps: list[float], capacity: float, rate: float) -> int:
    """Requests (wall times, sorted) that a token bucket of ``capacity`` and
    ``rate`` per second, full at the start, would not have let through."""
    tokens, last, over = capacity, stamps[0] if stamps else 0.0, 0
    for t in stamps:
        tokens = min(capacity, tokens + (t - last) * rate)
        last = t
        if tokens >= 1 - 1e-9:
            tokens -= 1
        else:
            over += 1
    return over


def describe(rep: Report) -> str:
    lines = [f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if not ok and detail
                                                      else "")
             for name, ok, detail in rep.checks]
    lines += [f"      {k}: {v}" for k, v in rep.figures.items()]
    return "\n".join(lines)


def command(args: argparse.Namespace, d1_default: int) -> str:
    parts = [".venv/bin/python bench/chaos.py"]
    if args.quick:
        parts.append("--quick")
    if args.daemons != 3:
        parts.append(f"--daemons {args.daemons}")
    if args.seconds != 60 and not args.quick:
        parts.append(f"--seconds {args.seconds:g}")
    if args.d1_requests_per_5min != d1_default:
        parts.append(f"--d1-requests-per-5min {args.d1_requests_per_5min}")
    if args.backend != "sqlite":
        parts.append(f"--backend {args.backend}")
    if args.r2 != "filesystem":
        parts.append(f"--r2 {args.r2}")
    if args.faults:
        parts.append(f"--faults {args.faults:g}")
    if not args.kill:
        parts.append("--no-kill")
    if args.ai:
        parts.append("--ai")
    return " ".join(parts)


def section(args: argparse.Namespace) -> tuple[str, str]:
    """(BENCHMARKS.md section, RELIABILITY.md block) for this mode."""
    where = "SQLite" if args.backend == "sqlite" else "the D1 REST fake"
    store = "the filesystem store" if args.r2 == "filesystem" else "S3 (moto)"
    what = f"{args.daemons} daemons on {where} and {store}"
    if args.faults:
        what += f", {args.faults:.0%} faults at the wire"
    if args.kill:
        what += ", SIGKILL every 1-3 s"
    if args.ai:
        what += ", with ai.describe jobs"
    block = "chaos-" + args.backend + ("-faults" if args.faults else "") + (
        "" if args.kill else "-nokill") + ("-ai" if args.ai else "")
    return f"Chaos: {what}", block


def body(args: argparse.Namespace, rep: Report, settings: str, d1_default: int) -> str:
    """The figures as Markdown; ``settings`` describes the run's budgets."""
    f = rep.figures
    rows = [("jobs", f"{f['jobs']:,} ({', '.join(f'{v} {k}' for k, v in f['by kind'].items())})"),
            ("final states", ", ".join(f"{v:,} {k}" for k, v in f["final states"].items()))]
    if args.kill:
        rows.append(("kills (jobs the victims held)",
                     f"{f['kills']} ({f['jobs held by killed daemons']})"))
    rows += [("reaps (of them, leases of a live daemon) / lease_lost / continuations / "
              "retries", f"{f['reaps']} ({f['reaps of a live daemon']}) / "
              f"{f['lease_lost']} / {f['continuations']} / {f['retries']}"),
             ("failed pull cycles", f"{f['failed pull cycles']}")]
    if args.kill:
        rows += [("longest kill → victim's job running again",
                  f"{f['longest kill to running again s']} s"),
                 ("longest recovery (from the kill, or the victim's budget end if later)",
                  f"{f['longest recovery s']} s " + (
                      f"(target {f['recovery target s']} s)"
                      if f["recovery target s"] is not None
                      else "(no target: the survivors' own D1 requests are faulted too)"))]
    for name in ("d1", "s3", "messages"):
        if f"{name} faults" in f:
            faults = f[f"{name} faults"]
            rows.append((f"{name}: requests, faults injected",
                         f"{f[f'{name} requests']:,}, {sum(faults.values())} ("
                         + ", ".join(f"{v} {k}" for k, v in sorted(faults.items())) + ")"))
            rows.append((f"{name}: requests sent into an announced retry-after",
                         f"{f[f'{name} requests into an announced throttle']}"))
    if "ai requests reaching the API" in f:
        rows.append(("ai: requests reaching the Messages API / the most in any minute / "
                     "429s for its limit", f"{f['ai requests reaching the API']:,} / "
                     f"{f['ai: most requests in any minute']} / {f['ai: 429s for its limit']}"))
    lines = [f"`{command(args, d1_default)}` ({args.seconds:g} s of load, {settings}; targets: "
             "0 lost, 0 duplicated" + (", recovery within the lease grace plus two poll "
                                       "intervals" if f["recovery target s"] is not None
                                       else "") + ")\n",
             "| measured | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
             "Checks: " + "; ".join(f"{name}: {'passed' if ok else '**failed**'}"
                                    for name, ok, _ in rep.checks) + "."]
    return "\n".join(lines)


