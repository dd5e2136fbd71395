"""Chaos: N daemons on one database, one of them killed with SIGKILL every
1-3 s and restarted, while they drain a mix of jobs; then everything drains
and every job is checked.

    .venv/bin/python bench/chaos.py                      # SQLite, 3 daemons, 60 s
    .venv/bin/python bench/chaos.py --backend http       # the D1 REST test fake
    .venv/bin/python bench/chaos.py --backend http --r2 s3 --faults 0.1
    .venv/bin/python bench/chaos.py --quick              # CI's short mode
    .venv/bin/python bench/chaos.py --faults 0.1 --no-kill --backend http --r2 s3

What runs: ``deepmox run`` processes (``--daemons``, default 3), each in its
own process group, on a SQLite file or on ``tests/fakes/d1_server.py`` (its
own process), with the filesystem object store or moto's S3 server (its own
process). With ``--faults RATE`` the daemons reach D1 and S3 only through
``tests/fakes/fault_proxy.py``, which answers that share of requests with a
5xx, a 429 with retry-after, D1's overload message, added latency, a reset
mid-answer, a cut upload or a lost answer to an applied write. The bench
itself submits and reads straight from the database and the store, never
through a proxy.

The mix (:data:`MIX`): ``noop``; ``sleep`` in steps that need continuations;
``fail`` transient (recovers), rate_limited (recovers after its throttle) and
permanent (fails); short ``video.transcode`` jobs on clips made with ffmpeg.

Checks (exit status 1 when one fails):

* every job terminal, in the state its kind and payload imply;
* exactly one ``completed`` event per completed job, none for the others;
* no two leases on one job overlapping (``tests.helpers.lease_overlaps`` over
  ``job_events``), and no lease reaped before it expired;
* each video job's prefix holding exactly the expected keys;
* every daemon drains and exits 0 on the final SIGTERM; no scratch folder left;
* with faults: the D1 requests that reached the proxy never exceed the sum of
  the daemons' request budgets (a token bucket of their summed burst and rate);
* recovery: every job a killed daemon held runs again; in a full run without
  D1 faults, within ``lease_grace_s`` plus two poll intervals of the kill (or
  of when its actor's budget would have ended anyway, if later). ``--quick``
  checks no timing: CI's tests make no timed assertions.

Figures: jobs, kills, reaps, lease_lost, continuations, retries, failed pull
cycles, faults injected, the longest time from a kill to the victim's jobs
running again, and the longest recovery as above. A full run (not
``--quick``, not ``--no-record``) writes them into BENCHMARKS.md and
docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.helpers, tests.fakes

from _chaos_report import (
    Report,
    body,
    budget_violations,
    describe,
    expected_video_keys,
    section,
)
from _harness import free_port, record, workdir
from _reliability import record_reliability
from deepmox import config
from deepmox.actors.registry import Registry
from deepmox.client import JobSpec, open_client
from deepmox.testing import media_samples
from tests.fakes.fault_proxy import FaultProxy, serve_proxy
from tests.helpers import LEASE_ENDING, Proc, Processes, lease_overlaps, toml

ROOT = Path(__file__).resolve().parent.parent
D1_FAKE = ROOT / "tests" / "fakes" / "d1_server.py"
#: made-up credentials: the fakes accept whatever they are given
D1_TOKEN = "chaos-token-not-a-secret"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "chaos-access", "AWS_SECRET_ACCESS_KEY": "chaos-secret"}
S3_REGION = "eu-west-1"
BUCKET = "chaos"
START_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 180.0
#: how long a request of a killed daemon may still be on its way to D1
IN_FLIGHT_S = 0.5

#: short budgets so that a reap happens within seconds and long jobs continue
SUPERVISOR = {"budget_s": 2.0, "lease_grace_s": 1.0, "poll_max_s": 0.25, "max_actors": 16,
              "backoff_base_s": 0.2, "backoff_max_s": 2.0, "drain_s": 5.0,
              "max_deferral_s": 600.0}
MAX_ATTEMPTS = 25
#: video steps (assemble: every chunk down from the store, concat, probe, up
#: again) need more than 2 s on a busy 2-core machine
VIDEO_BUDGET_S = 4.0
#: each daemon's D1 REST budget: its idle floor (4 x 300 s / budget) is 0.4 s
D1_REQUESTS_PER_5MIN = 3000


@dataclass(frozen=True)
class JobType:
    """One entry of the mix: what to submit, how many per wave, what it must end as."""

    label: str
    kind: str
    payload: dict[str, Any]
    expect: str
    per_wave: float


MIX = [
    JobType("noop", "noop", {"value": 1}, "completed", 8),
    JobType("sleep", "sleep", {"seconds": 3.0, "steps": 6}, "completed", 1.5),
    JobType("fail transient", "fail", {"error_class": "transient", "times": 2},
            "completed", 1.5),
    JobType("fail rate_limited", "fail", {"error_class": "rate_limited", "times": 1,
                                          "retry_after": 0.5, "upstream": "chaos"},
            "completed", 0.3),
    JobType("fail permanent", "fail", {"error_class": "permanent"}, "failed", 0.3),
]
#: (seconds, with audio) of the clips the video jobs transcode, taken in turn
CLIPS = [(3.0, True), (2.0, False), (4.0, True)]

# -- issue 4 hook: ai.describe -------------------------------------------------------
# When the AI kinds land, `--ai` adds ai.describe jobs to the mix, served by the
# anthropic provider against the Messages API test fake (tests/fakes/
# messages_server.py), which sits behind its own fault proxy (flavor "messages")
# when --faults is set. Everything below is wired; what may need adjusting once
# issue 4 is merged: AI_PAYLOAD (the ai.describe payload contract), AI_ANSWER
# (what the fake answers: valid output for that payload) and AI_SECTIONS (the
# [ai] keys).
AI_KIND = "ai.describe"
AI_PAYLOAD = {"description": "A chaos run clip: a moving test pattern and a 440 Hz tone.",
              "title_hint": "chaos", "duration_s": 3.0}
AI_ANSWER = json.dumps({"title": "Chaos clip", "summary": "A moving test pattern with a tone.",
                        "tags": ["chaos", "test"],
                        "chapters": [{"start_s": 0.0, "title": "Start"}]})
AI_PER_WAVE = 1.5
#: the Messages API fake allows this many requests per minute: the AI upstream's
#: limit, which the requests reaching it must keep to (+10%)
AI_LIMIT_PER_MINUTE = 100
AI_SECTIONS: dict[str, dict[str, object]] = {
    "ai": {"providers": ["anthropic"], "hold_max_s": 4.0},
    # a short budget like every kind here, so a killed daemon's jobs come back soon
    'kinds."ai.describe"': {"budget_s": 4.0},
}
AI_KEY = {"ANTHROPIC_API_KEY": "chaos-key-not-a-secret"}


@dataclass
class Kill:
    at: float
    node: str
    held: list[tuple[str, float]]  # (job id, lease_until)


@dataclass
class Node:
    name: str
    config_path: Path
    proc: Proc | None = None
    incarnation: int = 0
    started_at: float = 0.0
    logs: list[Proc] = field(default_factory=list)


@dataclass
class Run:
    args: argparse.Namespace
    d: Path
    processes: Processes
    db: Path
    scratch: Path
    nodes: list[Node] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    expect: dict[str, str] = field(default_factory=dict)  # job id -> expected state
    labels: dict[str, str] = field(default_factory=dict)  # job id -> mix label
    video_clips: dict[str, tuple[float, bool]] = field(default_factory=dict)
    client_cfg: config.Config | None = None
    d1_base: str = ""
    s3_endpoint: str = ""
    d1_proxy: FaultProxy | None = None
    s3_proxy: FaultProxy | None = None
    ai_proxy: FaultProxy | None = None
    ai_base: str = ""
    ai_fake: Any = None
    env: dict[str, str] = field(default_factory=dict)
    clips: list[Path] = field(default_factory=list)

    def read(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db, timeout=30) as conn:
            return conn.execute(sql, params).fetchall()


# -- setting up ----------------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (config.CONFIG_ENV,)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def wait_for(pred: Callable[[], Any], timeout: float, what: str,
                   interval: float = 0.1) -> Any:
    deadline = trio.current_time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if trio.current_time() > deadline:
            raise SystemExit(f"chaos: timed out after {timeout:g} s waiting for {what}")
        await trio.sleep(interval)  # wall-clock: polling another process


async def start_d1_fake(run: Run) -> str:
    fake = await run.processes.start(
        "d1-fake", [sys.executable, str(D1_FAKE), "--db", str(run.db), "--port", "0"],
        env=child_env(D1_FAKE_TOKEN=D1_TOKEN), cwd=run.d)

    def listening() -> str | None:
        for line in fake.lines():
            if line.startswith("LISTENING "):
                return line.split(" ", 1)[1].strip()
        if not fake.alive:
            raise SystemExit(f"chaos: the D1 fake exited\n{fake.describe()}")
        return None

    base: str = await wait_for(listening, START_TIMEOUT_S, "the D1 fake")
    return base


async def start_moto(run: Run) -> str:
    port = free_port()
    await run.processes.start(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=child_env(), cwd=run.d)
    endpoint = f"http://127.0.0.1:{port}"

    def make_bucket() -> bool:
        try:
            s3_client(endpoint).create_bucket(
                Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": S3_REGION})
            return True
        except Exception:
            return False

    await wait_for(make_bucket, START_TIMEOUT_S, "moto's S3 server", interval=0.2)
    return endpoint


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", region_name=S3_REGION, endpoint_url=endpoint,
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


def d1_section(run: Run, base: str) -> dict[str, object]:
    if run.args.backend == "http":
        return {"backend": "http", "api_base": base, "account_id": "acc",
                "database_id": "db", "requests_per_5min": run.args.d1_requests_per_5min}
    return {"backend": "sqlite", "path": str(run.db), "synchronous": "normal"}


def write_node_config(run: Run, name: str, d1_base: str, s3_endpoint: str) -> Path:
    r2: dict[str, object] = {"path": str(run.d / "r2")}
    if run.args.r2 == "s3":
        r2 = {"backend": "s3", "endpoint_url": s3_endpoint, "bucket": BUCKET,
              "region": S3_REGION}
    sections: dict[str, dict[str, object]] = {
        "d1": d1_section(run, d1_base),
        "r2": r2,
        "server": {"listen": ""},
        "supervisor": {"node": name, **SUPERVISOR, "max_attempts": MAX_ATTEMPTS},
        "video": {"allowed_dirs": [str(run.d / "media")], "scratch_dir": str(run.scratch),
                  "thumbnails": 1},
    }
    sections['kinds."video.transcode"'] = {"budget_s": VIDEO_BUDGET_S}
    if run.args.ai:
        sections.update(AI_SECTIONS)
    path = run.d / f"{name}.toml"
    path.write_text(toml(sections))
    return path


async def start_node(run: Run, node: Node) -> None:
    node.incarnation += 1
    node.proc = await run.processes.start(
        f"{node.name}.{node.incarnation}",
        [sys.executable, "-m", "deepmox", "--config", str(node.config_path),
         "--log-format", "json", "run"], env=run.env, cwd=run.d)
    node.started_at = time.time()
    node.logs.append(node.proc)


def ready(node: Node) -> bool:
    assert node.proc is not None
    if not node.proc.alive:
        raise SystemExit(f"chaos: {node.name} exited\n{node.proc.describe()}")
    return bool(node.proc.logged("ready"))


# -- the load and the killer ---------------------------------------------------------

def mix(run: Run) -> list[JobType]:
    out = list(MIX)
    if run.args.ai:
        out.append(JobType("ai.describe", AI_KIND, AI_PAYLOAD, "completed", AI_PER_WAVE))
    return out


async def submit_loop(run: Run, stop_at: float, videos: int) -> None:
    """A wave of the mix every second until ``stop_at``; ``videos`` video jobs
    spread over the waves."""
    assert run.client_cfg is not None
    waves = max(1, int(stop_at - trio.current_time()))
    video_waves = {int(i * waves / videos) for i in range(videos)} if videos else set()
    credit: Counter[str] = Counter()
    wave = 0
    async with open_client(run.client_cfg) as client:
        while trio.current_time() < stop_at:
            specs: list[tuple[JobType, dict[str, Any]]] = []
            for jt in mix(run):
                credit[jt.label] += jt.per_wave * run.args.load
                while credit[jt.label] >= 1:
                    credit[jt.label] -= 1
                    specs.append((jt, jt.payload))
            if wave in video_waves:
                n = len(run.video_clips)
                clip = run.clips[n % len(run.clips)]
                specs.append((JobType("video.transcode", "video.transcode", {}, "completed", 0),
                              {"source": clip.as_uri()}))
            if specs:
                done = await client.submit_many(
                    [(JobSpec(kind=jt.kind, payload=p, max_attempts=MAX_ATTEMPTS), None)
                     for jt, p in specs])
                for (jt, p), (job, _) in zip(specs, done, strict=True):
                    run.expect[job.id] = jt.expect
                    run.labels[job.id] = jt.label
                    if jt.kind == "video.transcode":
                        run.video_clips[job.id] = CLIPS[run.clips.index(Path(p["source"][7:]))]
            wave += 1
            await trio.sleep(1.0)  # wall-clock: the load's pace


async def killer(run: Run, stop_at: float, rng: random.Random) -> None:
    while True:
        await trio.sleep(rng.uniform(*run.args.kill_every))  # wall-clock: the kill pace
        if trio.current_time() >= stop_at:
            return
        node = rng.choice(run.nodes)
        assert node.proc is not None
        if not node.proc.alive:
            continue
        at = time.time()
        await node.proc.kill()
        if run.args.backend == "http":
            # a request the victim sent may still land at the D1 fake (through
            # the proxy, late): let it, so the snapshot shows what it held
            await trio.sleep(IN_FLIGHT_S)  # wall-clock: letting a request land
        held = await trio.to_thread.run_sync(
            run.read, "SELECT id, lease_until FROM jobs WHERE state = 'in_progress' AND "
                      "lease_owner = ?", node.name)
        run.kills.append(Kill(at, node.name, [(r[0], float(r[1])) for r in held]))
        await start_node(run, node)


# -- checks and figures ----------------------------------------------------------------

def stored_video(run: Run, job_id: str) -> tuple[set[str], dict[str, Any] | None]:
    """The keys under the job's prefix, and its manifest (None if missing)."""
    prefix = f"jobs/{job_id}/"
    if run.args.r2 == "s3":
        client = s3_client(run.s3_endpoint)
        keys: set[str] = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                     Prefix=prefix):
            keys |= {o["Key"] for o in page.get("Contents", [])}
        manifest = None
        if prefix + "manifest.json" in keys:
            body = client.get_object(Bucket=BUCKET, Key=prefix + "manifest.json")["Body"]
            manifest = json.loads(body.read())
        client.close()
        return keys, manifest
    base = run.d / "r2" / "jobs" / job_id
    keys = {f"jobs/{job_id}/{f.relative_to(base).as_posix()}"
            for f in base.rglob("*") if f.is_file()} if base.exists() else set()
    mpath = base / "manifest.json"
    return keys, json.loads(mpath.read_text()) if mpath.exists() else None


