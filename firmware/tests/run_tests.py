"""Runs every test_* function of the firmware's test modules, under MicroPython or CPython."""

import sys

MODULES = ("test_vendproto",)


def _traceback(exc):
    if hasattr(sys, "print_exception"):
        sys.print_exception(exc)  # MicroPython
    else:
        import traceback

        traceback.print_exception(exc)


def main():
    passed = failed = 0
    for name in MODULES:
        module = __import__(name)
        for attr in sorted(dir(module)):
            if not attr.startswith("test_"):
                continue
            try:
                getattr(module, attr)()
            except Exception as exc:
                failed += 1
                print("FAIL %s.%s: %r" % (name, attr, exc))
                _traceback(exc)
            else:
                passed += 1
                print("PASS %s.%s" % (name, attr))
    print("%d passed, %d failed" % (passed, failed))
    return failed


def compile_all(folder, names):
    """Compile the board-only modules (they need `machine`): MicroPython must accept them."""
    failed = 0
    for name in names:
        try:
            with open(folder + "/" + name) as f:
                compile(f.read(), name, "exec")
        except Exception as exc:
            failed += 1
            print("FAIL compile %s: %r" % (name, exc))
    print("compiled %d board modules, %d failed" % (len(names) - failed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
