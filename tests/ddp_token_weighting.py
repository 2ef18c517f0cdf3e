"""Run by tests/test_token_weighting.py under `torchrun --nproc_per_node=2`: the Trainer on padded,
answer-masked pairs whose shards hold different numbers of targets, against one process.

Every rank also trains the single-process reference itself (the whole batch), so the comparison needs
no files. In float64, where gloo allows it. Rank 0 prints one `RESULT {json}` line.
"""

import json
import tempfile

import torch
from ragged_pairs import MODEL, RaggedPairs, ragged_examples, step_gradients

from tinyllm_lib.distributed import Distributed, init_distributed, shutdown
from tinyllm_lib.trainer import TrainConfig, Trainer

B, STEPS = 8, 5
torch.set_default_dtype(torch.float64)  # before any model is built: DDP's buckets take this dtype
info, device = init_distributed("cpu")
examples = ragged_examples(B * STEPS)
out = tempfile.mkdtemp()


def trainer(dist_info, k=1):
    cfg = TrainConfig(batch_size=B // k, grad_accumulation_steps=k, max_iters=STEPS, warmup_iters=0, lr=1e-2,
                      min_lr=1e-3, grad_clip=0.0, dtype="float32", out_dir=out)  # float32 = no autocast
    data = RaggedPairs(examples, B // k, dist_info.world_size, dist_info.rank)
    return Trainer(MODEL, cfg, data, device="cpu", dist_info=dist_info)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


reference = trainer(Distributed())  # one process, B pairs a step
ref_grads = step_gradients(reference)
ref_losses = [reference.train_step()[0].item() for _ in range(STEPS)]
result = {"world_size": info.world_size, "targets": [int((y != -100).sum()) for _, y in examples[:B]]}
for name, k in (("shards", 1), ("shards with accumulation", 2)):
    mine = trainer(info, k)
    grads = step_gradients(mine)
    losses = [mine._guard(loss=mine.train_step()[0]) for _ in range(STEPS)]  # the logged mean over ranks
    result[name] = {"grads": max_diff(grads[0], ref_grads[0]),
                    "params": max_diff(mine.raw_model.parameters(), reference.raw_model.parameters()),
                    "loss": max(abs(a - b) for a, b in zip(losses, ref_losses))}
if info.master:
    print("RESULT " + json.dumps(result), flush=True)
info.barrier()
shutdown(exit_code=0)  # skip the interpreter's teardown, where gloo can abort a finished rank
