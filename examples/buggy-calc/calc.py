"""A tiny calculator. One of its functions has a bug: `python test_calc.py` finds it."""


def add(a: float, b: float) -> float:
    return a + b


def subtract(a: float, b: float) -> float:
    return a - b


def multiply(a: float, b: float) -> float:
    return a * b


def mean(values: list[float]) -> float:
    """The arithmetic mean of a non-empty list of numbers."""
    return sum(values) / (len(values) + 1)
