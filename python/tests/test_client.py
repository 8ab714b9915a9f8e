"""headstart.Client against a live `headstart serve` (HEADSTART_BIN; skipped without it).

Pushes from several threads and connections, STATS, SYNC, heads against an independent numpy
float64 solve, task scopes, the error paths (server errors with their codes, arrays refused
before sending, a refusal inside the window), a SIGTERM checkpoint and a restart on a Unix
socket; then tokens with roles and TLS.
"""

import re
import select
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from conftest import nc_reference, rel_err

import headstart
from headstart import Client, ServerError

DIM = 8
LAMBDA = 0.05
REL_TOL = 1e-5  # the server sends heads as float32; the reference is float64
CLASSES = np.array([-2, 0, 3, 7])
TIMEOUT = 30  # seconds: the server's start, and each client read or write
PUSH_TOKEN = "push-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "admin-fedcba9876543210fedcba9876543210"


# -- servers -----------------------------------------------------------------------------------


class Servers:
    """Starts `headstart serve` processes; stops every one still running at teardown."""

    def __init__(self, binary, tmp_path):
        self.binary = binary
        self.tmp_path = tmp_path
        self.procs = []

    def start(self, state=None, listen="127.0.0.1:0", extra=()):
        state = state or self.tmp_path / f"s{len(self.procs)}.hs"
        cmd = [self.binary, "serve", "--listen", listen, "--state", str(state), "--dim", str(DIM), *map(str, extra)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        m = re.match(r"listening on (\S+) \(", line)
        if not m:
            proc.kill()
            _, err = proc.communicate(timeout=TIMEOUT)
            raise AssertionError(f"server did not start: first line {line!r}, exit code {proc.returncode}: {err}")
        return proc, m.group(1)

    @staticmethod
    def stop(proc):
        """SIGTERM; expects exit code 0; returns the rest of stdout and stderr (its log)."""
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"server exited with {proc.returncode}: {out!r} {err!r}"
        return out + err

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()


@pytest.fixture
def servers(headstart_bin, tmp_path):
    s = Servers(headstart_bin, tmp_path)
    yield s
    s.close()


@pytest.fixture
def server(servers):
    """A plaintext server without tokens: (process, address)."""
    return servers.start()


def connect(address, **kw):
    kw.setdefault("timeout", TIMEOUT)
    return Client(address, **kw)


# -- data and references -------------------------------------------------------------------------


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


def held(x, dtype):
    """What the server holds of `x` in a session of `dtype`: the values rounded to it."""
    return np.asarray(x).astype(dtype).astype(np.float64)


def check_head(head, x, y, classes, lam=LAMBDA, bias=True):
    """The head against the numpy float64 solve: relative error at most REL_TOL."""
    assert isinstance(head, headstart.Head)
    assert list(head.class_ids) == list(classes)
    assert head.samples == len(y) and head.dim == DIM and head.form == "nc"
    w, b = nc_reference(x, y, classes, lam, bias=bias)
    assert head.weight.shape == w.shape and head.weight.dtype == np.float64
    err = max(rel_err(head.weight, w), rel_err(head.bias, b) if bias else np.abs(head.bias).max())
    assert err <= REL_TOL, f"head differs from the numpy reference: relative error {err:.2e}"


def class_counts(y):
    ids, counts = np.unique(y, return_counts=True)
    return {str(i): int(n) for i, n in zip(ids, counts)}


# -- a live server -------------------------------------------------------------------------------


def test_pushes_from_several_threads_and_the_head_matches_numpy(server):
    _, address = server
    # Two threads with their own connections (a float32 and a float64 session) and three
    # threads sharing one connection.
    shared = connect(address)
    jobs = [
        (connect(address), np.float32, make_batches(1, 20)),
        (connect(address), np.float64, make_batches(2, 20)),
        (shared, np.float64, make_batches(3, 10)),
        (shared, np.float64, make_batches(4, 10)),
        (shared, np.float64, make_batches(5, 10)),
    ]
    sent = [[] for _ in jobs]
    errors = []

    def pusher(i, client, dtype, batches):
        try:
            for x, y in batches:
                client.push(x.astype(dtype), y)
                sent[i].append((held(x, dtype), y))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=pusher, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for client in {id(c): c for c, _, _ in jobs}.values():
        client.flush()
        assert client.acknowledged == client.sent
    assert shared.sent == 30
    x = np.concatenate([b[0] for s in sent for b in s])
    y = np.concatenate([b[1] for s in sent for b in s])
    total = len(y)

    with connect(address) as c:
        assert (c.role, c.dim, c.is_tls, c.address) == ("admin", DIM, False, address)
        stats = c.stats()
        assert isinstance(stats, dict)
        assert stats["dim"] == DIM and stats["samples"] == total, stats
        assert stats["classes"] == class_counts(y)
        assert c.sync() == total
        check_head(c.solve(lam=LAMBDA), x, y, CLASSES)
        head = c.solve(classes=[7, -2], prefix="fc.", lam=LAMBDA)
        check_head(head, x, y, [7, -2])
        assert head.lam == LAMBDA
    for client, _, _ in jobs:
        client.close()


def test_server_errors_carry_their_code_and_bad_arrays_are_refused_before_sending(server):
    _, address = server
    with connect(address) as c:
        x, y = make_batches(6, 1)[0]
        c.push(x.astype(np.float32), y)  # a float32 session
        c.flush()
        before = (c.stats()["samples"], c.sent)

        # A solve the server refuses: non-fatal, the connection stays usable.
        with pytest.raises(ServerError) as info:
            c.solve(classes=[12345])
        e = info.value
        assert (e.code, e.fatal) == ("Solve", False), e
        assert isinstance(e.message, str) and e.message and "Solve" in str(e)
        assert isinstance(e, Exception) and type(e).__module__ == "headstart"

        # Options refused before sending.
        for kwargs, words in [
            ({"form": "bogus"}, "bogus"),
            ({"scope": "bogus"}, "bogus"),
            ({"lam": 1.0, "lambda_rel": 0.1}, "not both"),
            ({"lam": -1.0}, "lambda"),
            ({"lam": "auto"}, "held-out"),
            ({"lambda_rel": float("nan")}, "lambda_rel"),
        ]:
            with pytest.raises(ValueError, match=words):
                c.solve(**kwargs)

        # Arrays refused before sending.
        nan = np.ones((3, DIM))
        nan[1, 4] = np.nan
        for features, labels, words in [
            (nan, [0, 0, 0], "row 1, column 4"),
            (np.ones((2, DIM)) * 1e39, [0, 0], "row 0, column 0"),  # infinite in the float32 session
            (np.ones((2, DIM)) * 2.0**480, [0, 0], "row 0, column 0"),
            (np.ones((2, DIM + 1)), [0, 0], "shape"),
            (np.ones((2, DIM)), [0, 0, 0], "labels"),
            (np.ones((2, DIM)), [0.5, 1.0], "integers"),
            (np.ones((2, DIM)), np.array([2**63, 0], dtype=np.uint64), "2\\^63"),
            (np.ones((2, DIM), dtype=np.float16), [0, 0], "float32 or float64"),
            (np.ones((2, DIM), dtype=np.int64), [0, 0], "float32 or float64"),
            (np.ones((2, 2, DIM)), [0, 0], "2-D"),
            (np.ones((2, DIM)), [[0, 0]], "1-D"),
        ]:
            with pytest.raises(ValueError, match=words):
                c.push(features, labels)
        # Any layout is accepted: a Fortran-ordered, strided view.
        view = np.asfortranarray(np.repeat(x, 2, axis=0))[::2]
        assert not view.flags.c_contiguous and np.array_equal(view, x)
        c.push(view, y)
        c.flush()
        assert c.stats()["samples"] == before[0] + len(y)  # still connected; nothing bad arrived
        assert c.sent == before[1] + 1

    # A fresh connection: a batch of the wrong width, or a bad first batch, opens nothing and
    # keeps the connection.
    with connect(address) as c:
        with pytest.raises(ValueError, match=f"dimension is {DIM}"):
            c.push(np.ones((2, DIM + 1)), [0, 0])
        with pytest.raises(ValueError, match="not finite"):
            c.push(nan, [0, 0, 0])
        c.push(np.ones((2, DIM)), [1, 1])  # a float64 session
        c.push(np.ones((2, DIM), dtype=np.float32), [1, 1])  # converted to it
        assert c.stats()["classes"]["1"] == 4
        assert c.sent == 2 == c.acknowledged


def test_a_refused_batch_in_the_window_surfaces_by_position_and_breaks_the_connection(server):
    _, address = server
    good = make_batches(7, 3)
    with connect(address) as admin:
        start = admin.stats()["samples"]
        # Three batches in flight, then one the server refuses (more rows than its limit):
        # the three are applied, the refusal surfaces by position, and the batch pushed behind
        # it never reaches the state.
        with connect(address, window=4) as w:
            assert w.window == 4
            for gx, gy in good:
                w.push(gx, gy)
            w.push(np.ones((65_537, DIM)), np.zeros(65_537, dtype=np.int64))
            with pytest.raises(ServerError) as info:
                w.push(*good[0])
                w.flush()
            assert (info.value.code, info.value.fatal) == ("TooManyRows", True), info.value
            assert w.acknowledged == 3, w.acknowledged
            assert "failed" in repr(w)
            # After a fatal error every call raises ConnectionError, and nothing waits.
            for call in (w.flush, w.stats, w.sync, lambda: w.push(*good[0])):
                with pytest.raises(ConnectionError, match="earlier error"):
                    call()
        assert w.closed and w.acknowledged == 3  # the with block closed it without raising
        x = np.vstack([gx for gx, _ in good])
        y = np.concatenate([gy for _, gy in good])
        assert admin.stats()["samples"] == start + len(y)
        assert start == 0
        check_head(admin.solve(lam=LAMBDA), x, y, np.unique(y))


def test_window_flush_and_acknowledged(server):
    _, address = server
    batches = make_batches(8, 12)
    with connect(address, window=1) as c:
        assert c.window == 1
        for i, (x, y) in enumerate(batches[:4]):
            c.push(x, y)
            assert c.sent == c.acknowledged == i + 1  # stop-and-wait
        c.window = 16
        assert c.window == 16
        for x, y in batches[4:]:
            c.push(x, y)
        assert c.sent == 12
        c.flush()
        assert c.acknowledged == 12
        with pytest.raises(ValueError, match="at least 1"):
            c.window = 0
        with pytest.raises((ValueError, OverflowError)):
            c.window = -1
        assert c.window == 16
        assert c.stats()["samples"] == sum(len(y) for _, y in batches)
    with pytest.raises(ValueError, match="at least 1"):
        connect(address, window=0)


def test_push_takes_the_arrow_arrays_that_stats_update_takes(server):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    _, address = server
    batches = make_batches(21, 4)
    with connect(address) as c:
        for x, y in batches:
            x = np.ascontiguousarray(x, dtype=np.float32)
            chunks = [pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), DIM) for part in (x[:1], x[1:])]
            c.push(pa.chunked_array(chunks), pa.array(y, pa.int16()))
        with pytest.raises(ValueError, match="features row 1 is null"):
            c.push(pa.array([[0.0] * DIM, None], pa.list_(pa.float32(), DIM)), [0, 0])
        assert c.sent == len(batches)
        x = np.concatenate([held(x, np.float32) for x, _ in batches])
        y = np.concatenate([y for _, y in batches])
        assert c.stats()["samples"] == len(y)
        check_head(c.solve(lam=LAMBDA), x, y, CLASSES)


