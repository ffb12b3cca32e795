"""`vendhub devicecheck`: plays the backend towards a live device and checks its obligations."""

from vendhub.devicecheck.checks import CHECKS, Outcome, Report, Timing, run_checks
from vendhub.devicecheck.probe import Target, UsageError

__all__ = ["CHECKS", "Outcome", "Report", "Target", "Timing", "UsageError", "run_checks"]