def poll_interval_s(run: Run) -> float:
    """The longest a daemon waits between pull cycles here: ``poll_max_s``, or
    on the REST backend the idle floor its request budget sets."""
    poll = float(SUPERVISOR["poll_max_s"])
    if run.args.backend == "http":
        poll = max(poll, 4 * 300.0 / run.args.d1_requests_per_5min)
    return poll


def _landed_late(events: list[tuple[Any, ...]], lease_until: float, node: str) -> bool:
    """Whether the victim's own outcome for the lease it held at the kill landed
    after the snapshot: a request it sent before it died, held up on the wire
    (the proxy's added latency) past ``IN_FLIGHT_S``. Then nothing needed to
    run again."""
    held = False
    for _, kind, _, detail, by in events:
        if kind == "claimed":
            held = by == node and abs(json.loads(detail)["lease_until"] - lease_until) < 1e-3
        elif held and kind in LEASE_ENDING:
            return by == node
    return False


def analyse(run: Run, exits: dict[str, int]) -> Report:
    rep = Report()
    jobs = {r[0]: r for r in run.read("SELECT id, kind, state, error_class, error_message "
                                      "FROM jobs")}
    events = run.read("SELECT job_id, type, ts, detail, node FROM job_events ORDER BY id")
    by_job: dict[str, list[tuple[Any, ...]]] = {}
    for e in events:
        by_job.setdefault(e[0], []).append(e)

    # 1. every job terminal, in its expected state
    wrong = [f"{j} ({run.labels[j]}): {jobs[j][2] if j in jobs else 'missing'}, expected "
             f"{want}" + (f" ({jobs[j][3]}: {jobs[j][4]})" if j in jobs and jobs[j][3] else "")
             for j, want in run.expect.items() if j not in jobs or jobs[j][2] != want]
    rep.check("every job terminal in the state its kind implies", not wrong,
              "; ".join(wrong[:5]))
    # 2. one completed event per completed job
    completed = Counter(e[0] for e in events if e[1] == "completed")
    dup = [j for j, n in completed.items() if n != 1 or jobs[j][2] != "completed"]
    missing = [j for j, r in jobs.items() if r[2] == "completed" and completed[j] != 1]
    rep.check("exactly one completed event per completed job", not dup and not missing,
              f"duplicated {dup[:5]}, missing {missing[:5]}")
    # 3. leases never overlap; none reaped early
    overlaps = lease_overlaps((e[0], e[1]) for e in events)
    early = [e[0] for e in events if e[1] == "reaped"
             and e[2] < json.loads(e[3])["lease_until"]]
    rep.check("no two leases on one job overlapping", not overlaps, f"{overlaps[:5]}")
    rep.check("no lease reaped before it expired", not early, f"{early[:5]}")
    # 4. video keys
    bad_keys = []
    for job_id, (_, audio) in run.video_clips.items():
        keys, manifest = stored_video(run, job_id)
        if manifest is None:
            bad_keys.append(f"{job_id}: no manifest ({len(keys)} keys)")
            continue
        want = expected_video_keys(job_id, manifest, audio)
        if keys != want:
            bad_keys.append(f"{job_id}: extra {sorted(keys - want)[:3]}, missing "
                            f"{sorted(want - keys)[:3]}")
    rep.check("each video job's prefix holds exactly the expected keys", not bad_keys,
              "; ".join(bad_keys[:3]))
    # 5. clean ends
    bad_exits = {n: rc for n, rc in exits.items() if rc != 0}
    rep.check("every daemon drains and exits 0 on SIGTERM", not bad_exits, f"{bad_exits}")
    leftovers = [p.name for p in run.scratch.iterdir()]
    rep.check("no scratch folder left", not leftovers, f"{leftovers[:5]}")
    # 6. recovery after kills. Under D1 faults the survivors' own pull cycles
    # fail and wait out throttles too, so the bound is not a target there;
    # and --quick (CI) checks no timing (a timing target is a full run's):
    # then only "ran again" is checked, and the figure is reported.
    grace = float(SUPERVISOR["lease_grace_s"])
    target = grace + 2 * poll_interval_s(run)
    raw_worst, worst, never, late = 0.0, 0.0, [], []
    # a lease of an earlier incarnation may still be held when the same node dies again
    held_total = len({held for kill in run.kills for held in kill.held})
    for kill in run.kills:
        for job_id, lease_until in kill.held:
            claims = [e[2] for e in by_job.get(job_id, []) if e[1] == "claimed"
                      and e[2] > kill.at]
            if not claims:
                if _landed_late(by_job.get(job_id, []), lease_until, kill.node):
                    continue
                never.append(f"{job_id} never ran again after the kill of {kill.node}")
                continue
            raw_worst = max(raw_worst, claims[0] - kill.at)
            took = claims[0] - max(kill.at, lease_until - grace)
            worst = max(worst, took)
            if took > target:
                late.append(f"{job_id}: {took:.2f} s after the kill of {kill.node}")
    timed = run.d1_proxy is None and not run.args.quick and bool(run.kills)
    if timed:
        rep.check(f"recovery within lease grace + 2 poll intervals ({target:.2f} s)",
                  not never and not late, "; ".join((never + late)[:3]))
    elif run.kills:
        rep.check("every job a killed daemon held ran again", not never, "; ".join(never[:3]))
    # 7. the D1 request budget, under faults: what reached the proxy
    if run.d1_proxy is not None:
        stamps = sorted(entry[0] for entry in run.d1_proxy.stats.log)
        n = len(run.nodes)
        per = run.args.d1_requests_per_5min
        over = budget_violations(stamps, n * max(1.0, per * 0.1), n * per * 0.9 / 300.0)
        rep.check("D1 requests within the daemons' summed request budget", over == 0,
                  f"{over} over")
        rep.figures["d1 requests"] = len(stamps)
    if run.ai_fake is not None:
        most = run.ai_fake.most_in_window()
        rep.check(f"AI requests within the API's limit + 10% ({AI_LIMIT_PER_MINUTE} a minute)",
                  most <= AI_LIMIT_PER_MINUTE * 1.1, f"{most} in one minute")
        rep.figures["ai requests reaching the API"] = len(run.ai_fake.log)
        rep.figures["ai: most requests in any minute"] = most
        rep.figures["ai: 429s for its limit"] = sum(
            1 for _, status in run.ai_fake.log if status == 429)
    types = Counter(e[1] for e in events)
    held = {(j, round(lease, 3)) for kill in run.kills for j, lease in kill.held}
    live_reaps = sum(1 for e in events if e[1] == "reaped"
                     and (e[0], round(json.loads(e[3])["lease_until"], 3)) not in held)
    rep.figures.update({
        "jobs": len(run.expect),
        "by kind": dict(Counter(run.labels.values())),
        "final states": dict(Counter(r[2] for r in jobs.values())),
        "kills": len(run.kills),
        "jobs held by killed daemons": held_total,
        "reaps": types["reaped"],
        "reaps of a live daemon": live_reaps,
        "lease_lost": types["lease_lost"],
        "continuations": types["continued"],
        "retries": types["retry_scheduled"],
        "failed pull cycles": sum(len(p.logged("cycle_failed")) for node in run.nodes
                                  for p in node.logs),
        "longest kill to running again s": round(raw_worst, 2),
        "longest recovery s": round(worst, 2),
        "recovery target s": round(target, 2) if timed else None,
    })
    for name, proxy in (("d1", run.d1_proxy), ("s3", run.s3_proxy), ("messages", run.ai_proxy)):
        if proxy is not None:
            st = proxy.stats
            rep.figures[f"{name} faults"] = dict(st.faults)
            rep.figures[f"{name} requests"] = st.requests
            rep.figures[f"{name} requests into an announced throttle"] = st.into_throttle
    return rep


