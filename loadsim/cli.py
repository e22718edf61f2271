"""The `loadsim` command. Parses flags, calls the layers below, maps errors to exit codes.

stdout carries the event stream and nothing else; people's output goes to stderr.

A signal before a run has taken over exits quietly with 128 + the signal (loadsim/signals.py):
`main` sees to it, and so does importing this module as the `loadsim` console script does,
before the imports below, which take a while.
"""

from __future__ import annotations

import os
import sys

from loadsim import signals

if os.path.basename(getattr(sys.modules.get("__main__"), "__file__", None) or "") == "loadsim":
    signals.quit_quietly()  # the console script (`python -m loadsim` did it in __main__)

import contextlib
import enum
import errno
import io
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, NoReturn

import typer

from loadsim import __version__
from loadsim.config.scenario import ScenarioFile, load_scenarios
from loadsim.config.selection import select_events
from loadsim.config.settings import Flags, RunConfig, read_environment, resolve
from loadsim.config.show import format_show
from loadsim.errors import LoadsimError, OutputError, ScenarioError
from loadsim.schema import EVENT_NAMES, json_schema

app = typer.Typer(
    name="loadsim",
    help=(
        "Load-test a SQLAlchemy connection pool against a real PostgreSQL and watch what it "
        "does: reuse, queueing, timeouts, recycling.\n\n"
        "Scenarios are declared in TOML (./scenarios.toml, else the one shipped with loadsim). "
        "With no DATABASE_URL, each run starts its own embedded PostgreSQL.\n\n"
        "Example: loadsim run normal | jq -c 'select(.event==\"pool.checkout\")'"
    ),
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        print(f"loadsim {__version__}")
        raise typer.Exit()


@app.callback()
def _overview(
    context: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print loadsim's version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    if context.invoked_subcommand is None:
        print(context.get_help())


class EventLoop(enum.StrEnum):
    auto = "auto"
    asyncio = "asyncio"
    uvloop = "uvloop"


class LogFormat(enum.StrEnum):
    json = "json"
    console = "console"


FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="Scenario file. Default: ./scenarios.toml if present, else the packaged one.",
        dir_okay=False,
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="postgresql://user:password@host:port/db. Default: $DATABASE_URL, else an "
        "embedded PostgreSQL started for the run.",
        show_default=False,
    ),
]
PoolSizeOption = Annotated[
    int | None, typer.Option("--pool-size", help="Connections kept in the pool.")
]
MaxOverflowOption = Annotated[
    int | None,
    typer.Option("--max-overflow", help="Connections allowed beyond pool-size (-1: no limit)."),
]
PoolTimeoutOption = Annotated[
    str | None,
    typer.Option("--pool-timeout", help="How long a checkout waits before TimeoutError ('30s')."),
]
PoolRecycleOption = Annotated[
    str | None,
    typer.Option("--pool-recycle", help="Replace connections older than this at checkout; -1 off."),
]
PrePingOption = Annotated[
    bool | None,
    typer.Option(
        "--pre-ping/--no-pre-ping", help="Test each connection at checkout.", show_default=False
    ),
]
PresetOption = Annotated[
    str | None, typer.Option("--preset", help="Start from this preset's pool settings.")
]
ClientsOption = Annotated[
    int | None, typer.Option("--clients", "-c", help="Number of concurrent coroutine clients.")
]
DurationOption = Annotated[
    str | None, typer.Option("--duration", "-d", help="How long to run: '30s', '2m', '1m30s'.")
]
IterationsOption = Annotated[
    int | None,
    typer.Option(
        "--iterations",
        "-n",
        help="Checkouts per client; alone, the run lasts until all clients are done.",
    ),
]
ThresholdOption = Annotated[
    list[str] | None,
    typer.Option(
        "--threshold",
        "-t",
        help="Fail (exit 1) unless this holds at the end, e.g. 'wait_time_p95_ms < 100' or "
        "'timeouts == 0'. Repeatable; adds to the scenario's own thresholds.",
        show_default=False,
    ),
]
SeedOption = Annotated[
    int | None, typer.Option("--seed", help="Seed for hold and think times (repeatable runs).")
]


def _configs(
    file: Path | None, names: list[str], flags: Flags
) -> tuple[ScenarioFile, list[RunConfig]]:
    scenarios = load_scenarios(file)
    environment = read_environment()
    return scenarios, [
        resolve(scenarios, scenarios.get(name), environment, flags) for name in names
    ]


