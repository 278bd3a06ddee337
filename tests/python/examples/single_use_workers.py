"""Worker retirement policies: a stateless one (every worker does one job)
and a stateful one (a worker retires after a few jobs, counted in the
worker's own global state)."""
import os

import trio

import tpar as trio_parallel

JOBS = int(os.environ.get("EXAMPLE_JOBS", 6))
USES = 3
WORKER_STATE = {}


def retire_at_once():
    return True


def init_counter():
    WORKER_STATE["uses"] = 0


def retire_after_uses():
    WORKER_STATE["uses"] += 1
    return WORKER_STATE["uses"] >= USES


async def run_jobs(label, **policy):
    pids = []
    async with trio_parallel.open_worker_context(**policy) as ctx:
        for _ in range(JOBS):
            pids.append(await ctx.run_sync(os.getpid))
    print(f"{label}: {' '.join(map(str, pids))}")
    print(f"{label} distinct workers: {len(set(pids))}")


async def amain():
    await run_jobs("single-use", retire=retire_at_once)
    await run_jobs(f"retire-after-{USES}", init=init_counter, retire=retire_after_uses)


if __name__ == "__main__":
    trio.run(amain)
