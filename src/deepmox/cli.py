"""``deepmox``: the command line.

Exit codes: 0 success, 2 bad usage or refused input, 1 any other failure.
Errors are one readable line on stderr, never a traceback. Every read command
takes ``--json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import msgspec
import trio

from . import __version__, config, logs
from .client import MAX_LIST_LIMIT, JobSpec, default_node, open_client, valid_idempotency_key
from .errors import ConfigError, DeepmoxError, JobError, RefusedError
from .jobs import Event, Job

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_json = msgspec.json.Encoder()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"deepmox: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="deepmox", description="The deepmox job daemon and its client.")
    p.add_argument("--version", action="version", version=f"deepmox {__version__}")
    p.add_argument("--config", metavar="PATH",
                   help=f"configuration file (default: ${config.CONFIG_ENV}, ./deepmox.toml, "
                        "else the embedded defaults)")
    p.add_argument("--log-format", choices=["json", "text"], default=None,
                   help="json lines on stdout (default when not a terminal) or text on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT, then drain")
    sub.add_parser("migrate", help="apply pending schema migrations")
    sub.add_parser("doctor", help="check the configuration, D1, migrations and tools")
    s = sub.add_parser("demo", help="run a daemon on a demonstration job, then exit")
    s.add_argument("which", nargs="?", choices=["video", "core"], default="video",
                   help="video: transcode a generated clip (default); core: the restart "
                        "policies on built-in kinds")

    s = sub.add_parser("submit", help="submit a job; prints its id")
    s.add_argument("kind")
    s.add_argument("--payload", default="{}", metavar="JSON")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--idempotency-key", metavar="K")
    s.add_argument("--max-attempts", type=int, metavar="N")
    s.add_argument("--json", action="store_true", help="print the job as JSON")
    s.add_argument("--wait", action="store_true",
                   help="follow the job to its end; exit 0 only if it completed")
    s.add_argument("--direct", action="store_true",
                   help="write to D1 directly even when a daemon answers on [server] listen")

    s = sub.add_parser("watch", help="the live feed of a running daemon")
    s.add_argument("id", nargs="?", help="follow one job")
    s.add_argument("--json", action="store_true", help="print the raw feed messages")

    s = sub.add_parser("status", help="show one job")
    s.add_argument("id")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("jobs", help="list jobs, newest first")
    s.add_argument("--state", choices=["pending", "in_progress", "completed", "failed",
                                        "cancelled"])
    s.add_argument("--kind")
    s.add_argument("--limit", type=int, default=100, help="at most N jobs; 0 means all")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("events", help="show a job's timeline")
    s.add_argument("id")
    s.add_argument("--json", action="store_true")

    for name, text in (("cancel", "cancel a pending or running job"),
                       ("retry", "run a failed or cancelled job again")):
        s = sub.add_parser(name, help=text)
        s.add_argument("id")
        s.add_argument("--json", action="store_true")
    return p


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one deepmox error inside nested exception groups, or the group."""
    found = [e for e in _leaves(group) if isinstance(e, DeepmoxError | KeyboardInterrupt)]
    return found[0] if len(found) == 1 else group


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _print_json(value: Any) -> None:
    sys.stdout.write(_json.encode(value).decode() + "\n")


def _load_config(args: argparse.Namespace) -> config.Config:
    return config.load(args.config)