@app.command()
def run(
    scenario: Annotated[
        list[str] | None,
        typer.Argument(
            help="Scenarios to run, one after another (default: normal).", show_default=False
        ),
    ] = None,
    file: FileOption = None,
    database_url: DatabaseUrlOption = None,
    pool_size: PoolSizeOption = None,
    max_overflow: MaxOverflowOption = None,
    pool_timeout: PoolTimeoutOption = None,
    pool_recycle: PoolRecycleOption = None,
    pre_ping: PrePingOption = None,
    preset: PresetOption = None,
    clients: ClientsOption = None,
    duration: DurationOption = None,
    iterations: IterationsOption = None,
    seed: SeedOption = None,
    threshold: ThresholdOption = None,
    instances: Annotated[
        int | None,
        typer.Option(
            "--instances",
            help="Run N application instances: processes, each with its own pool, events "
            "merged into one stream.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Also write the JSONL event stream to this file.", dir_okay=False
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the --output file if it exists.")
    ] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option("--log-format", help="json: one JSON object a line; console: for people."),
    ] = LogFormat.json,
    events: Annotated[
        str | None,
        typer.Option(
            "--events",
            help="Write only these kinds of event: comma-separated patterns such as "
            "'monitor.*,run.*' (run.start and run.end always). Metrics are unaffected.",
            show_default=False,
        ),
    ] = None,
    loop: Annotated[
        EventLoop,
        typer.Option("--loop", help="Event loop: uvloop when installed (auto), or asyncio."),
    ] = EventLoop.auto,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No live dashboard, summary or warnings on stderr."),
    ] = False,
) -> None:
    """Run scenarios and stream their events as JSON lines on stdout."""
    from loadsim.run.dashboard import (
        Dashboard,  # heavy imports only for the command that needs them
    )
    from loadsim.run.fleet import Fleet
    from loadsim.run.runner import Runner
    from loadsim.run.summary_table import format_summary
    from loadsim.run.writer import EventWriter

    flags = Flags(
        database_url=database_url,
        preset=preset,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        pool_pre_ping=pre_ping,
        clients=clients,
        duration=duration,
        iterations=iterations,
        seed=seed,
        thresholds=tuple(threshold or ()),
        instances=instances,
    )
    _, configs = _configs(file, scenario or ["normal"], flags)
    fleet = any(config.instances > 1 for config in configs)
    if fleet and log_format is LogFormat.console:
        raise ScenarioError("--log-format console is not available with several instances")
    kinds = select_events(events) if events is not None else EVENT_NAMES
    stdout = None if _stdout_closed() else sys.stdout.buffer
    if stdout is None and output is None:
        raise OutputError(
            "stdout is closed and there is no --output: the event stream has nowhere to go "
            "(redirect stdout, > /dev/null to discard it, or add --output FILE)"
        )
    output_file = _open_output(output, force) if output is not None else None
    streams: list[IO[bytes]] = [] if stdout is None else [stdout]
    if output_file is not None:
        streams.append(output_file.stream)
    regular = {stream: stat.S_ISREG(os.fstat(stream.fileno()).st_mode) for stream in streams}
    sink = EventWriter(
        streams,
        names=[_stream_name(stream, output_file) for stream in streams],
        replace=[output_file.stream] if output_file and not output_file.created else [],
        warn=_say_warning,  # what a reader missed is said even with --quiet
    )

    def warn(message: str) -> None:
        if not quiet:
            print(f"loadsim: warning: {message}", file=sys.stderr)

    dashboard = Dashboard() if sys.stderr.isatty() and not quiet and not fleet else None
    patience: float | None = 0.0  # how long the end waits for a reader who is not reading
    try:
        if fleet:
            outcome = Fleet(
                configs, sink, log_format="json", warn=warn, kinds=kinds, loop=loop.value
            ).run()
        else:
            outcome = Runner(
                configs,
                sink,
                log_format=log_format.value,
                colours=sys.stdout.isatty(),
                warn=warn,
                dashboard=dashboard,
                kinds=kinds,
                loop=loop.value,
            ).run()
        if outcome.interrupted_by is None:
            patience = None  # a run that ended on its own waits for its reader to read
    finally:
        with signals.interrupting() as stopped_by:  # a signal cuts the wait for a reader short
            sink.close(patience)
        removed = output_file is not None and _remove_if_unwritten(output_file)
        if output_file is not None:
            output_file.stream.close()
        if any(stream is stdout for stream, _ in sink.failed):
            _silence_stdout()
    if not quiet and outcome.summaries:
        print(format_summary(outcome.summaries), file=sys.stderr)
    failed = [
        (summary["scenario"], result)
        for summary in outcome.summaries
        for result in summary.get("thresholds", [])
        if not result["passed"]
    ]
    for scenario_name, result in failed:
        print(
            f"loadsim: threshold failed in {scenario_name}: {result['threshold']} "
            f"({result['metric']} = {_number(result['value'])})",
            file=sys.stderr,
        )
    for failure in outcome.failures:  # an instance of a fleet that failed
        print(f"loadsim: error: {failure}", file=sys.stderr)
    if sink.write_error is not None:  # a full disk, an I/O error: exit 2
        stream, error = sink.write_error
        name = _stream_name(stream, output_file)
        raise OutputError(_write_failure(name, error, removed, regular[stream]))
    if sink.interrupted and outcome.interrupted_by is None:  # Ctrl-C while waiting to write
        raise typer.Exit(signals.exit_status(stopped_by[0]) if stopped_by else 130)
    if outcome.interrupted_by is not None:  # 130, 143, 129: README, "Stopping"
        raise typer.Exit(signals.exit_status(outcome.interrupted_by))
    if outcome.failures:
        raise typer.Exit(outcome.failures[0].exit_code)
    if failed:
        raise typer.Exit(1)


