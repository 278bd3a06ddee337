"""More of open_remote_context under a local launcher: a payload larger than
any pipe or socket buffer both ways, a peer with the wrong secret refused
while the context goes on, and no process of the launcher's group left
after the context closes."""

import os
import shutil
import subprocess
import time

import trio

import tpar
from conftest import subprocess_env


def add(a, b):
    return a + b


def group_gone(pgid, within=10.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_large_payload_wrong_secret_and_nothing_left(monkeypatch, capfd):
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    seen = {}

    async def main():
        async with tpar.open_remote_context("{worker} --workers 2",
                                            listen="127.0.0.1:0") as ctx:
            seen["pgid"] = ctx._launcher.pid
            data = os.urandom(12 * 1024 * 1024 + 5)
            assert await ctx.run_sync(bytes, data) == data
            # a peer that does not know the secret: refused (exit 73: its
            # parent did not prove itself either), and the context goes on
            worker = os.environ.get("TPAR_WORKER") or shutil.which("tpar-worker")
            env = dict(os.environ, TPAR_SECRET="ab" * 32)
            bad = await trio.to_thread.run_sync(lambda: subprocess.run(
                [worker, "--connect", f"127.0.0.1:{ctx._listener.port}",
                 "--connect-timeout", "5"], env=env, stdin=subprocess.DEVNULL,
                capture_output=True, timeout=60))
            assert bad.returncode == 73, bad
            for i in range(4):
                assert await ctx.run_sync(add, i, 10) == i + 10

    trio.run(main)
    assert "tpar: refused a connection from 127.0.0.1" in capfd.readouterr().err
    assert group_gone(seen["pgid"]), "the launcher's process group outlived the context"
