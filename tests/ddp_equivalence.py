"""One optimizer step's loss and gradients, in one process on the global batch or under torchrun on its shards.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_equivalence.py --stage jtcse --out f.pt

Used by tests/test_distributed.py: tiny float64 BERTs (dropout 0), a fixed global batch of 6 sentences; each rank
takes its slice, wraps the model in DDP, computes the stage's objective from jtcse_lib.losses, backpropagates, and
rank 0 saves the global loss (the mean of the ranks' losses) and every parameter's gradient (DDP's average).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jtcse_lib import distributed  # noqa: E402
from jtcse_lib.losses import TwinWeights, distill_objective, simcse_objective, twin_objective  # noqa: E402
from jtcse_lib.model import TwinTower  # noqa: E402

SENTENCES, LENGTH, VOCAB = 6, 7, 50


def tiny(seed: int) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertModel(config).double()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (SENTENCES, LENGTH), generator=g)
    lengths = torch.tensor([7, 5, 6, 3, 7, 4])  # some padding: each rank pads its own shard
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def step(stage: str) -> dict:
    """The stage's loss on this process's shard, backpropagated; returns the global loss and the gradients."""
    rank, world = distributed.rank(), distributed.world_size()
    ids, mask = global_batch()
    b = SENTENCES // world
    ids, mask = ids[rank * b:(rank + 1) * b], mask[rank * b:(rank + 1) * b]
    batch = {"input_ids": ids.repeat(2, 1), "attention_mask": mask.repeat(2, 1)}  # rows [view1; view2]
    if stage in ("tncse", "jtcse"):
        model = TwinTower(tiny(1), tiny(2), 1 if stage == "jtcse" else 0)
    else:
        model = tiny(1)
        model.pooler.requires_grad_(False)  # unused by these objectives (the Trainer freezes it too)
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model)
    if stage in ("tncse", "jtcse"):
        out = wrapped(**batch, with_cross=stage == "jtcse")
        loss, _ = twin_objective(**vars(out), weights=TwinWeights(), b_to_a=stage == "jtcse")
    elif stage == "distill":
        teacher = TwinTower(tiny(3), tiny(4), 0).requires_grad_(False)
        with torch.no_grad():
            t = teacher(**{k: v[:b] for k, v in batch.items()}, with_cross=False)
        cls = wrapped(**batch).last_hidden_state[:, 0]
        loss, _ = distill_objective(cls, t.cls_a + t.cls_b, alpha=1.0)
    else:
        loss, _ = simcse_objective(wrapped(**batch).last_hidden_state[:, 0])
    loss.backward()
    return {"loss": distributed.mean(loss).item(),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", required=True, choices=("simcse", "tncse", "jtcse", "distill"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed.setup(torch.device("cpu"))
    result = step(args.stage)
    if distributed.is_main():
        torch.save(result, args.out)
    distributed.cleanup()


if __name__ == "__main__":
    main()
