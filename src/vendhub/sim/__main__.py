"""Command line: `python -m vendhub.sim --machines 1000 --speed 0.1 --fault jam=0.05`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from vendhub.sim.fleet import run_fleet
from vendhub.sim.options import Faults, SimOptions
from vendhub.sim.stats import FleetStats


def _fault(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    known = {f.name for f in fields(Faults)}
    if not sep or name not in known:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME in {sorted(known)}")
    return name, float(value)


def _credentials(path: str) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read credentials {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise argparse.ArgumentTypeError(f'{path}: expected {{"machineId": "password", …}}')
    return data


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vendhub sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username", help="one login for every machine")
    p.add_argument("--password", help="without --username: username = machine id")
    p.add_argument(
        "--credentials",
        type=_credentials,
        default={},
        metavar="FILE",
        help='JSON {"machineId": "password", …}: each machine logs in as itself',
    )
    p.add_argument("--tls", action="store_true")
    p.add_argument("--prefix", default="vm")
    p.add_argument("--machines", type=int, default=1, help="how many, named by --id-pattern")
    p.add_argument("--id-pattern", default="SIM{n:04d}")
    p.add_argument("--ids", help="comma-separated machine ids (overrides --machines)")
    p.add_argument("--speed", type=float, default=1.0, help="motor time factor, 0.01 = 100x")
    p.add_argument("--telemetry-interval", type=float, default=60.0)
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--seed", type=int)
    p.add_argument("--duration", type=float, help="seconds; default: until Ctrl-C")
    p.add_argument("--stock", type=int, help="units per slot; default: never empty")
    p.add_argument("--fault", type=_fault, action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--register",
        action="store_true",
        help="first create the machines, their six slots and stock in vendhub's database "
        "(DATABASE_URL); `vendhub sim` only",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


# Called with the machine ids and units per slot before the fleet starts (`--register`).
Register = Callable[[list[str], int], None]


def _options(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        host=args.host,
        port=args.port,
        username=args.username,
        password=args.password,
        credentials=args.credentials,
        tls=args.tls,
        prefix=args.prefix,
        machine_ids=[i for i in (args.ids or "").split(",") if i],
        count=args.machines,
        id_pattern=args.id_pattern,
        speed=args.speed,
        telemetry_interval_s=args.telemetry_interval,
        state_dir=args.state_dir,
        faults=Faults(**dict(args.fault)),
        seed=args.seed,
        duration_s=args.duration,
        stock_per_slot=args.stock,
    )


async def _main(options: SimOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stats = FleetStats()
    progress = asyncio.create_task(_show_connecting(stats, len(options.resolved_ids()), stop))
    try:
        await run_fleet(options, stop, stats)
    finally:
        progress.cancel()
        await asyncio.gather(progress, return_exceptions=True)
    print(stats.summary())


async def _show_connecting(stats: FleetStats, total: int, stop: asyncio.Event) -> None:
    """A progress bar on stderr until every machine has connected once."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("connecting machines"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("connect", total=total)
        while not stop.is_set():
            bar.update(task, completed=min(stats.connects, total))
            if stats.connects >= total:
                return
            await asyncio.sleep(0.2)


def main(argv: list[str] | None = None, register: Register | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = _options(args)
    if args.register:
        if register is None:
            parser.error("--register needs the database: run it as `vendhub sim --register`")
        register(options.resolved_ids(), options.stock_per_slot or 8)
    asyncio.run(_main(options))


if __name__ == "__main__":
    main()
