"""headstart.torch.all_reduce on gloo with several CPU processes. Skipped without torch."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
D = 9


def shard(rank):
    """Rank r's data: its own seed and its own subset of classes (ranks overlap partly)."""
    sys.path.insert(0, HERE)
    from conftest import make_data

    classes = [[0, 1, 2], [2, 3], [4, 1, 7], [8]][rank % 4]
    return make_data(100 + rank, 200 + 37 * rank, D, classes)


def worker(rank, world, rendezvous, out_dir):
    # A rendezvous file instead of a TCP port: no race for a free port with other processes.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    import headstart
    from headstart.torch import all_reduce

    s = headstart.Stats(D)
    x, y = shard(rank)
    s.update(x[: len(y) // 2], y[: len(y) // 2])
    if rank == 0:
        s.begin_task()
    if rank == 1:
        s.decay(0.5)  # weights other than counts must travel too
    s.update(x[len(y) // 2 :], y[len(y) // 2 :])
    merged = all_reduce(s)
    merged.save(os.path.join(out_dir, f"rank{rank}.hs"))
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_all_reduce_gives_every_rank_the_statistics_of_all_data(tmp_path, world):
    import headstart

    rendezvous = tmp_path / "rendezvous"
    mp.spawn(worker, args=(world, str(rendezvous), str(tmp_path)), nprocs=world, join=True)
    # The single-process reference: every rank's data in one state, the same task boundary.
    single = headstart.Stats(D)
    for rank in range(world):
        x, y = shard(rank)
        half = len(y) // 2
        part = headstart.Stats(D)
        part.update(x[:half], y[:half])
        if rank == 0:
            part.begin_task()
        if rank == 1:
            part.decay(0.5)
        part.update(x[half:], y[half:])
        single.merge(part)
    heads = []
    for rank in range(world):
        got = headstart.Stats.load(tmp_path / f"rank{rank}.hs")
        assert got.n == single.n and got.classes == single.classes and got.tasks_begun == 1
        assert got.task_n == single.task_n
        assert abs(got.weight - single.weight) < 1e-9 * single.weight
        for c in single.classes:
            assert got.class_count(c) == single.class_count(c)
            assert abs(got.class_weight(c) - single.class_weight(c)) < 1e-9 * single.class_weight(c)
        heads.append(got.solve(lam=0.01))
    reference = single.solve(lam=0.01)
    worst = max(np.abs(h.weight - reference.weight).max() / np.abs(reference.weight).max() for h in heads)
    print(f"all_reduce over {world} gloo processes: largest relative difference from one process {worst:.2e}")
    assert worst < 1e-12
    # Every rank got the same bytes.
    blobs = {(tmp_path / f"rank{r}.hs").read_bytes() for r in range(world)}
    assert len(blobs) == 1
