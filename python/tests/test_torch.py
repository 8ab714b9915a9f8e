"""headstart.torch: rows into nn.Linear, growing heads, head files. Skipped without torch."""

import numpy as np
import pytest
from conftest import make_data, rel_err

torch = pytest.importorskip("torch")

import headstart  # noqa: E402
from headstart.torch import grow, init_rows, load_head  # noqa: E402


def solved(classes=(3, 1), d=6):
    x, y = make_data(5, 300, d, [0, 1, 2, 3])
    s = headstart.Stats(d)
    s.update(x, y)
    return s.solve(classes=list(classes), lam=0.01)


def test_init_rows_writes_exactly_the_head_rows():
    torch.manual_seed(0)
    fc = torch.nn.Linear(6, 5)
    before = fc.weight.detach().clone()
    head = solved()
    rows = init_rows(fc, head)
    assert rows.tolist() == [3, 1]
    assert rel_err(fc.weight.detach()[3].numpy(), head.weight[0]) < 1e-7
    assert rel_err(fc.bias.detach()[1].numpy(), head.bias[1:2]) < 1e-7
    untouched = [0, 2, 4]
    assert torch.equal(fc.weight.detach()[untouched], before[untouched])
    assert fc.weight.requires_grad  # still a trainable parameter
    x = torch.randn(4, 6)
    logits = fc(x)[:, [3, 1]].detach().double().numpy()
    expected = x.double().numpy() @ head.weight.T + head.bias
    assert rel_err(logits, expected) < 1e-6


def test_match_scales_new_rows_to_the_median_norm_of_the_others():
    fc = torch.nn.Linear(6, 5)
    with torch.no_grad():
        fc.weight.copy_(torch.arange(30, dtype=torch.float32).reshape(5, 6) / 3)
    others = fc.weight.detach()[[0, 2, 4]].double().norm(dim=1).median().item()
    head = solved()
    init_rows(fc, head, norm="match")
    norms = fc.weight.detach()[[3, 1]].double().norm(dim=1)
    assert np.allclose(norms.numpy(), others, rtol=1e-6)
    # The bias scales with its row, so each new class's decision function keeps its direction.
    scale = norms[0].item() / np.linalg.norm(head.weight[0])
    assert np.isclose(fc.bias.detach()[3].item(), head.bias[0] * scale, rtol=1e-5)


def test_init_rows_checks_before_it_writes():
    fc = torch.nn.Linear(6, 3)
    before = fc.weight.detach().clone()
    with pytest.raises(ValueError, match="class id 3 is outside"):
        init_rows(fc, solved())
    with pytest.raises(ValueError, match="layer takes 7"):
        init_rows(torch.nn.Linear(7, 5), solved())
    with pytest.raises(ValueError, match="rows the head does not replace"):
        init_rows(torch.nn.Linear(6, 2), solved(classes=(0, 1)), norm="match")
    with pytest.raises(ValueError, match="no bias"):
        init_rows(torch.nn.Linear(6, 5, bias=False), solved())
    assert torch.equal(fc.weight.detach(), before)


def test_grow_keeps_old_rows():
    fc = torch.nn.Linear(6, 3, dtype=torch.float64)
    grown = grow(fc, 5)
    assert grown.weight.shape == (5, 6) and grown.weight.dtype == torch.float64
    assert torch.equal(grown.weight.detach()[:3], fc.weight.detach())
    assert torch.equal(grown.bias.detach()[:3], fc.bias.detach())
    with pytest.raises(ValueError):
        grow(fc, 2)


def test_load_head_finds_prefixes_and_ddp_names(tmp_path):
    head = solved()
    head.save(tmp_path / "plain.safetensors")
    head.save(tmp_path / "fc.safetensors", prefix="fc.")
    head.save(tmp_path / "ddp.safetensors", prefix="module.fc.")
    for name, prefix in [("plain", None), ("fc", None), ("fc", "fc."), ("ddp", None), ("ddp", "fc."), ("ddp", "module.fc.")]:
        loaded = load_head(tmp_path / f"{name}.safetensors", prefix=prefix)
        assert loaded.class_ids.tolist() == [3, 1], name
        assert rel_err(loaded.weight.numpy(), head.weight) < 1e-7, name
    fc = torch.nn.Linear(6, 5)
    init_rows(fc, load_head(tmp_path / "ddp.safetensors"))
    assert rel_err(fc.weight.detach()[1].numpy(), head.weight[1]) < 1e-7
    with pytest.raises(ValueError, match="no tensor"):
        load_head(tmp_path / "fc.safetensors", prefix="head.")
