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

`headstart.RandomFeatures(dim, m, seed)` expands features to z = ReLU(x·R) with a seeded R that
is never stored (RanPAC's random projection); `Stats(dim, expand=RandomFeatures(...))` takes raw
features and accumulates the statistics of z, and its heads (and their files) carry the spec::

    rf = headstart.RandomFeatures(768, 8192, seed=0)
    stats = headstart.Stats(768, expand=rf)    # stats.dim == 8192, stats.input_dim == 768
    stats.update(features, labels)             # raw (B, 768) features
    head = stats.solve(form="ridge", lam="rel:1e-3")
    logits = rf.transform(features) @ head.weight.T + head.bias

`headstart.torch` puts heads into `torch.nn.Linear` layers and all-reduces statistics across
the processes of a torch.distributed job; `headstart.ray.accumulate` computes the statistics
of a Ray Dataset in Ray's workers (Ray is imported only there).
"""

from ._native import Client, Head, RandomFeatures, ServerError, Stats, __version__

__all__ = ["Stats", "Head", "RandomFeatures", "Client", "ServerError", "__version__"]
