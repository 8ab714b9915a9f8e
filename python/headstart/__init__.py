"""headstart: least-squares heads for new classes, from streaming statistics.

The statistics (sample count, Gram matrix, per-class sums and counts, in float64) are exact and
mergeable; a head for any set of classes is solved on demand. The arithmetic is Rust (faer),
in process, with the GIL released.

Example::

    import numpy as np, headstart

    stats = headstart.Stats(512)
    for features, labels in loader:            # (B, 512) float32/float64, (B,) integers
        stats.update(features, labels)
    head = stats.solve(lam=0.05)               # nc head of Harun & Kanan (Eq. 3)
    head.weight, head.bias, head.class_ids     # numpy arrays: (C, 512), (C,), (C,)
    head.save("head.safetensors")              # the CLI's format

`headstart.Client` feeds a `headstart serve` process over the network (tokens, TLS) and solves
heads there::

    with headstart.Client("edge.example:7070", tls_ca="ca.pem") as client:  # HEADSTART_TOKEN
        client.push(features, labels)          # windowed: returns before the server's ACK
        print(client.sync(), "samples on disk")
        head = client.solve(lam=0.05)          # a headstart.Head

`Stats.update` also takes pyarrow arrays (fixed-size or equal-length lists of float32/float64,
chunked or not; read in place) and `Stats.update_table(table, feature_column, label_column)`
a pyarrow Table; pyarrow is imported only when given one.

`headstart.torch` puts heads into `torch.nn.Linear` layers and all-reduces statistics across
the processes of a torch.distributed job; `headstart.ray.accumulate` computes the statistics
of a Ray Dataset in Ray's workers (Ray is imported only there).
"""

from ._native import Client, Head, ServerError, Stats, __version__

__all__ = ["Stats", "Head", "Client", "ServerError", "__version__"]