# -- the run ---------------------------------------------------------------------------

async def chaos(run: Run) -> Report:
    args = run.args
    rng = random.Random(args.seed)
    media = run.d / "media"
    media.mkdir()
    for i, (seconds, audio) in enumerate(CLIPS):
        run.clips.append(await media_samples.make_clip(media / f"clip{i}.mp4", seconds=seconds,
                                                       audio=audio))
    run.env = child_env(**(S3_KEYS if args.r2 == "s3" else {}),
                        **({"CLOUDFLARE_API_TOKEN": D1_TOKEN} if args.backend == "http" else {}),
                        **(AI_KEY if args.ai else {}))
    async with trio.open_nursery() as nursery:
        d1_base = ""
        if args.backend == "http":
            run.d1_base = d1_base = await start_d1_fake(run)
            if args.faults:
                origin = d1_base.removesuffix("/client/v4")
                run.d1_proxy = await serve_proxy(nursery, upstream=origin, flavor="d1",
                                                 rate=args.faults, seed=rng.randrange(1 << 30),
                                                 retry_after_s=1.0)
                d1_base = run.d1_proxy.url + "/client/v4"
        s3_endpoint = ""
        if args.r2 == "s3":
            run.s3_endpoint = s3_endpoint = await start_moto(run)
            if args.faults:
                run.s3_proxy = await serve_proxy(nursery, upstream=s3_endpoint, flavor="s3",
                                                 rate=args.faults, seed=rng.randrange(1 << 30),
                                                 retry_after_s=1.0)
                s3_endpoint = run.s3_proxy.url
        if args.ai:
            await start_messages(run, nursery, rng)
        client_sections = {"d1": d1_section(run, run.d1_base),
                           "supervisor": {"node": "chaos-bench"}}
        run.client_cfg = config.decode(toml(client_sections))
        if args.backend == "http":
            os.environ["CLOUDFLARE_API_TOKEN"] = D1_TOKEN  # the bench's own client
        for i in range(args.daemons):
            name = f"node-{chr(ord('a') + i)}"
            run.nodes.append(Node(name, write_node_config(run, name, d1_base, s3_endpoint)))
        for node in run.nodes:
            await start_node(run, node)
        for node in run.nodes:
            await wait_for(lambda n=node: ready(n), START_TIMEOUT_S, f"{node.name} to be ready")
        print(f"chaos: {args.daemons} daemons ready ({args.backend}, r2 {args.r2}, faults "
              f"{args.faults:g}); {args.seconds:g} s of load"
              + (f" with a kill every {args.kill_every[0]:g}-{args.kill_every[1]:g} s"
                 if args.kill else ""), flush=True)
        stop_at = trio.current_time() + args.seconds
        async with trio.open_nursery() as load:
            load.start_soon(submit_loop, run, stop_at, args.videos)
            if args.kill:
                load.start_soon(killer, run, stop_at, rng)
        print(f"chaos: load over, {len(run.kills)} kills; draining", flush=True)
        for node in run.nodes:
            await wait_for(lambda n=node: ready(n), START_TIMEOUT_S, f"{node.name} to be ready")

        def drained() -> bool:
            left = run.read("SELECT count(*) FROM jobs WHERE state IN "
                            "('pending', 'in_progress')")[0][0]
            return left == 0

        await wait_for(drained, DRAIN_TIMEOUT_S, "every job to end", interval=0.5)
        exits: dict[str, int] = {}
        for node in run.nodes:
            assert node.proc is not None
            node.proc.signal(signal.SIGTERM)
        for node in run.nodes:
            assert node.proc is not None
            try:
                exits[node.name] = await node.proc.wait(60)
            except AssertionError:
                exits[node.name] = -1
        report = await trio.to_thread.run_sync(analyse, run, exits)
        nursery.cancel_scope.cancel()
    return report


