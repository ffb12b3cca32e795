"""Pure domain rules: order lifecycle, dispense units, payments. No I/O, no project imports."""
