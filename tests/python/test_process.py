"""Whole programs in a child Python: __main__ functions, exit-time shutdown,
Ctrl-C, configure_default_context."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import subprocess_env


def run_script(tmp_path, body, timeout=60, check=True):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(body))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout, cwd=str(tmp_path))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def pids_in(out):
    return [int(x) for x in out.split()]


def gone(pid):
    return not os.path.exists(f"/proc/{pid}")


def test_main_functions_and_exit_shutdown(tmp_path):
    proc = run_script(tmp_path, """
        import os, trio
        import tpar as trio_parallel

        def triple(x):
            return 3 * x, os.getpid()

        async def main():
            async with trio.open_nursery() as n:
                for i in range(4):
                    n.start_soon(trio_parallel.run_sync, triple, i)
            v, pid = await trio_parallel.run_sync(triple, 5)
            assert v == 15
            stats = trio_parallel.default_context_statistics()
            assert stats.idle_workers >= 1 and stats.running_workers == 0
            print(pid)

        if __name__ == "__main__":
            trio.run(main)
    """)
    for pid in pids_in(proc.stdout):
        assert gone(pid)  # idle workers were stopped and reaped at exit


def test_exit_kills_workers_that_outstay_the_grace_period(tmp_path):
    proc = run_script(tmp_path, """
        import os, signal, trio
        import tpar as trio_parallel

        async def main():
            pid = await trio_parallel.run_sync(os.getpid)
            os.kill(pid, signal.SIGSTOP)
            print(pid, flush=True)

        if __name__ == "__main__":
            assert trio_parallel.atexit_shutdown_grace_period(0.3) == 0.3
            trio.run(main)
    """)
    assert "BrokenWorkerError" in proc.stderr and "SIGKILL" in proc.stderr
    for pid in pids_in(proc.stdout):
        assert gone(pid)


def test_ctrl_c_kills_the_running_job_and_leaves_no_worker(tmp_path):
    proc = run_script(tmp_path, """
        import os, signal, time, trio
        import tpar as trio_parallel

        import threading

        async def main():
            pid = await trio_parallel.run_sync(os.getpid)
            print(pid, flush=True)
            # Ctrl-C from outside, while the main task waits for its job
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            await trio_parallel.run_sync(time.sleep, 30)

        if __name__ == "__main__":
            try:
                trio.run(main)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
    """, timeout=20)
    out = proc.stdout.split()
    assert out[-1] == "interrupted"
    assert gone(int(out[0]))


def test_configure_default_context(tmp_path):
    proc = run_script(tmp_path, """
        import os, trio
        import tpar as trio_parallel

        STATE = {}

        def init():
            STATE["n"] = 0

        def retire():
            STATE["n"] += 1
            return STATE["n"] >= 2

        async def main():
            pids = [await trio_parallel.run_sync(os.getpid) for _ in range(6)]
            print(*pids)

        if __name__ == "__main__":
            trio_parallel.configure_default_context(init=init, retire=retire, grace_period=5)
            assert trio_parallel.atexit_shutdown_grace_period() == 5
            trio.run(main)
    """)
    pids = pids_in(proc.stdout)
    assert len(pids) == 6
    assert len(set(pids)) == 3 and all(pids.count(p) == 2 for p in pids)


def test_functions_from_python_c_need_cloudpickle(tmp_path):
    code = textwrap.dedent("""
        import trio, tpar
        def square(x):
            return x * x
        print(trio.run(tpar.run_sync, square, 9))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=subprocess_env(), timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["81"]


@pytest.mark.parametrize("wtype", ["spawn", "forkserver"])
def test_unguarded_script_fails_with_broken_worker_error(tmp_path, wtype):
    """As with trio-parallel (multiprocessing's spawn): a worker that
    imports a script without a __main__ guard would run the script's jobs
    itself, so it exits, and the call raises BrokenWorkerError saying why."""
    proc = run_script(tmp_path, f"""
        import os, trio
        import tpar as trio_parallel

        def square(x):
            return x * x

        async def main():
            async with trio_parallel.open_worker_context(worker_type="{wtype}") as ctx:
                return await ctx.run_sync(square, 7)

        # no `if __name__ == "__main__":` guard: every worker re-imports this
        print(trio.run(main), flush=True)
    """, timeout=60, check=False)
    assert proc.returncode != 0
    assert "49" not in proc.stdout
    assert "BrokenWorkerError" in proc.stderr
    assert "guard its entry point with `if __name__ == \"__main__\":`" in proc.stderr
    if wtype == "spawn":
        assert "exited with code 76: it imported your script as __main__" in proc.stderr
    else:
        assert "the forkserver (tpar-worker --zygote, pid" in proc.stderr


def test_busy_workers_of_daemon_threads_die_at_exit(tmp_path):
    proc = run_script(tmp_path, """
        import os, threading, time, trio
        import tpar as trio_parallel

        def job():
            with open("worker.pid.tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename("worker.pid.tmp", "worker.pid")
            time.sleep(60)

        async def in_thread():
            await trio_parallel.run_sync(job)

        if __name__ == "__main__":
            # spawned from a thread: no PDEATHSIG, so only the exit handler
            # stands between this worker and an orphan
            threading.Thread(target=trio.run, args=(in_thread,), daemon=True).start()
            deadline = time.monotonic() + 20
            while not os.path.exists("worker.pid") and time.monotonic() < deadline:
                time.sleep(0.05)  # the job runs
    """, timeout=40)
    pid = int((tmp_path / "worker.pid").read_text())
    assert gone(pid), proc.stderr
