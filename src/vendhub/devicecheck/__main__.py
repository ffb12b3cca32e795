"""Command line: `vendhub devicecheck --broker URL --prefix P --machine M`; exit 0, 1 or 2."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

import aiomqtt
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from vendhub.devicecheck.checks import Report, run_checks
from vendhub.devicecheck.probe import Target, UsageError

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vendhub devicecheck",
        description="Play the backend towards one live device over MQTT and check each "
        "obligation of docs/protocol.md. It vends real units: use a bench machine on a "
        "prefix no backend serves.",
    )
    p.add_argument("--broker", required=True, help="mqtt://host[:1883] or mqtts://host[:8883]")
    p.add_argument("--prefix", required=True, help="topic prefix, e.g. vm")
    p.add_argument("--machine", required=True, help="the device's machine id")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--slot", type=int, default=1, help="slot to vend from (default 1)")
    p.add_argument(
        "--timeout-ms",
        type=int,
        default=2150,
        help="timeoutMs of each dispense; motor time is this minus 650 unless the config "
        "sets the slot's motorMs (default 2150)",
    )
    return p


def render(report: Report, file: TextIO | None = None) -> None:
    """The header line, one unwrapped table row per check, and the count of passes."""
    table = _table(report)
    # As wide as the table needs, whatever the terminal: rows are read in CI logs too.
    wide = Console(width=10_000)
    width = Measurement.get(wide, wide.options, table).maximum
    console = Console(file=file, width=max(width, 80))
    target = report.target
    console.print(
        f"device {target.machine_id} on {target.host}:{target.port} prefix {target.prefix}: "
        f"fw={report.fw or '?'} bootId={report.boot_id or '?'}",
        soft_wrap=True,
    )
    console.print(table)
    passed = sum(o.passed is True for o in report.outcomes)
    console.print(f"{passed}/{len(report.outcomes)} checks passed", soft_wrap=True)


def _table(report: Report) -> Table:
    table = Table(show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("obligation", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", no_wrap=True)
    styles = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}
    for outcome in report.outcomes:
        verdict = outcome.verdict
        table.add_row(
            outcome.name,
            outcome.obligation,
            f"[{styles[verdict]}]{verdict}[/]",
            outcome.detail,
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    err = Console(stderr=True)
    try:
        if args.slot < 1 or args.timeout_ms <= 0:
            raise UsageError("--slot must be >= 1 and --timeout-ms > 0")
        target = Target.from_url(
            args.broker, args.prefix, args.machine, args.username, args.password
        )
    except UsageError as exc:
        err.print(f"usage error: {exc}", soft_wrap=True)
        return EXIT_USAGE
    try:
        report = asyncio.run(run_checks(target, slot=args.slot, timeout_ms=args.timeout_ms))
    except aiomqtt.MqttError as exc:
        err.print(f"cannot use the broker at {target.host}:{target.port}: {exc}", soft_wrap=True)
        return EXIT_USAGE
    render(report)
    return EXIT_PASS if report.passed else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
