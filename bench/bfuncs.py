"""Job functions for the benchmarks; imported by name in the workers, so
every peer runs the same code."""
import time


def always_true():
    """retire= for single-use workers: retire after every call."""
    return True


def burn(ms):
    """Uses `ms` milliseconds of CPU time (not wall time), so a job costs
    the same however the CPUs are shared; returns the loops it made."""
    end = time.process_time() + ms / 1000.0
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def loop(seconds):
    """The seed's parallel_loops job: count loops for `seconds` of wall
    time; returns the count."""
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        i += 1
    return i


def wait(seconds):
    """A job of a given duration for the scheduling table: under 2 ms it
    spins (a sleep that short lasts ~50 µs or more), longer ones sleep, so
    the makespan measures the scheduling, not how the CPUs are shared."""
    if seconds < 0.002:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    else:
        time.sleep(seconds)
    return seconds
