"""Job functions for scripts/demo."""
import math


def collatz_steps(n):
    """Steps for n to reach 1 in the Collatz sequence."""
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def is_prime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def fails(x):
    raise ValueError(f"demo failure for {x!r}")
