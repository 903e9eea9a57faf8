"""VMamba-T backbones (v05 ``vssm1_tiny_0230s`` and the original v0 ``vanilla_vmamba_tiny``): stage shapes, official
checkpoint naming, checkpoint loading, reference computations, tracing/scripting."""

import copy
import json
import math
import re
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import medad_monai.networks.vmamba as vmamba_module
from medad_monai.networks.selective_scan import selective_scan_ref
from medad_monai.networks.vmamba import (
    SS2DV0,
    VANILLA_VMAMBA_TINY_CHECKPOINT_NAME,
    VANILLA_VMAMBA_TINY_CHECKPOINT_URL,
    VSSM,
    PatchMerge2D,
    cross_merge_2d,
    cross_scan_2d,
    load_vmamba_checkpoint,
    rename_legacy_vmamba_keys,
    vanilla_vmamba_tiny,
    vmamba_tiny,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"

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


# ---------------------------------------------------------------------------------------------------------------------
# vanilla VMamba-T (v0): PDD's VMamba teacher
# ---------------------------------------------------------------------------------------------------------------------

# a narrow v0 network with the same code paths as VMamba-T v0 (d_state 16, ssm_ratio 2, no MLP) that is cheap to run
SMALL_V0 = dict(
    dims=(8, 16, 32, 64),
    depths=(1, 1, 2, 1),
    ssm_d_state=16,
    ssm_ratio=2.0,
    ssm_conv_bias=True,
    mlp_ratio=0.0,
    forward_type="v0",
)

# current official names -> names of the first VMamba release (the inverse of the official renaming)
_TO_LEGACY = [
    (r"^patch_embed\.0\.", "patch_embed.proj."),
    (r"^patch_embed\.2\.", "patch_embed.norm."),
    (r"^(layers\.\d+\.blocks\.\d+)\.norm\.", r"\1.ln_1."),
    (r"^(layers\.\d+\.blocks\.\d+)\.op\.", r"\1.self_attention."),
    (r"^(layers\.\d+\.downsample)\.1\.", r"\1.norm."),
    (r"^(layers\.\d+\.downsample)\.2\.", r"\1.reduction."),
    (r"^classifier\.norm\.", "norm."),
    (r"^classifier\.head\.", "head."),
]


def to_legacy_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in _TO_LEGACY:
            new_key = re.sub(pattern, replacement, key, count=1)
            if new_key != key:
                key = new_key
                break
        out[key] = value
    return out


def official_vanilla_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ``vanilla_vmamba_tiny`` state dict, dumped from the official code (see the
    fixture's ``source``): 212 tensors including the 1000-class ``classifier``."""
    data = json.loads((FIXTURES / "vanilla_vmamba_tiny_state_dict.json").read_text())
    assert data["num_tensors"] == len(data["shapes"]) == 212
    return {k: tuple(v) for k, v in data["shapes"].items()}


def fake_official_vanilla_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: 0.1 * torch.randn(*s, generator=g) for k, s in official_vanilla_shapes().items()}


@pytest.fixture(scope="module")
def vanilla() -> VSSM:
    torch.manual_seed(0)
    return vanilla_vmamba_tiny().eval()


def test_vanilla_official_key_names_and_shapes(vanilla: VSSM) -> None:
    expected = {k: s for k, s in official_vanilla_shapes().items() if not k.startswith("classifier.")}
    got = {k: tuple(v.shape) for k, v in vanilla.state_dict().items()}
    assert sorted(got) == sorted(expected)
    assert got == expected
    n_params = sum(p.numel() for p in vanilla.parameters())
    n_classifier = 768 * 1000 + 1000 + 2 * 768
    assert n_params == 22_893_448 - n_classifier  # the official model's count, less its classifier


def test_vanilla_architecture_details(vanilla: VSSM) -> None:
    op = vanilla.layers[2].blocks[8].op
    assert isinstance(op, SS2DV0)
    assert (op.d_model, op.d_inner, op.d_state, op.dt_rank) == (384, 768, 16, 24)
    assert not hasattr(vanilla.layers[0].blocks[0], "mlp")  # mlp_ratio 0: no MLP branch
    assert isinstance(vanilla.layers[3].downsample, torch.nn.Identity)
    assert vanilla.out_channels == [192, 384, 768, 768]
    assert all(b.drop_path.drop_prob == 0.0 for layer in vanilla.layers for b in layer.blocks)


def test_vanilla_shapes_256(vanilla: VSSM) -> None:
    with torch.no_grad():
        outs = vanilla(torch.randn(1, 3, 256, 256))
    # official VSSM.forward(x, feature_list=True) of PDD: each stage after its downsampling
    assert [tuple(o.shape) for o in outs] == [(1, 192, 32, 32), (1, 384, 16, 16), (1, 768, 8, 8), (1, 768, 8, 8)]
    assert all(torch.isfinite(o).all() and o.is_contiguous() for o in outs)


def test_vanilla_shapes_64_both_modes(vanilla: VSSM) -> None:
    before = vanilla_vmamba_tiny(out_mode="before_downsample").eval()
    before.load_state_dict(vanilla.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        after_outs, before_outs = vanilla(x), before(x)
        # the stage output after downsampling is the downsampling of the stage output before it
        redone = [
            layer.downsample(o.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for layer, o in zip(vanilla.layers, before_outs)
        ]
    assert [tuple(o.shape) for o in after_outs] == [(2, 192, 8, 8), (2, 384, 4, 4), (2, 768, 2, 2), (2, 768, 2, 2)]
    assert [tuple(o.shape) for o in before_outs] == [(2, 96, 16, 16), (2, 192, 8, 8), (2, 384, 4, 4), (2, 768, 2, 2)]
    assert before.out_channels == [96, 192, 384, 768]
    for a, b in zip(after_outs, redone):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(after_outs[3], before_outs[3])  # the last stage has no downsampling


def test_vanilla_out_indices_skip_later_stages() -> None:
    full = VSSM(out_mode="after_downsample", **SMALL_V0).eval()
    sub = VSSM(out_mode="after_downsample", out_indices=(0, 2), **SMALL_V0).eval()
    sub.load_state_dict(full.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs, sub_outs = full(x), sub(x)
    assert sub.out_channels == [16, 64]
    assert torch.equal(sub_outs[0], outs[0]) and torch.equal(sub_outs[1], outs[2])


def test_vanilla_train_mode_is_deterministic() -> None:
    # drop_path 0 by default: a frozen teacher gives the same features in train and eval mode
    net = VSSM(**SMALL_V0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = net.train()(x)
        b = net.eval()(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_patch_merge_order_and_odd_sizes() -> None:
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(2, 4, 6, 3)  # (B, H, W, C)
    y = PatchMerge2D()(x)
    assert y.shape == (2, 2, 3, 12)
    # official order of the 2x2 neighbourhood: (row, col) offsets (0, 0), (1, 0), (0, 1), (1, 1)
    expected = torch.cat([x[:, 0, 0], x[:, 1, 0], x[:, 0, 1], x[:, 1, 1]], dim=-1)
    assert torch.equal(y[:, 0, 0], expected)
    odd = PatchMerge2D()(x[:, :3, :5])  # zero-padded at the bottom / right
    assert odd.shape == (2, 2, 3, 12)
    assert torch.equal(odd[:, 1, 2, 3:], torch.zeros(2, 9))


def _reference_ss2d_v0(op: SS2DV0, x: torch.Tensor) -> torch.Tensor:
    """SS2D v0 written out step by step as the official ``forwardv0`` (einsum projections, explicit cross-scan and
    cross-merge, the sequential reference scan): ``(B, H, W, C) -> (B, H, W, C)``."""
    x, z = F.linear(x, op.in_proj.weight).chunk(2, dim=-1)
    z = F.silu(z)
    x = F.silu(op.conv2d(x.permute(0, 3, 1, 2).contiguous()))
    b, d, h, w = x.shape
    n, r, length = op.d_state, op.dt_rank, h * w
    x_hwwh = torch.stack([x.reshape(b, d, length), x.transpose(2, 3).reshape(b, d, length)], dim=1)
    xs = torch.cat([x_hwwh, x_hwwh.flip(-1)], dim=1)  # (B, 4, D, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, op.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, op.dt_projs_weight)
    out_y = selective_scan_ref(
        xs.reshape(b, -1, length),
        dts.reshape(b, -1, length),
        -torch.exp(op.A_logs),
        Bs,
        Cs,
        op.Ds,
        op.dt_projs_bias.reshape(-1),
        delta_softplus=True,
    ).reshape(b, 4, d, length)
    inv_y = out_y[:, 2:4].flip(-1)
    wh_y = out_y[:, 1].reshape(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    invwh_y = inv_y[:, 1].reshape(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    y = (out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y).transpose(1, 2)  # (B, L, D)
    y = F.layer_norm(y, (d,), op.out_norm.weight, op.out_norm.bias).reshape(b, h, w, d)
    return F.linear(y * z, op.out_proj.weight)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter so that LayerNorm affines, biases, D, ... are off their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.02))


@pytest.mark.parametrize("hw", [(5, 7), (8, 8)])
def test_ss2d_v0_matches_stepwise_reference(hw: tuple[int, int]) -> None:
    op = SS2DV0(d_model=12, d_state=16, ssm_ratio=2.0)
    _randomise(op)
    x = torch.randn(2, *hw, 12)
    with torch.no_grad():
        assert (op(x) - _reference_ss2d_v0(op, x)).abs().max().item() <= 1e-4


def test_vanilla_matches_sequential_scan(monkeypatch) -> None:
    # the whole network, with the vectorised scan replaced by the sequential reference recurrence
    net = VSSM(out_mode="after_downsample", **SMALL_V0).eval()
    _randomise(net, seed=1)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        fast = net(x)
        monkeypatch.setattr(
            vmamba_module,
            "selective_scan",
            lambda u, dl, a, b, c, d, bias, softplus, chunk, use_compiled: selective_scan_ref(
                u, dl, a, b, c, d, bias, softplus
            ),
        )
        slow = net(x)
    for a, b in zip(fast, slow):
        assert (a - b).abs().max().item() <= 1e-4


def test_vanilla_loads_official_and_legacy_checkpoints(tmp_path, vanilla: VSSM) -> None:
    sd = fake_official_vanilla_state_dict()
    target = copy.deepcopy(vanilla)
    path = tmp_path / VANILLA_VMAMBA_TINY_CHECKPOINT_NAME
    torch.save({"model": sd, "epoch": 292}, path)
    assert load_vmamba_checkpoint(target, path) == ([], [])
    for key in ("patch_embed.0.weight", "layers.2.blocks.8.op.A_logs", "layers.1.downsample.2.weight"):
        assert torch.equal(target.state_dict()[key], sd[key])

    # the released v0 file uses the key names of the first VMamba code; the official loader renames them
    legacy = to_legacy_keys(fake_official_vanilla_state_dict(seed=3))
    assert "layers.0.blocks.1.self_attention.A_logs" in legacy and "head.weight" in legacy
    assert "layers.2.downsample.reduction.weight" in legacy and "patch_embed.proj.weight" in legacy
    torch.save({"model": legacy}, path)
    assert load_vmamba_checkpoint(target, path) == ([], [])
    renamed = rename_legacy_vmamba_keys(dict(legacy))
    assert sorted(renamed) == sorted(sd)
    for key, value in target.state_dict().items():
        assert torch.equal(value, renamed[key]), key

    # plain load_state_dict renames too (as the official VSSM._load_from_state_dict), also under a prefix
    fresh = copy.deepcopy(vanilla)
    body = {k: v for k, v in legacy.items() if not k.startswith(("norm.", "head."))}
    fresh.load_state_dict(body)  # strict
    assert torch.equal(fresh.state_dict()["layers.3.blocks.1.norm.bias"], renamed["layers.3.blocks.1.norm.bias"])
    wrapper = torch.nn.Module()
    wrapper.teacher = copy.deepcopy(vanilla)
    wrapper.load_state_dict({f"teacher.{k}": v for k, v in body.items()})
    assert torch.equal(wrapper.teacher.state_dict()["patch_embed.2.weight"], renamed["patch_embed.2.weight"])


def test_vanilla_factory_loads_weights(tmp_path) -> None:
    sd = fake_official_vanilla_state_dict(seed=4)
    path = tmp_path / "v0.pth"
    torch.save({"model": to_legacy_keys(sd)}, path)
    net = vanilla_vmamba_tiny(weights=str(path))
    key = "layers.2.blocks.3.op.dt_projs_bias"
    assert torch.equal(net.state_dict()[key], sd[key])


def test_vanilla_missing_checkpoint_raises(tmp_path) -> None:
    path = tmp_path / "nowhere" / "v0.pth"
    with pytest.raises(FileNotFoundError, match=VANILLA_VMAMBA_TINY_CHECKPOINT_NAME) as err:
        vanilla_vmamba_tiny(weights=path)
    assert str(path) in str(err.value) and VANILLA_VMAMBA_TINY_CHECKPOINT_URL in str(err.value)
    assert VANILLA_VMAMBA_TINY_CHECKPOINT_URL.endswith("/%23v0cls/" + VANILLA_VMAMBA_TINY_CHECKPOINT_NAME)


def test_vanilla_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="out_mode"):
        vanilla_vmamba_tiny(out_mode="after")
    with pytest.raises(ValueError, match="mlp_ratio"):
        VSSM(**{**SMALL_V0, "mlp_ratio": 4.0})
    with pytest.raises(ValueError, match="with_out_norm"):
        VSSM(out_mode="after_downsample", with_out_norm=True, **SMALL_V0)
    with pytest.raises(ValueError, match="forward_type"):
        VSSM(forward_type="v2")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), with_out_norm=True),  # v05_noz
        dict(**SMALL_V0, out_mode="after_downsample"),
        dict(**SMALL_V0, out_mode="before_downsample", with_out_norm=True),
    ],
    ids=["v05_outnorm", "v0_after_downsample", "v0_before_downsample_outnorm"],
)
def test_script_matches_eager(kwargs: dict) -> None:
    # narrow VSSMs (same code paths, outnorms included) keep scripting cheap; input size differs from any trace
    net = VSSM(**kwargs).eval()
    _randomise(net, seed=2)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent torch, but still supported
        scripted = torch.jit.script(net)
        out = scripted(x)
        eager = net(x)
    assert len(out) == len(eager) == 4
    for a, b in zip(out, eager):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5