def _not_text(argv: Sequence[str]) -> str | None:
    """The first argument that is not UTF-8 text (Python hands such bytes
    over as lone surrogates, which nothing downstream can encode)."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if (bad := _not_text(argv)) is not None:
        print(f"deepmox: an argument is not UTF-8 text: {bad!r}", file=sys.stderr)
        return EXIT_USAGE
    args = _parser().parse_args(argv)
    fmt = args.log_format or ("text" if sys.stderr.isatty() else "json")
    try:
        cfg = _load_config(args)
        logs.setup(fmt, cfg.supervisor.node or default_node(),
                   level=logging.INFO if args.command in ("run", "migrate") else logging.WARNING)
        handler = _COMMANDS[args.command]
        try:
            return trio.run(handler, cfg, args)
        except BaseExceptionGroup as group:
            # a nursery wraps what one of its tasks raised: report that error
            raise _single(group) from None
    except RefusedError as exc:
        print(f"deepmox: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"deepmox: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobError as exc:
        print(f"deepmox: {exc.error_class}: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except DeepmoxError as exc:
        print(f"deepmox: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


# -- commands ---------------------------------------------------------------------

async def _run(cfg: config.Config, args: argparse.Namespace) -> int:
    from .daemon import serve

    await serve(cfg)
    return EXIT_OK


async def _migrate(cfg: config.Config, args: argparse.Namespace) -> int:
    from .bindings.d1 import open_d1
    from .bindings.d1.migrate import migrate

    d1 = open_d1(cfg.d1)
    try:
        applied = await migrate(d1, _now())
    finally:
        await d1.aclose()
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.name}" for m in applied))
    return EXIT_OK


def _now() -> float:
    import time

    return time.time()


async def _submit(cfg: config.Config, args: argparse.Namespace) -> int:
    try:
        payload = msgspec.json.decode(args.payload)
    except msgspec.DecodeError as exc:
        raise RefusedError(f"--payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise RefusedError("--payload nests too deeply") from None
    try:
        spec = msgspec.convert({"kind": args.kind, "payload": payload, "priority": args.priority,
                                "max_attempts": args.max_attempts}, JobSpec)
    except msgspec.ValidationError as exc:
        raise RefusedError(f"invalid job: {exc}") from None
    key = args.idempotency_key
    if key is not None and not valid_idempotency_key(key):
        # refused here, before it goes into a header or to D1
        raise RefusedError("--idempotency-key must be 1 to 255 printable ASCII characters")
    from . import remote

    answer = None if args.direct else await remote.submit(cfg, spec, args.idempotency_key)
    if answer is None:
        async with open_client(cfg) as client:
            answer = await client.submit(spec, args.idempotency_key)
    job, created = answer
    if args.json and not args.wait:
        _print_json(job)
    else:
        print(job.id)
    if not created:
        print(f"deepmox: idempotency key {args.idempotency_key!r} names an existing job",
              file=sys.stderr)
    if args.wait:
        final = await _wait(cfg, job)
        if args.json:
            _print_json(final)
        return EXIT_OK if final.state == "completed" else EXIT_FAILURE
    return EXIT_OK


async def _wait(cfg: config.Config, job: Job) -> Job:
    """Follow ``job`` with a progress bar until it ends: reading D1 every
    half second (the feed, when a daemon serves one, carries the same)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .jobs import TERMINAL_STATES

    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[step]}"),
               TimeElapsedColumn())
    async with open_client(cfg) as client:
        with Progress(*columns, console=_stderr_console(), transient=False) as bar:
            task = bar.add_task(f"{job.kind} {job.id}", total=1.0, step="")
            while True:
                job = await client.get(job.id)
                bar.update(task, completed=job.progress,
                           step=f"{job.state} {job.step or ''}".strip())
                if job.state in TERMINAL_STATES:
                    break
                await trio.sleep(0.5)
    if job.state != "completed":
        print(f"deepmox: job {job.id} {job.state}: {job.error_class}: {job.error_message}",
              file=sys.stderr)
    return job


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


async def _status(cfg: config.Config, args: argparse.Namespace) -> int:
    async with open_client(cfg) as client:
        job = await client.get(args.id)
    if args.json:
        _print_json(job)
    else:
        from .render import job_detail

        job_detail(job)
    return EXIT_OK


async def _jobs(cfg: config.Config, args: argparse.Namespace) -> int:
    if not 0 <= args.limit <= MAX_LIST_LIMIT:
        raise RefusedError(f"--limit must be 0 (all) to {MAX_LIST_LIMIT}")
    async with open_client(cfg) as client:
        jobs = await client.list_jobs(state=args.state, kind=args.kind, limit=args.limit)
    if args.json:
        _print_json(jobs)
    else:
        from .render import job_table

        job_table(jobs)
    return EXIT_OK


