"""Multi-process training (``multi_gpu_train.json``) on CPU with the gloo backend: the gradient averaging against a
single-process reference, and every bundle trained by ``torchrun`` with two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.engines import SupervisedTrainer
from torch import nn

from medad_monai.distributed import init_distributed, is_rank_zero, world_size
from medad_monai.handlers.distributed import GradientAllReduce, distributed_handlers

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, LR = 3, 4, 0.1


def _data(rank: int) -> list[dict[str, torch.Tensor]]:
    """Batches of rank ``rank``: different data on each rank."""
    g = torch.Generator().manual_seed(100 + rank)
    return [
        {"image": torch.randn(BATCH, 3, generator=g), "label": torch.randn(BATCH, 1, generator=g)} for _ in range(STEPS)
    ]


def _trainer(net: nn.Module, data: list, handlers: list) -> SupervisedTrainer:
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=LR),
        loss_function=nn.MSELoss(),
        train_handlers=handlers,
    )


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different initial weights: rank 0's must be broadcast at the start
    net = nn.Linear(3, 1)
    _trainer(net, _data(rank), distributed_handlers([], net)).run()
    torch.save(net.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_gradient_averaging_equals_training_on_the_global_batch(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k  # the replicas stay identical
    # reference: one process, rank 0's initial weights, each step on the union of the ranks' batches
    torch.manual_seed(0)
    ref = nn.Linear(3, 1)
    shards = [_data(r) for r in range(world)]
    union = [{k: torch.cat([s[i][k] for s in shards]) for k in ("image", "label")} for i in range(STEPS)]
    _trainer(ref, union, []).run()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(states[0][k], v, rtol=1e-5, atol=1e-6)
    # and it really trained with both shards: rank 0's data alone gives other weights
    torch.manual_seed(0)
    alone = nn.Linear(3, 1)
    _trainer(alone, _data(0), []).run()
    assert not torch.allclose(alone.weight, ref.weight, atol=1e-4)


def test_without_a_process_group_everything_is_single_process(monkeypatch):
    assert is_rank_zero() and world_size() == 1
    handlers = [object(), object()]
    kept = distributed_handlers(handlers, nn.Linear(1, 1))
    assert kept[:2] == handlers and isinstance(kept[2], GradientAllReduce)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="launched by torchrun"):
        init_distributed()


# tiny settings per bundle (as the bundle tests use), one short epoch
TINY = {
    "ddad": {"num_members": 2, "network_def#multiplier": 0.25, "epochs": 1, "asr_epochs": 1},
    "d24fad": {"teacher_weights": "random", "epochs": 1, "epoch_length": 2, "batch_size": 2},
    "pdd": {
        "decoder_blocks": [1, 1, 1], "wrn_weights": "random", "vmamba_weights": "random",
        "epochs": 1, "epoch_length": 2, "batch_size": 2,
    },
}  # fmt: skip


def _cli(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(TINY))
def test_multi_gpu_train_config_trains_with_two_processes(bundle, tmp_path):
    """``torchrun --nproc_per_node=2`` with train.json + multi_gpu_train.json (gloo on CPU): both ranks train, rank 0
    alone writes the model, which loads into the bundle's network with a calibrated threshold."""
    configs = REPO / "bundles" / bundle / "configs"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
        "--config_file", f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']",
        "--meta_file", str(configs / "metadata.json"), "--bundle_root", str(tmp_path), *_cli(TINY[bundle]),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert log.count("distributed training: rank") == 2  # both ranks joined the gloo group
    saves = [line for line in log.splitlines() if "saved" in line and "model" in line]
    final = [s for s in saves if "calibration" in s] if bundle == "ddad" else saves
    assert len(final) == 1, saves  # one writer
    written = sorted(p.name for p in (tmp_path / "models").iterdir())  # no temporary files left
    assert written == (["model.pt", "training_report.json"] if bundle == "ddad" else ["model.pt"])
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert torch.isfinite(state["threshold"])
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser.update({"bundle_root": str(tmp_path), **TINY[bundle]})
    parser.get_parsed_content("network_def").load_state_dict(state)  # strict: every key fits
