"""End-to-end test of python/headstart_client.py against a real `headstart serve`.

Starts a TCP server, pushes seeded batches from two client threads (one f32 session, one f64),
checks STATS, SYNC, the nc head against an independent numpy float64 solve, a task scope, the
error paths, a SIGTERM shutdown; then restarts the server from its state file on a Unix socket
and checks that nothing was lost. Exits non-zero on failure.

Usage: python python/test_client.py PATH/TO/headstart
"""

import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headstart_client import Client, ServerError, read_safetensors, read_safetensors_metadata  # noqa: E402

DIM = 8
LAMBDA = 0.05
REL_TOL = 1e-5  # heads are stored as f32
CLASSES = np.array([-2, 0, 3, 7])
TIMEOUT = 30


def start_server(binary, listen, state, extra=()):
    cmd = [binary, "serve", "--listen", listen, "--state", str(state), "--dim", str(DIM), "--quiet", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    m = re.match(r"listening on (\S+) \(", line)
    if not m:
        proc.kill()
        raise AssertionError(f"server did not start: first line {line!r}, exit code {proc.poll()}")
    return proc, m.group(1)


def stop_server(proc):
    """SIGTERM, expect exit code 0; returns the rest of stdout and stderr (its log)."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"server exited with {proc.returncode}: {out!r} {err!r}"
    return out + err


def make_batches(seed, count):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(len(CLASSES), DIM)) * 2
    batches = []
    for _ in range(count):
        rows = int(rng.integers(1, 120))
        idx = rng.integers(0, len(CLASSES), size=rows)
        x = centres[idx] + rng.normal(size=(rows, DIM)) + 0.5
        batches.append((x, CLASSES[idx]))
    return batches


def nc_reference(x, y, classes, lam=LAMBDA):
    n, d = x.shape
    m = np.stack([x[y == c].mean(axis=0) for c in classes])  # C × d, class means as rows
    w = np.linalg.solve(x.T @ x / n + lam * np.eye(d), m.T).T / len(classes)
    b = 1.0 / len(classes) - w @ x.mean(axis=0)
    return w, b


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def check_head(data, x, y, classes, prefix=""):
    head = read_safetensors(data)
    assert set(head) == {prefix + "weight", prefix + "bias", prefix + "class_ids"}, sorted(head)
    assert head[prefix + "weight"].dtype == np.float32
    assert list(head[prefix + "class_ids"]) == list(classes), head[prefix + "class_ids"]
    assert int(read_safetensors_metadata(data)["samples"]) == len(y)
    w, b = nc_reference(x, y, classes)
    err = max(rel_err(head[prefix + "weight"], w), rel_err(head[prefix + "bias"], b))
    assert err <= REL_TOL, f"head differs from the numpy reference: relative error {err:.2e}"
    return err


def pusher(address, dtype, batches, sent, errors):
    try:
        with Client.connect(address, timeout=TIMEOUT) as c:
            assert c.hello(DIM, dtype) >= 0
            for x, y in batches:
                c.push(x, y)
                # What the server holds: the values rounded to the session's dtype.
                sent.append((x.astype(dtype).astype(np.float64), y))
    except BaseException as e:  # reported by the main thread
        errors.append(e)


def expect_server_error(fn, code, fatal):
    try:
        fn()
    except ServerError as e:
        assert (e.code, e.fatal) == (code, fatal), e
        return e
    raise AssertionError(f"expected a server error with code {code}")


def expect_value_error(fn, words):
    try:
        fn()
    except ValueError as e:
        assert words in str(e), e
        return
    raise AssertionError(f"expected a ValueError mentioning {words!r}")


def run(binary, tmp):
    state = tmp / "s.hs"
    summary = []

    # --- TCP server: two concurrent clients -----------------------------------------------
    proc, address = start_server(binary, "127.0.0.1:0", state)
    try:
        with Client.connect(address, timeout=TIMEOUT) as c:
            assert c.hello(DIM, "f32") == 0
            sent = [[], []]
            errors = []
            threads = [
                threading.Thread(target=pusher, args=(address, np.float32, make_batches(1, 25), sent[0], errors)),
                threading.Thread(target=pusher, args=(address, np.float64, make_batches(2, 25), sent[1], errors)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            x = np.concatenate([b[0] for s in sent for b in s])
            y = np.concatenate([b[1] for s in sent for b in s])
            total = len(y)

            stats = c.stats()
            assert stats["dim"] == DIM and stats["samples"] == total, stats
            ids, counts = np.unique(y, return_counts=True)
            assert stats["classes"] == {str(i): int(n) for i, n in zip(ids, counts)}, stats["classes"]
            assert c.sync() == total

            err = check_head(c.solve(lambda_=LAMBDA), x, y, CLASSES)
            err = max(err, check_head(c.solve(classes=[7, -2], prefix="fc.", lambda_=LAMBDA), x, y, [7, -2], "fc."))
            summary.append(f"{total} samples from 2 threads, nc head rel err {err:.1e}")

            # Errors: a non-fatal solve error keeps the connection; client-side refusals send nothing.
            e = expect_server_error(lambda: c.solve(classes=[12345]), 6, False)
            assert e.name == "Solve", e
            expect_server_error(lambda: c.solve(form="bogus"), 6, False)
            bad = np.ones((3, DIM))
            bad[1, 4] = np.nan
            expect_value_error(lambda: c.push(bad, [0, 0, 0]), "row 1, column 4")
            expect_value_error(lambda: c.push(np.ones((2, DIM)) * 1e39, [0, 0]), "row 0, column 0")  # inf in f32
            expect_value_error(lambda: c.push(np.ones((2, DIM + 1)), [0, 0]), "shape")
            expect_value_error(lambda: c.push(np.ones((2, DIM)), [0, 0, 0]), "labels")
            expect_value_error(lambda: c.push(np.ones((2, DIM)), [0.5, 1.0]), "integers")
            assert c.stats()["samples"] == total  # still connected, nothing reached the state

            # A fatal error closes the connection: HELLO with another dimension.
            with Client.connect(address, timeout=TIMEOUT) as other:
                e = expect_server_error(lambda: other.hello(DIM + 1, "f64"), 5, True)
                assert e.name == "Session"
                try:
                    other.stats()
                    raise AssertionError("a call after a fatal error should fail")
                except ConnectionError:
                    pass

            # A task: only its rows are in the task scope.
            c.begin_task()
            tx, ty = make_batches(3, 4)[0]
            ty = np.where(ty < 3, 11, 12)
            c.push(tx, ty)
            tx = tx.astype(np.float32).astype(np.float64)
            stats = c.stats()
            assert stats["tasks_begun"] == 1 and stats["task_samples"] == len(ty), stats
            check_head(c.solve(scope="task", lambda_=LAMBDA), tx, ty, np.unique(ty))
            x, y = np.vstack([x, tx]), np.concatenate([y, ty])
            total = len(y)

            # A window: three batches in flight, then one the server refuses (more rows than
            # its limit). The three are applied, the refusal surfaces by position, and the
            # batch pushed behind it never reaches the state.
            with Client.connect(address, timeout=TIMEOUT, window=4) as w:
                w.hello(DIM, "f64")
                good = make_batches(4, 3)
                for gx, gy in good:
                    w.push(gx, gy)
                w.push(np.ones((65_537, DIM)), np.zeros(65_537, dtype=np.int64))
                try:
                    w.push(*good[0])
                    w.flush()
                    raise AssertionError("a refused batch in the window should raise")
                except ServerError as e:
                    assert e.name == "TooManyRows" and e.fatal, e
                assert w.acknowledged == 3, w.acknowledged
            x = np.vstack([x] + [gx for gx, _ in good])
            y = np.concatenate([y] + [gy for _, gy in good])
            total = len(y)
            assert c.stats()["samples"] == total
            check_head(c.solve(lambda_=LAMBDA), x, y, np.unique(y))
            summary.append("window of 4 with a refusal in it ok")
        out = stop_server(proc)
        assert f"checkpointed {total} samples" in out, out
        assert state.is_file(), "no state file after SIGTERM"
        summary.append(f"SIGTERM exit 0 with {total} samples on disk")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # --- Unix socket: restart from the state file -----------------------------------------
    sock = tmp / "s.sock"
    proc, address = start_server(binary, f"unix:{sock}", state)
    try:
        assert address == f"unix:{sock}", address
        with Client.connect(address, timeout=TIMEOUT) as c:
            assert c.hello(DIM, np.float64) == total
            assert c.stats()["samples"] == total
            check_head(c.solve(lambda_=LAMBDA), x, y, np.unique(y))
        stop_server(proc)
        summary.append("unix socket restart ok")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "; ".join(summary)


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} PATH/TO/headstart")
    with tempfile.TemporaryDirectory() as tmp:
        print("ok:", run(sys.argv[1], Path(tmp)))


if __name__ == "__main__":
    main()