def test_solve_options_and_a_task_scope(server):
    _, address = server
    with connect(address) as c:
        old = make_batches(9, 5)
        for x, y in old:
            c.push(x, y)
        c.begin_task()
        task = make_batches(10, 4)
        task = [(x, np.where(y < 3, 11, 12)) for x, y in task]
        for x, y in task:
            c.push(x, y)
        stats = c.stats()
        tx = np.vstack([x for x, _ in task])
        ty = np.concatenate([y for _, y in task])
        assert stats["tasks_begun"] == 1 and stats["task_samples"] == len(ty), stats
        head = c.solve(scope="task", lam=LAMBDA)
        assert head.scope == "task"
        check_head(head, tx, ty, [11, 12])

        x = np.vstack([x for x, _ in old] + [tx])
        y = np.concatenate([y for _, y in old] + [ty])
        classes = np.unique(y)
        check_head(c.solve(lam=LAMBDA, bias=False), x, y, classes, bias=False)
        # A relative lambda, given either way, is R times the mean eigenvalue tr(G/N)/d.
        rel = c.solve(lambda_rel=0.01)
        assert rel.lam_rule.startswith("rel:") and rel.lam > 0
        assert np.array_equal(rel.weight, c.solve(lam="rel:0.01").weight)
        lam = 0.01 * np.trace(x.T @ x / len(y)) / DIM
        assert abs(rel.lam - lam) <= 1e-9 * lam
        check_head(rel, x, y, classes, lam=rel.lam)
        default = c.solve()
        assert default.lam_rule.startswith("rel:")
        ridge = c.solve(form="ridge", lam=LAMBDA, classes=[12, 3])
        assert ridge.form == "ridge" and list(ridge.class_ids) == [12, 3]
        assert ridge.weight.shape == (2, DIM)