async def _events(cfg: config.Config, args: argparse.Namespace) -> int:
    async with open_client(cfg) as client:
        events = await client.events(args.id)
    if args.json:
        _print_json(events)
    else:
        from .render import timeline

        timeline(args.id, events)
    return EXIT_OK


def _change(verb: str) -> Callable[[config.Config, argparse.Namespace], Awaitable[int]]:
    async def command(cfg: config.Config, args: argparse.Namespace) -> int:
        async with open_client(cfg) as client:
            job: Job = await getattr(client, verb)(args.id)
        if args.json:
            _print_json(job)
        else:
            print(f"{job.id} {job.state}")
        return EXIT_OK

    return command


async def _doctor(cfg: config.Config, args: argparse.Namespace) -> int:
    from .render import doctor_report

    checks: list[tuple[str, bool, str]] = [("configuration", True, _config_source(args))]
    try:
        from .bindings.d1 import open_d1
        from .bindings.d1.migrate import available, current_version

        d1 = open_d1(cfg.d1)
        try:
            version = await current_version(d1)
            latest = available()[-1].version
            checks.append(("d1 reachable", True, f"backend {cfg.d1.backend}"))
            checks.append(("migrations", version >= latest,
                           f"schema version {version}, latest {latest}"
                           + ("" if version >= latest else " (run: deepmox migrate)")))
        finally:
            await d1.aclose()
    except DeepmoxError as exc:
        checks.append(("d1 reachable", False, str(exc)))
    for tool in ("ffmpeg", "ffprobe"):
        path = shutil.which(tool)
        checks.append((tool, path is not None, path or "not on PATH: video.transcode and "
                       "video.publish jobs fail until it is installed (apt-get install ffmpeg)"))
    checks += _ai_checks(cfg)
    doctor_report(checks)
    return EXIT_OK if all(ok for _, ok, _ in checks) else EXIT_FAILURE


def _ai_checks(cfg: config.Config) -> list[tuple[str, bool, str]]:
    """One line per configured AI provider: usable here, or why it is skipped.
    Skipping one is not a failure; having none usable is."""
    from .bindings.ai import AI

    ai = AI(cfg)
    out: list[tuple[str, bool, str]] = []
    for name in ai.order:
        reason = ai.unusable(name)
        if reason is not None:
            out.append((f"ai provider {name}", True, f"skipped: {reason}"))
            continue
        if name == "claude-cli":
            c = cfg.ai.claude_cli
            detail = f"{shutil.which(c.path)}" + (f", model {c.model}" if c.model else "")
        elif name == "anthropic":
            base = os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
            detail = f"model {cfg.ai.anthropic.model} at {base}"
        else:
            detail = "offline, deterministic"
        out.append((f"ai provider {name}", True, f"usable: {detail}"))
    if all(ai.unusable(n) is not None for n in ai.order):
        out.append(("ai", False, "no configured provider is usable: ai.describe and "
                    "video.publish jobs will fail (add \"heuristic\" to [ai] providers)"))
    return out


def _config_source(args: argparse.Namespace) -> str:
    chosen = args.config or os.environ.get(config.CONFIG_ENV)
    if chosen:
        return str(chosen)
    if os.path.exists(config.DEFAULT_CONFIG_FILE):
        return config.DEFAULT_CONFIG_FILE
    return "embedded defaults"


async def _watch(cfg: config.Config, args: argparse.Namespace) -> int:
    from . import remote
    from .watch import watch

    if not cfg.server.listen:
        raise RefusedError("[server] listen is empty: this daemon has no feed to watch")
    return await watch(remote.local_address(cfg.server.listen), remote.token(cfg), args.id,
                       args.json)


async def _demo(cfg: config.Config, args: argparse.Namespace) -> int:
    from .demo import run_core, run_video

    return await (run_core(cfg) if args.which == "core" else run_video(cfg))


_COMMANDS: dict[str, Callable[[config.Config, argparse.Namespace], Awaitable[int]]] = {
    "run": _run, "migrate": _migrate, "submit": _submit, "status": _status, "jobs": _jobs,
    "events": _events, "cancel": _change("cancel"), "retry": _change("retry"),
    "doctor": _doctor, "demo": _demo, "watch": _watch,
}

__all__ = ["Event", "main"]
