"""vendhub: backend for fleets of cashless vending machines."""

__version__ = "0.1.0"