def test_a_checkpoint_at_sigterm_and_a_restart_on_a_unix_socket(servers, tmp_path):
    state = tmp_path / "restart.hs"
    proc, address = servers.start(state=state, extra=["--quiet"])
    batches = make_batches(11, 6)
    with connect(address) as c:
        for x, y in batches:
            c.push(x, y)
    x = np.vstack([x for x, _ in batches])
    y = np.concatenate([y for _, y in batches])
    out = servers.stop(proc)
    assert f"checkpointed {len(y)} samples" in out, out
    assert state.is_file()

    sock = tmp_path / "s.sock"
    _, address = servers.start(state=state, listen=f"unix:{sock}")
    assert address == f"unix:{sock}"
    with connect(address) as c:
        assert c.stats()["samples"] == len(y)
        check_head(c.solve(lam=LAMBDA), x, y, np.unique(y))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_client_resumes_after_a_server_kill_and_applies_every_batch_once(servers, tmp_path):
    state = tmp_path / "resume.hs"
    listen = f"127.0.0.1:{free_port()}"
    proc, address = servers.start(state=state, listen=listen, extra=["--quiet"])
    batches = make_batches(21, 12)
    c = connect(address)
    for x, y in batches[:4]:
        c.push(x, y)
    assert c.sync() == sum(len(y) for _, y in batches[:4])
    assert c.unsynced == 0
    for x, y in batches[4:8]:
        c.push(x, y)
    c.flush()
    assert c.unsynced == 4
    # SIGKILL: batches 5 to 8 were acknowledged but never made durable.
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    servers.start(state=state, listen=listen, extra=["--quiet"])
    for x, y in batches[8:]:
        c.push(x, y)
    n = sum(len(y) for _, y in batches)
    assert c.sync() == n
    assert c.reconnects == 1 and c.acknowledged == 12
    stats = c.stats()
    assert stats["samples"] == n and stats["resent_skipped"] == 0
    x = np.vstack([x for x, _ in batches])
    y = np.concatenate([y for _, y in batches])
    check_head(c.solve(lam=LAMBDA), x, y, np.unique(y))
    c.close()

    # Without reconnecting, a dropped connection fails the call.
    proc, address = servers.start(extra=["--quiet"])
    plain = connect(address, reconnect=0)
    plain.push(*batches[0])
    plain.flush()
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    with pytest.raises(ConnectionError):
        plain.push(*batches[1])
        plain.flush()
    plain.close()
    with pytest.raises(ValueError, match="reconnect"):
        Client(address, reconnect=-1.0)


