"""Tests for calc.py. Run them with `python test_calc.py` (no pytest needed)."""

import sys

import calc


def test_add() -> None:
    assert calc.add(2, 3) == 5


def test_subtract() -> None:
    assert calc.subtract(7, 4) == 3


def test_multiply() -> None:
    assert calc.multiply(6, 7) == 42


def test_mean() -> None:
    result = calc.mean([1, 2, 3])
    assert result == 2, f"mean([1, 2, 3]) returned {result}, expected 2"


def main() -> int:
    tests = [test for name, test in sorted(globals().items()) if name.startswith("test_")]
    failed = 0
    for test in tests:
        try:
            test()
        except AssertionError as exc:
            failed += 1
            print(f"FAIL {test.__name__}: {exc}")
        else:
            print(f"ok   {test.__name__}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
