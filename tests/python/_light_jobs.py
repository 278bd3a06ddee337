"""Jobs that import nothing at module level (as _jobs does: threading
brings functools), for tests of what the worker itself imports."""


def loaded(*names):
    """Which of these modules the worker has imported."""
    import sys
    return [n for n in names if n in sys.modules]


def real_functools():
    import _functools
    import functools
    return (functools.partial is _functools.partial,
            functools.reduce(lambda a, b: a + b, [1, 2, 3]))
