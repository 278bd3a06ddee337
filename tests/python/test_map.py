"""tpar.map: results as they come or in order, sync and async inputs,
bounded pending inputs, errors at their turn, leaving early."""

import os

import pytest
import trio

import _jobs
import tpar
from test_run_sync import counts


async def collect(results):
    return [r async for r in results]


async def test_results_of_every_item():
    with trio.fail_after(60):
        async with tpar.map(_jobs.square, range(20)) as results:
            got = await collect(results)
    assert sorted(got) == [x * x for x in range(20)]


async def test_ordered_results_follow_the_inputs():
    items = [(0.4, 0), (0.2, 1), (0.0, 2), (0.1, 3)]  # finish out of order
    with trio.fail_after(60):
        async with tpar.map(_jobs.sleep_then, items, ordered=True) as results:
            assert await collect(results) == [0, 1, 2, 3]


async def test_an_async_iterable_of_inputs():
    async def gen():
        for i in range(6):
            await trio.sleep(0)
            yield i

    with trio.fail_after(60):
        async with tpar.map(_jobs.square, gen(), ordered=True) as results:
            assert await collect(results) == [0, 1, 4, 9, 16, 25]


async def test_no_inputs_no_results():
    async with tpar.map(_jobs.square, []) as results:
        assert await collect(results) == []


@pytest.mark.parametrize("ordered", [False, True])
async def test_at_most_max_pending_inputs_taken_and_not_handed_back(ordered):
    taken = []

    def inputs():
        for i in range(30):
            taken.append(i)
            yield i

    consumed = 0
    with trio.fail_after(120):
        async with tpar.map(_jobs.square, inputs(), ordered=ordered,
                            max_pending=3) as results:
            async for _ in results:
                consumed += 1
                assert len(taken) - consumed <= 3
                await trio.sleep(0.01)  # a slow consumer: the taking waits
    assert consumed == 30


async def test_an_endless_async_generator_and_leaving_early():
    closed = []

    async def naturals():
        i = 0
        try:
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    got = []
    with trio.fail_after(60):
        async with tpar.map(_jobs.square, naturals(), max_pending=4) as results:
            async for r in results:
                got.append(r)
                if len(got) == 10:
                    break
    assert len(got) == 10 and closed == [True]


async def test_a_job_s_exception_is_raised_at_its_turn():
    with trio.fail_after(60):
        with pytest.raises(ValueError, match="bad item 3"):
            async with tpar.map(_jobs.fail_on, [(3, i) for i in range(8)],
                                ordered=True) as results:
                seen = []
                async for r in results:
                    seen.append(r)
    assert seen == [0, 1, 2]


async def test_an_input_that_raises_ends_the_map():
    def inputs():
        yield 1
        raise KeyError("no more")

    with trio.fail_after(60):
        with pytest.raises(KeyError):
            async with tpar.map(_jobs.square, inputs()) as results:
                await collect(results)


async def test_leaving_early_kills_running_jobs_with_kill_on_cancel():
    async with tpar.open_worker_context() as ctx:
        pid = await ctx.run_sync(os.getpid)  # one warm worker; the second starts
        with trio.fail_after(30):  # not the 30 s job
            async with tpar.map(_jobs.sleep_then, [(0, "fast"), (30, "slow")],
                                kill_on_cancel=True, context=ctx) as results:
                async for r in results:
                    assert r == "fast"
                    break
        assert counts(ctx) == (1, 0)  # the slow job's worker was killed
        assert await ctx.run_sync(os.getpid) == pid


async def test_leaving_early_lets_running_jobs_finish_without_kill_on_cancel():
    async with tpar.open_worker_context() as ctx:
        with trio.fail_after(30):
            async with tpar.map(_jobs.sleep_then, [(0, "fast"), (0.5, "slow")],
                                context=ctx) as results:
                async for r in results:
                    assert r == "fast"
                    break
        assert counts(ctx) == (2, 0)  # both workers back: the slow job finished


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError),
                                      ("2", TypeError), (True, TypeError)])
async def test_max_pending_is_validated(bad, exc):
    with pytest.raises(exc):
        async with tpar.map(_jobs.square, [1], max_pending=bad):
            pass  # pragma: no cover
