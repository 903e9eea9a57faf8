"""VMamba-T backbone: stage shapes, official checkpoint naming, checkpoint loading, tracing/scripting."""

import copy
import math
import sys
import types
import warnings

import pytest
import torch

from medad_monai.networks.vmamba import VSSM, cross_merge_2d, cross_scan_2d, load_vmamba_checkpoint, vmamba_tiny

DIMS = (96, 192, 384, 768)
DEPTHS = (2, 2, 8, 2)
OUTNORM_KEYS = sorted(f"outnorm{i}.{p}" for i in range(4) for p in ("weight", "bias"))


def official_vssm1_tiny_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ``vssm1_tiny_0230s`` ``model`` state dict, written out from the official
    ``classification/models/vmamba.py`` (``vmamba_tiny_s1l8``: channel-first, v05_noz, d_state 1, ssm_ratio 1,
    dt_rank ceil(C/16), conv without bias, patch embed v2, downsample v3, classifier head of 1000 classes)."""
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.0.weight": (48, 3, 3, 3),
        "patch_embed.0.bias": (48,),
        "patch_embed.2.weight": (48,),
        "patch_embed.2.bias": (48,),
        "patch_embed.5.weight": (96, 48, 3, 3),
        "patch_embed.5.bias": (96,),
        "patch_embed.7.weight": (96,),
        "patch_embed.7.bias": (96,),
        "classifier.norm.weight": (768,),
        "classifier.norm.bias": (768,),
        "classifier.head.weight": (1000, 768),
        "classifier.head.bias": (1000,),
    }
    d_state = 1
    for i, (c, depth) in enumerate(zip(DIMS, DEPTHS)):
        rank = math.ceil(c / 16)
        d_inner = c  # ssm_ratio 1.0
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes.update(
                {
                    p + "norm.weight": (c,),
                    p + "norm.bias": (c,),
                    p + "op.x_proj_weight": (4, rank + 2 * d_state, d_inner),
                    p + "op.dt_projs_weight": (4, d_inner, rank),
                    p + "op.dt_projs_bias": (4, d_inner),
                    p + "op.A_logs": (4 * d_inner, d_state),
                    p + "op.Ds": (4 * d_inner,),
                    p + "op.in_proj.weight": (d_inner, c),
                    p + "op.conv2d.weight": (d_inner, 1, 3, 3),
                    p + "op.out_norm.weight": (d_inner,),
                    p + "op.out_norm.bias": (d_inner,),
                    p + "op.out_proj.weight": (c, d_inner),
                    p + "norm2.weight": (c,),
                    p + "norm2.bias": (c,),
                    p + "mlp.fc1.weight": (4 * c, c),
                    p + "mlp.fc1.bias": (4 * c,),
                    p + "mlp.fc2.weight": (c, 4 * c),
                    p + "mlp.fc2.bias": (c,),
                }
            )
        if i < 3:
            p = f"layers.{i}.downsample."
            shapes.update(
                {
                    p + "1.weight": (DIMS[i + 1], c, 3, 3),
                    p + "1.bias": (DIMS[i + 1],),
                    p + "3.weight": (DIMS[i + 1],),
                    p + "3.bias": (DIMS[i + 1],),
                }
            )
    return shapes


def fake_official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) for k, s in official_vssm1_tiny_shapes().items()}


class _Opaque:
    """A non-tensor object that a safe (weights-only) load must refuse."""


@pytest.fixture(scope="module")
def model() -> VSSM:
    torch.manual_seed(0)
    return vmamba_tiny().eval()


@pytest.fixture(scope="module")
def model_outnorm() -> VSSM:
    return vmamba_tiny(with_out_norm=True)


@pytest.fixture
def target(model: VSSM, model_outnorm: VSSM, request) -> VSSM:
    """A throw-away copy to load weights into (copying is much cheaper than building VMamba-T again)."""
    return copy.deepcopy(model_outnorm if getattr(request, "param", False) else model)


def test_official_key_names_and_shapes(model: VSSM) -> None:
    expected = {k: s for k, s in official_vssm1_tiny_shapes().items() if not k.startswith("classifier.")}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert len(official_vssm1_tiny_shapes()) == 276  # official model: 276 tensors, 30.2M parameters
    n_params = sum(p.numel() for p in model.parameters())
    assert 29_000_000 < n_params < 30_300_000  # 30.2M minus the 0.77M-parameter classifier


def test_stage_shapes_256(model: VSSM) -> None:
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 256, 256))
    assert [tuple(o.shape) for o in outs] == [(1, 96, 64, 64), (1, 192, 32, 32), (1, 384, 16, 16), (1, 768, 8, 8)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_stage_shapes_64(model: VSSM) -> None:
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 96, 16, 16), (2, 192, 8, 8), (2, 384, 4, 4), (2, 768, 2, 2)]


def test_out_norm_normalises_channels(model_outnorm: VSSM) -> None:
    with torch.no_grad():
        outs = model_outnorm.eval()(torch.randn(1, 3, 32, 32))
    for o in outs:  # default LayerNorm affine: zero mean, unit variance over channels at every pixel
        assert torch.allclose(o.mean(1), torch.zeros(()), atol=1e-4)
        assert torch.allclose(o.var(1, unbiased=False), torch.ones(()), atol=1e-2)


def test_out_indices_select_stages() -> None:
    # a narrow VSSM keeps this cheap; stage selection must not change the selected features
    small = dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1))
    full = VSSM(**small).eval()
    sub = VSSM(out_indices=(1, 2), **small).eval()
    sub.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        outs, sub_outs = full(x), sub(x)
    assert sub.out_channels == [16, 32]
    assert [tuple(o.shape) for o in sub_outs] == [(2, 16, 8, 6), (2, 32, 4, 3)]
    assert torch.equal(sub_outs[0], outs[1]) and torch.equal(sub_outs[1], outs[2])
    with pytest.raises(ValueError, match="out_indices"):
        VSSM(out_indices=(2, 1), **small)


def test_cross_scan_merge_roundtrip() -> None:
    x = torch.randn(2, 3, 4, 5)
    xs = cross_scan_2d(x)
    assert xs.shape == (2, 4, 3, 20)
    assert torch.equal(xs[:, 1], x.transpose(2, 3).flatten(2))
    assert torch.allclose(cross_merge_2d(xs, 4, 5), 4 * x)


@pytest.mark.parametrize("target", [False, True], indirect=True, ids=["plain", "with_out_norm"])
def test_load_official_format_checkpoint(tmp_path, target: VSSM) -> None:
    sd = fake_official_state_dict()
    path = tmp_path / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    torch.save({"model": sd, "epoch": 264, "max_accuracy": 82.6}, path)
    missing, unexpected = load_vmamba_checkpoint(target, path)
    assert unexpected == []
    assert sorted(missing) == (OUTNORM_KEYS if target.with_out_norm else [])
    loaded = target.state_dict()
    for key in ("layers.2.blocks.7.op.A_logs", "patch_embed.0.weight", "layers.2.downsample.3.bias"):
        assert torch.equal(loaded[key], sd[key])


def test_factory_loads_bare_state_dict(tmp_path) -> None:
    sd = fake_official_state_dict(seed=2)
    path = tmp_path / "bare.pth"
    torch.save(sd, path)  # no "model" wrapper
    net = vmamba_tiny(weights=str(path))
    key = "layers.3.blocks.1.mlp.fc2.weight"
    assert torch.equal(net.state_dict()[key], sd[key])


def test_full_training_checkpoint_with_yacs_config(tmp_path, monkeypatch, target: VSSM) -> None:
    # official full checkpoints also pickle a yacs CfgNode; loading must work without yacs and without unsafe pickle
    sd = fake_official_state_dict(seed=1)
    path = tmp_path / "full.pth"
    with monkeypatch.context() as m:
        yacs = types.ModuleType("yacs")
        yacs_config = types.ModuleType("yacs.config")
        cfg_node = type("CfgNode", (dict,), {"__module__": "yacs.config"})
        yacs_config.CfgNode = cfg_node
        m.setitem(sys.modules, "yacs", yacs)
        m.setitem(sys.modules, "yacs.config", yacs_config)
        cfg = cfg_node(MODEL=cfg_node(NAME="vssm1_tiny_0230s"))
        torch.save({"model": sd, "model_ema": sd, "config": cfg, "epoch": 264}, path)
    assert "yacs.config" not in sys.modules or sys.modules["yacs.config"] is not yacs_config
    missing, unexpected = load_vmamba_checkpoint(target, path, key="model_ema")
    assert missing == [] and unexpected == []


def test_refuses_arbitrary_pickled_objects(tmp_path, target: VSSM) -> None:
    path = tmp_path / "opaque.pth"
    torch.save({"model": fake_official_state_dict(), "extra": _Opaque()}, path)
    with pytest.raises(RuntimeError, match="safely load"):
        load_vmamba_checkpoint(target, path)


def test_unexpected_and_missing_keys_raise(tmp_path, target: VSSM) -> None:
    sd = fake_official_state_dict()
    sd["layers.0.blocks.0.op.x_proj_bias"] = torch.zeros(4, 8)
    path = tmp_path / "extra.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(RuntimeError, match="x_proj_bias"):
        load_vmamba_checkpoint(target, path)
    del sd["layers.0.blocks.0.op.x_proj_bias"], sd["layers.1.blocks.0.op.Ds"]
    torch.save({"model": sd}, path)
    with pytest.raises(RuntimeError, match=r"layers\.1\.blocks\.0\.op\.Ds"):
        load_vmamba_checkpoint(target, path)


def test_conv_shaped_linear_weights_load(tmp_path, target: VSSM) -> None:
    sd = fake_official_state_dict()
    key = "layers.0.blocks.1.op.in_proj.weight"
    sd[key] = sd[key].reshape(96, 96, 1, 1)  # the official Linear2d also accepts conv-layout weights
    path = tmp_path / "conv_layout.pth"
    torch.save({"model": sd}, path)
    load_vmamba_checkpoint(target, path)
    assert torch.equal(target.state_dict()[key], sd[key].reshape(96, 96))


def test_missing_checkpoint_raises(tmp_path) -> None:
    path = tmp_path / "nowhere" / "vssm.pth"
    with pytest.raises(FileNotFoundError, match="vssm1_tiny_0230s_ckpt_epoch_264.pth") as err:
        vmamba_tiny(weights=str(path))
    assert str(path) in str(err.value)


def test_trace_matches_eager(model: VSSM) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice of torch.jit and shape-specialisation notes
        eager = model(x)
        traced = torch.jit.trace(model, x, strict=False, check_trace=False)
        out = traced(x)
    assert len(out) == len(eager) == 4
    for a, b in zip(out, eager):
        assert (a - b).abs().max().item() <= 1e-5


def test_script_matches_eager() -> None:
    # a narrow VSSM (same code paths, outnorms included) keeps scripting cheap; input size differs from any trace
    net = VSSM(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), with_out_norm=True).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent torch, but still supported
        scripted = torch.jit.script(net)
        out = scripted(x)
        eager = net(x)
    assert len(out) == len(eager) == 4
    for a, b in zip(out, eager):
        assert (a - b).abs().max().item() <= 1e-5
