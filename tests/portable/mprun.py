"""Run test functions on MicroPython, which has no unittest or pytest.

    micropython tests/portable/mprun.py MODULE [FUNCTION ...]

Runs each named test function of MODULE (all test_* functions if none are
named), prints PASS/FAIL with the traceback, ends with "N passed, M failed"
and exits 1 if any failed. tests/conftest.py drives it from pytest.
"""

import sys


def main(argv):
    module = __import__(argv[1])
    names = argv[2:] or sorted(n for n in dir(module) if n.startswith("test_"))
    failed = 0
    for name in names:
        try:
            getattr(module, name)()
        except Exception as exc:  # a test failure of any kind is reported, then the next runs
            failed += 1
            print("FAIL", name)
            sys.print_exception(exc)
        else:
            print("PASS", name)
    print("%d passed, %d failed" % (len(names) - failed, failed))
    return 1 if failed else 0


sys.exit(main(sys.argv))
