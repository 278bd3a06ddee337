"""The worker driven frame by frame over its pipes, as docs/protocol.md
describes, for what the front ends never send."""

import json
import os
import struct
import subprocess

FRAME_JOB_JSON = 2


def spawn():
    """tpar-worker with its job pipes on fds 3 and 4."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()

    def fds():
        os.dup2(in_r, 3)
        os.dup2(out_w, 4)

    p = subprocess.Popen([os.environ["TPAR_WORKER"]], preexec_fn=fds, pass_fds=(3, 4),
                         stdin=subprocess.DEVNULL)
    os.close(in_r)
    os.close(out_w)
    return p, in_w, out_r


def read_exact(fd, n):
    b = b""
    while len(b) < n:
        chunk = os.read(fd, n - len(b))
        assert chunk, "the worker closed its pipe"
        b += chunk
    return b


def read_frame(fd):
    n, kind, status, flags, _ = struct.unpack("<IBBBB", read_exact(fd, 8))
    return kind, status, read_exact(fd, n) if not flags else None


def send_job(fd, payload):
    os.write(fd, struct.pack("<IBBBB", len(payload), FRAME_JOB_JSON, 0, 0, 0) + payload)


def test_invalid_kwargs_message_holds_only_their_own_bytes():
    """kwargs end the frame with no NUL after them: the error quotes them
    and nothing that lies beyond (an earlier job's bytes, here)."""
    p, to, frm = spawn()
    try:
        assert read_frame(frm)[0] == 1  # READY
        send_job(to, b"builtins:len\0" + json.dumps(["SECRET" * 60]).encode() + b"\0")
        assert json.loads(read_frame(frm)[2][8:]) == 360
        send_job(to, b"builtins:len\0[1]\0nope")
        kind, status, body = read_frame(frm)
        assert status & 0x7F == 1  # an error
        assert json.loads(body[8:])["message"] == "invalid JSON: nope"
    finally:
        os.close(to)
        assert p.wait(timeout=10) == 0
        os.close(frm)