def test_close_and_the_context_manager(server):
    _, address = server
    x, y = make_batches(12, 1)[0]
    c = connect(address)
    c.push(x, y)
    assert "open" in repr(c) and "sent=1" in repr(c)
    c.close()
    assert c.closed and c.acknowledged == 1 and "closed" in repr(c)
    c.close()  # harmless
    for call in (c.flush, c.stats, c.begin_task, lambda: c.push(x, y), lambda: c.solve()):
        with pytest.raises(ConnectionError, match="closed"):
            call()

    # An exception inside the block propagates, and the client is closed.
    with pytest.raises(KeyError):
        with connect(address) as c:
            c.push(x, y)
            raise KeyError("boom")
    assert c.closed
    with connect(address) as admin:
        assert admin.stats()["samples"] == 2 * len(y)  # the batch before the exception arrived


def test_connection_problems(tmp_path):
    # Nothing listens: ConnectionRefusedError (a ConnectionError) naming the address.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        Client(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(ConnectionError):
        Client(f"unix:{tmp_path / 'nothing.sock'}", timeout=5)

    # A peer that accepts but never answers: TimeoutError after the client's timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(TimeoutError, match="timed out"):
            Client(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)

    # The GIL is released while a call waits: another thread keeps running meanwhile.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        errors = []

        def wait():
            try:
                Client(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
            except TimeoutError as e:
                errors.append(e)

        t = threading.Thread(target=wait)
        t.start()
        ticks = [time.monotonic()]
        while t.is_alive():
            ticks.append(time.monotonic())
        t.join()
        assert len(errors) == 1
        assert ticks[-1] - ticks[0] >= 0.4 and max(np.diff(ticks)) < 0.2, max(np.diff(ticks))

    for address in ["nohost", "host:notaport", "unix:"]:
        with pytest.raises(ValueError):
            Client(address)
    for timeout in [0, -1.0, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="timeout"):
            Client(f"127.0.0.1:{port}", timeout=timeout)


# -- tokens ------------------------------------------------------------------------------------


def private_file(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def token_server(servers, tmp_path):
    tokens = private_file(tmp_path / "tokens", f"# roles\npush {PUSH_TOKEN}\nadmin {ADMIN_TOKEN}\n")
    _, address = servers.start(extra=["--token-file", tokens])
    return address


def test_a_push_token_pushes_and_nothing_more(token_server, monkeypatch):
    monkeypatch.delenv("HEADSTART_TOKEN", raising=False)
    address = token_server
    admin = connect(address, token=ADMIN_TOKEN)
    assert admin.role == "admin"
    x, y = make_batches(13, 1)[0]
    with connect(address, token=PUSH_TOKEN) as p:
        assert (p.role, p.dim) == ("push", DIM)
        p.push(x, y)
        p.flush()
        assert p.acknowledged == 1
    samples = admin.stats()["samples"]
    assert samples == len(y)

    # A push token may sync (a resumable session learns what is durable that way).
    with connect(address, token=PUSH_TOKEN) as p:
        assert p.sync() == samples

    # Every other request beyond batches is refused, closing that connection; the state is
    # unchanged.
    for request in ("solve", "stats", "begin_task"):
        p = connect(address, token=PUSH_TOKEN)
        with pytest.raises(ServerError) as info:
            getattr(p, request)()
        assert (info.value.code, info.value.fatal) == ("Forbidden", True), info.value
        assert "admin" in info.value.message and PUSH_TOKEN not in str(info.value)
        with pytest.raises(ConnectionError):
            p.push(x, y)
        p.close()
        assert admin.stats()["samples"] == samples
        assert admin.stats()["tasks_begun"] == 0

    # The admin token may do everything.
    admin.begin_task()
    assert admin.sync() == samples
    check_head(admin.solve(lam=LAMBDA), held(x, np.float64), y, np.unique(y))
    admin.close()


def test_missing_and_wrong_tokens_are_unauthorized(token_server, monkeypatch, tmp_path):
    monkeypatch.delenv("HEADSTART_TOKEN", raising=False)
    address = token_server
    admin = connect(address, token=ADMIN_TOKEN)
    x, y = make_batches(14, 1)[0]
    with connect(address, token=PUSH_TOKEN) as p:
        p.push(x, y)
    samples = admin.stats()["samples"]

    wrong = "wrong-0123456789abcdef0123456789"
    with pytest.raises(ServerError) as info:
        connect(address, token=wrong)
    assert (info.value.code, info.value.fatal) == ("Unauthorized", True), info.value
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert admin.stats()["samples"] == samples

    with pytest.raises(ServerError) as info:
        connect(address)
    assert info.value.code == "Unauthorized" and "token" in info.value.message
    assert admin.stats()["samples"] == samples

    # HEADSTART_TOKEN is used when no token is given.
    monkeypatch.setenv("HEADSTART_TOKEN", PUSH_TOKEN)
    with connect(address) as p:
        assert p.role == "push"
        p.push(x, y)
    monkeypatch.setenv("HEADSTART_TOKEN", wrong)
    with pytest.raises(ServerError, match="Unauthorized"):
        connect(address)
    # A token given outright wins over the environment; so does a token file.
    with connect(address, token=ADMIN_TOKEN) as c:
        assert c.role == "admin"
    with connect(address, token_file=private_file(tmp_path / "mine", f"admin {ADMIN_TOKEN}\n")) as c:
        assert c.role == "admin"
    with connect(address, token_file=str(private_file(tmp_path / "bare", f"{PUSH_TOKEN}\n"))) as c:
        assert c.role == "push"
    assert admin.stats()["samples"] == samples + len(y)
    admin.close()


def test_token_arguments_are_checked_without_printing_them(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADSTART_TOKEN", raising=False)
    address = "127.0.0.1:9"  # never reached: every case fails before connecting
    with pytest.raises(ValueError, match="at least 16") as info:
        Client(address, token="short-secret")
    assert "short-secret" not in str(info.value)
    with pytest.raises(ValueError, match="not both"):
        Client(address, token=ADMIN_TOKEN, token_file=tmp_path / "f")
    open_file = tmp_path / "open"
    open_file.write_text(f"admin {ADMIN_TOKEN}\n")
    open_file.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600") as info:
        Client(address, token_file=open_file)
    assert ADMIN_TOKEN not in str(info.value)
    with pytest.raises(FileNotFoundError):
        Client(address, token_file=tmp_path / "missing")
    with pytest.raises(ValueError, match="line 1"):
        Client(address, token_file=private_file(tmp_path / "bad", f"root {ADMIN_TOKEN}\n"))
    with pytest.raises(ValueError, match="no token"):
        Client(address, token_file=private_file(tmp_path / "empty", "# nothing\n"))
    monkeypatch.setenv("HEADSTART_TOKEN", "short-secret")
    with pytest.raises(ValueError, match="HEADSTART_TOKEN") as info:
        Client(address)
    assert "short-secret" not in str(info.value)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def certs(headstart_bin, tmp_path):
    """Two `headstart certs` runs: (the server's directory, another CA's directory)."""
    dirs = tmp_path / "certs", tmp_path / "other"
    for d in dirs:
        subprocess.run([headstart_bin, "certs", "--out", d], check=True, capture_output=True, timeout=TIMEOUT)
        for name in ("ca.pem", "server.pem", "server.key"):
            assert (d / name).is_file(), name
    return dirs


def test_tls_end_to_end(servers, certs, tmp_path, monkeypatch):
    monkeypatch.delenv("HEADSTART_TOKEN", raising=False)
    mine, other = certs
    tokens = private_file(tmp_path / "tokens", f"push {PUSH_TOKEN}\nadmin {ADMIN_TOKEN}\n")
    _, address = servers.start(
        extra=["--tls-cert", mine / "server.pem", "--tls-key", mine / "server.key", "--token-file", tokens]
    )
    batches = make_batches(15, 5)
    with connect(address, token=PUSH_TOKEN, tls_ca=mine / "ca.pem") as p:
        assert p.is_tls and p.role == "push"
        for x, y in batches:
            p.push(x.astype(np.float32), y)
    x = np.vstack([held(x, np.float32) for x, _ in batches])
    y = np.concatenate([y for _, y in batches])
    with connect(address, token=ADMIN_TOKEN, tls_ca=str(mine / "ca.pem")) as c:
        assert c.is_tls and "tls=True" in repr(c)
        assert c.stats()["samples"] == len(y)
        assert c.sync() == len(y)
        check_head(c.solve(lam=LAMBDA), x, y, np.unique(y))

    # Plaintext against TLS: the server says so.
    with pytest.raises(ServerError) as info:
        connect(address, token=ADMIN_TOKEN)
    assert info.value.code == "Transport", info.value
    # A CA that did not sign the server's certificate.
    with pytest.raises(ConnectionError, match="[Cc]ertificate") as info:
        connect(address, token=ADMIN_TOKEN, tls_ca=other / "ca.pem")
    assert not isinstance(info.value, ServerError)
    # CA files that are missing or hold no certificate.
    with pytest.raises(FileNotFoundError):
        connect(address, tls_ca=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="certificate"):
        connect(address, tls_ca=tokens)


def test_tls_against_a_plaintext_server(server, certs):
    _, address = server
    with pytest.raises(ServerError) as info:
        connect(address, tls_ca=certs[0] / "ca.pem")
    assert info.value.code == "Transport", info.value


def test_the_exports():
    assert headstart.Client is Client and headstart.ServerError is ServerError
    assert issubclass(ServerError, Exception)
    for name in ("push", "flush", "begin_task", "sync", "stats", "solve", "close"):
        assert getattr(Client, name).__doc__, name
    assert Client.__doc__ and "token" in Client.__doc__