async def start_messages(run: Run, nursery: trio.Nursery, rng: random.Random) -> None:
    """The issue 4 hook: the Messages API fake, behind a fault proxy with
    --faults; the daemons find it through ANTHROPIC_BASE_URL."""
    if AI_KIND not in Registry.load([]).names():
        raise SystemExit(f"chaos: --ai needs the {AI_KIND} kind (issue 4), not on this build")
    from tests.fakes.messages_server import ok, serve_messages

    fake = await serve_messages(nursery, limit_per_minute=AI_LIMIT_PER_MINUTE,
                                default=ok(AI_ANSWER))
    run.ai_fake = fake
    run.ai_base = fake.base_url
    if run.args.faults:
        run.ai_proxy = await serve_proxy(nursery, upstream=fake.base_url, flavor="messages",
                                         rate=run.args.faults, seed=rng.randrange(1 << 30),
                                         retry_after_s=1.0)
        run.ai_base = run.ai_proxy.url
    run.env["ANTHROPIC_BASE_URL"] = run.ai_base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--daemons", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the load and "
                    "the kills go on")
    ap.add_argument("--backend", choices=("sqlite", "http"), default="sqlite")
    ap.add_argument("--r2", choices=("filesystem", "s3"), default="filesystem")
    ap.add_argument("--faults", type=float, default=0.0, help="share of D1 and S3 requests "
                    "the fault proxy spoils (0..1); needs --backend http or --r2 s3")
    ap.add_argument("--no-kill", dest="kill", action="store_false")
    ap.add_argument("--kill-every", type=float, nargs=2, default=(1.0, 3.0),
                    metavar=("MIN_S", "MAX_S"))
    ap.add_argument("--load", type=float, default=1.0, help="scale the mix")
    ap.add_argument("--videos", type=int, default=None)
    ap.add_argument("--d1-requests-per-5min", type=int, default=D1_REQUESTS_PER_5MIN,
                    help="each daemon's D1 REST budget (http backend)")
    ap.add_argument("--ai", action="store_true", help="add ai.describe jobs (issue 4)")
    ap.add_argument("--quick", action="store_true", help="the short mode CI runs")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if args.faults and args.backend == "sqlite" and args.r2 == "filesystem" and not args.ai:
        ap.error("--faults needs something on the wire: --backend http, --r2 s3 or --ai")
    if args.quick:
        args.seconds = min(args.seconds, 12.0)
        args.load = min(args.load, 0.6)
    if args.videos is None:
        args.videos = 2 if args.quick else max(1, int(args.seconds / 8))
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if shutil.which("ffmpeg") is None:
        ap.error("needs ffmpeg")
    d = workdir("chaos")
    run = Run(args, d, Processes(d), d / ("fake.db" if args.backend == "http" else "deepmox.db"),
              d / "scratch")
    run.scratch.mkdir()
    print(f"chaos: seed {args.seed}, work folder {d}", flush=True)
    try:
        rep = trio.run(chaos, run)
    finally:
        trio.run(run.processes.kill_all)
    print(describe(rep))
    if args.quick or args.no_record:
        pass
    elif not rep.ok:
        print("chaos: a check failed, nothing recorded")
    else:
        name, block = section(args)
        rest = (f", each daemon's D1 budget {args.d1_requests_per_5min:,} requests per 5 "
                "minutes" if args.backend == "http" else "")
        text = body(args, rep, f"budget {SUPERVISOR['budget_s']} s ({VIDEO_BUDGET_S:g} s for "
                    f"video), lease grace {SUPERVISOR['lease_grace_s']} s, poll_max_s "
                    f"{SUPERVISOR['poll_max_s']}{rest}", D1_REQUESTS_PER_5MIN)
        record(name, text)
        record_reliability(block, text)
    if rep.ok and not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"chaos: work folder kept: {d}")
    print("chaos: all checks passed" if rep.ok else "chaos: CHECKS FAILED")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