@app.command("_instance", hidden=True)
def instance() -> None:
    """One instance of a fleet started by `run --instances` (its orders come on stdin)."""
    from loadsim.run.fleet import run_instance
    from loadsim.run.writer import EventWriter

    sink = EventWriter([sys.stdout.buffer], warn=lambda message: print(message, file=sys.stderr))
    patience: float | None = 0.0
    try:
        outcome = run_instance(
            sys.stdin.buffer, sink, lambda message: print(message, file=sys.stderr)
        )
        if outcome.interrupted_by is None:
            patience = None
    finally:
        with signals.interrupting() as stopped_by:
            sink.close(patience)
    if outcome.interrupted_by is not None:
        raise typer.Exit(signals.exit_status(outcome.interrupted_by))
    if stopped_by:  # told to stop while its parent was not reading
        raise typer.Exit(signals.exit_status(stopped_by[0]))


@app.command("list")
def list_scenarios(file: FileOption = None) -> None:
    """List the scenarios of a file with their descriptions."""
    scenarios = load_scenarios(file)
    width = max((len(name) for name in scenarios.scenarios), default=0)
    for name, scenario in scenarios.scenarios.items():
        first_line = scenario.description.splitlines()[0] if scenario.description else ""
        print(f"{name:<{width}}  {first_line}")


@app.command()
def show(
    scenario: Annotated[str, typer.Argument(help="The scenario to show.")],
    file: FileOption = None,
    database_url: DatabaseUrlOption = None,
    pool_size: PoolSizeOption = None,
    max_overflow: MaxOverflowOption = None,
    pool_timeout: PoolTimeoutOption = None,
    pool_recycle: PoolRecycleOption = None,
    pre_ping: PrePingOption = None,
    preset: PresetOption = None,
    clients: ClientsOption = None,
    duration: DurationOption = None,
    iterations: IterationsOption = None,
    seed: SeedOption = None,
) -> None:
    """Print a scenario's resolved configuration and where each value came from."""
    flags = Flags(
        database_url=database_url,
        preset=preset,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        pool_pre_ping=pre_ping,
        clients=clients,
        duration=duration,
        iterations=iterations,
        seed=seed,
    )
    scenarios, (config,) = _configs(file, [scenario], flags)
    print(f"# {scenarios.path}")
    print(format_show(config))


@app.command()
def validate(
    file: Annotated[
        Path | None, typer.Argument(help="Scenario file (default: as for run).", dir_okay=False)
    ] = None,
) -> None:
    """Check a scenario file; exit 0 if it is valid, else 2 with the reason."""
    scenarios = load_scenarios(file)
    environment = read_environment()
    for scenario in scenarios.scenarios.values():
        resolve(scenarios, scenario, environment, Flags())
    print(
        f"{scenarios.path}: ok ({len(scenarios.scenarios)} scenarios, "
        f"{len(scenarios.presets)} presets)"
    )


RunLogsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Run logs written by 'loadsim run --output FILE' ('-' reads standard input).",
        show_default=False,
    ),
]


@app.command("schema")
def schema_command() -> None:
    """Print the event stream's JSON Schema (draft 2020-12): what one line of 'loadsim run'
    may hold, every event with its fields, their types, units and meanings.

    Example: loadsim schema > events.schema.json
    """
    print(json.dumps(json_schema(), indent=2))


def _log_note(message: str) -> None:
    print(f"loadsim: warning: {message}", file=sys.stderr)


