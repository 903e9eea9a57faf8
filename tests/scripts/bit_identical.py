"""Show that a refactoring keeps training results bit-identical: train a bundle's default config with the same seed
at two git revisions and compare every tensor of the two ``model.pt`` files exactly.

    python tests/scripts/bit_identical.py --base HEAD~1 --bundle pdd --override epochs=1
    python tests/scripts/bit_identical.py --base main --head WORKTREE --bundle ddad --override epochs=2 asr_epochs=1
    python tests/scripts/bit_identical.py --base WORKTREE --bundle pdd --override epochs=2 \
        --head_override teacher_cache=true

Each revision is checked out in its own temporary git worktree (``--head WORKTREE``: the working tree as it is, with its
uncommitted changes; with both WORKTREE the same tree trains twice, to compare an option: ``--head_override``), and
trains there with ``python -m monai.bundle run training`` on the bundle's own configs (the demo data of
``$MEDAD_MONAI_DATA``, shared by both). Exit status 0 when every tensor is equal, 1 otherwise (the differing tensors are
listed with their largest difference).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _checkout(revision: str, dest: Path) -> Path:
    if revision == "WORKTREE":
        return REPO
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(dest), revision], check=True)
    return dest


def _train(tree: Path, bundle: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    root = tree / "bundles" / bundle
    with tempfile.TemporaryDirectory() as models:
        cmd = [
            sys.executable, "-m", "monai.bundle", "run", "training",
            "--config_file", str(root / "configs" / "train.json"),
            "--bundle_root", str(root), "--ckpt_dir", models, "--output_dir", str(Path(models) / "eval"),
        ]  # fmt: skip
        for item in overrides:
            key, _, value = item.partition("=")
            cmd += [f"--{key}", value]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(cmd, check=True, cwd=tree, env=env)
        return torch.load(Path(models) / "model.pt", map_location="cpu", weights_only=True)


def compare(base: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors that differ (or exist in one state dict only), with the largest difference."""
    differ = [f"{k}: only in one model" for k in sorted(set(base) ^ set(head))]
    for key in sorted(set(base) & set(head)):
        a, b = base[key], head[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            differ.append(f"{key}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
        elif not torch.equal(a, b) and not (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and
                                            torch.equal(a.nan_to_num(), b.nan_to_num())):  # fmt: skip
            diff = (a.double() - b.double()).abs().max().item()
            differ.append(f"{key}: max |difference| {diff:.3g}")
    return differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision of the reference")
    parser.add_argument("--head", default="WORKTREE", help="git revision to compare (default: the working tree)")
    parser.add_argument("--bundle", required=True, choices=["ddad", "d24fad", "pdd"])
    parser.add_argument("--override", nargs="*", default=[], help="config overrides key=value for both runs")
    parser.add_argument("--head_override", nargs="*", default=[], help="further overrides for the head run only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = [_checkout(rev, Path(tmp) / name) for rev, name in ((args.base, "base"), (args.head, "head"))]
        # (both WORKTREE: one tree, trained twice)
        try:
            base = _train(trees[0], args.bundle, args.override)
            head = _train(trees[1], args.bundle, args.override + args.head_override)
        finally:
            for tree in trees:
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    differ = compare(base, head)
    head_name = " ".join([args.head, *args.head_override])
    print(f"{args.bundle}: {len(base)} tensors; {len(differ)} differ between {args.base} and {head_name}")
    for line in differ:
        print("  " + line)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