@app.command()
def report(
    logs: RunLogsArgument,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for the PNG charts and index.html (default: LOG-report/).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Charts and a self-contained HTML page (index.html) from recorded runs."""
    from loadsim.report import build_report  # matplotlib is slow to import: only here

    result = build_report(logs, out, note=_log_note)
    print(
        f"loadsim: wrote {len(result.charts)} charts and the page to {result.out_dir}/",
        file=sys.stderr,
    )
    print(result.index)


@app.command()
def compare(
    logs: RunLogsArgument,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for the comparison charts and index.html (default: "
            "LOG-compare/ for one log, else loadsim-compare/).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Runs (or the scenarios of one run) side by side: a table here, charts in --out."""
    from loadsim.report import build_comparison  # matplotlib is slow to import: only here

    result = build_comparison(logs, out, note=_log_note)
    print(result.table)
    print(f"loadsim: charts and the page in {result.index}", file=sys.stderr)


def _number(value: float | None) -> str:
    return "no value" if value is None else f"{value:g}"


@dataclass(frozen=True)
class _OutputFile:
    path: Path
    stream: IO[bytes]
    created: bool  # by this run, which removes it again if it writes nothing to it


def _open_output(path: Path, force: bool) -> _OutputFile:
    """Open --output before anything connects; never overwrite without --force. A file
    that exists keeps its content until the run writes its first line (the writer empties
    it then): a run that fails before that leaves it as it was."""
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            created = True
        except FileExistsError:
            if not force:
                raise ScenarioError(
                    f"--output {path}: the file exists; choose another name or add --force "
                    "to overwrite"
                ) from None
            fd = os.open(path, os.O_WRONLY)  # not emptied yet: see above
            created = False
    except OSError as error:
        raise ScenarioError(f"--output {path}: cannot write: {error.strerror}") from None
    return _OutputFile(path, os.fdopen(fd, "wb"), created)


def _remove_if_unwritten(output: _OutputFile) -> bool:
    """A file this run created and wrote nothing to is removed: a retry needs no --force.
    True when it was."""
    if not output.created:
        return False
    with contextlib.suppress(OSError):
        ours, there = os.fstat(output.stream.fileno()), os.stat(output.path)
        if ours.st_size == 0 and (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino):
            os.unlink(output.path)
            return True
    return False


def _stream_name(stream: IO[bytes], output: _OutputFile | None) -> str:
    return str(output.path) if output is not None and stream is output.stream else "stdout"


def _write_failure(name: str, error: OSError, removed: bool, regular: bool) -> str:
    """One line for a stream that could not be written: which, and the errno; a file is
    cut back to its last whole line (by the writer), or removed if it has none and this
    run created it."""
    code = errno.errorcode.get(error.errno or 0, str(error.errno))
    what = f"cannot write the event stream to {name}: {error.strerror} ({code}); the run stopped"
    if removed:
        return f"{what}, and {name} is removed: nothing could be written to it"
    if regular:
        return f"{what}; {'it' if name == 'stdout' else name} ends with its last whole line"
    return what


def _say_warning(message: str) -> None:
    print(f"loadsim: warning: {message}", file=sys.stderr)


#: The standard streams (0, 1, 2) that were closed when loadsim started.
_CLOSED_AT_START: set[int] = set()


def _standard_streams() -> None:
    """A standard stream closed at start (`>&-`, `2>&-`) is opened on /dev/null, so that no
    file loadsim opens takes its number, and what is written to it goes nowhere (`run`
    refuses a closed stdout unless it has --output). Text that the streams' encoding cannot
    carry (PYTHONIOENCODING=ascii) is escaped, never an error; the event stream is bytes."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _CLOSED_AT_START.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # the writer and the server inherit it
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (for the process's life)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def _stdout_closed() -> bool:
    return 1 in _CLOSED_AT_START or sys.stdout is None


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's exit flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(message: str, exit_code: int) -> NoReturn:
    print(f"loadsim: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def main() -> None:
    """The command. A stop signal exits quietly with 128 + the signal until a run's lifecycle
    takes over (and after it, for what is left to do); the handlers that were there before
    are back when it returns (it is called in process by tests)."""
    saved = signals.quit_quietly()
    _standard_streams()
    try:
        exit_code = app(standalone_mode=False)
    except LoadsimError as error:
        _fail(str(error), error.exit_code)
    except typer.TyperException as error:  # usage errors: bad flags, bad values
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "loadsim"
        _fail(f"{error.format_message()} (see '{command} --help')", error.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:  # only outside the main thread, where signals cannot be handled
        sys.exit(130)
    finally:
        signals.restore(saved)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
