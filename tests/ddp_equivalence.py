"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=2`: data parallel vs one process.

Every rank also computes the single-process reference (the whole batch, one model) itself, so the
comparison needs no files. Rank 0 prints one `RESULT {json}` line with the largest differences.
"""

import contextlib
import copy
import json

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from tinyllm_lib.distributed import DataParallel, init_distributed, shutdown
from tinyllm_lib.model import GPT, GPTConfig, lm_loss
from tinyllm_lib.optim import configure_optimizer

B, T, STEPS, ACCUMULATION = 8, 16, 5, 2
info, device = init_distributed("cpu")
cfg = GPTConfig.preset("tiny", vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, context_length=T,
                       dropout=0.0)  # dropout off: random masks would differ between the two set-ups
assert cfg.tie_weights
torch.manual_seed(0)
reference = GPT(cfg)  # the single process
initial = copy.deepcopy(reference)  # rank 0's replicas start from these weights
batches = torch.randint(0, 64, (STEPS * ACCUMULATION, B, T + 1), generator=torch.Generator().manual_seed(0))
mine = slice(info.rank * B // info.world_size, (info.rank + 1) * B // info.world_size)  # this rank's rows


def replica(wrapper: str):
    """A copy of the model whose weights differ per rank until the wrapper broadcasts rank 0's."""
    model = copy.deepcopy(initial)
    if info.rank:
        torch.manual_seed(info.rank)
        for p in model.parameters():
            p.data.normal_()
    if wrapper == "torch DDP":
        return info.wrap(model, device), model
    return DataParallel(model, bucket_bytes=None if wrapper == "per-parameter" else 4096), model


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# (a) gradients after one step: 2 ranks x B/2 windows against 1 process x B windows
x, y = batches[0, :, :-1], batches[0, :, 1:]
lm_loss(reference(x), y).backward()
ref_grads = [p.grad.clone() for p in reference.parameters()]
reference.zero_grad(set_to_none=True)
grads = {}
for wrapper in ("torch DDP", "per-parameter", "bucketed"):
    wrapped, model = replica(wrapper)
    lm_loss(wrapped(x[mine]), y[mine]).backward()
    if wrapper != "torch DDP":
        wrapped.sync_gradients()
    grads[wrapper] = max_diff([p.grad for p in model.parameters()], ref_grads)


# (b) parameters after STEPS AdamW steps, ACCUMULATION micro-batches each, gradients synced on the last only
def train(model, wrapped) -> None:
    optimizer = configure_optimizer(model, lr=1e-2, weight_decay=0.1)
    rows = slice(None) if wrapped is model else mine
    for step in range(STEPS):
        for micro in range(ACCUMULATION):
            batch = batches[step * ACCUMULATION + micro]
            last = micro == ACCUMULATION - 1
            local = wrapped.no_sync() if isinstance(wrapped, DDP) and not last else contextlib.nullcontext()
            with local:  # torch DDP: no all-reduce inside no_sync(), the gradients just add up locally
                (lm_loss(wrapped(batch[rows, :-1]), batch[rows, 1:]) / ACCUMULATION).backward()
            if last and isinstance(wrapped, DataParallel):
                wrapped.sync_gradients()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


train(reference, reference)
params, ranks_equal = {}, {}
for wrapper in ("torch DDP", "bucketed"):
    wrapped, model = replica(wrapper)
    train(model, wrapped)
    params[wrapper] = max_diff(model.parameters(), reference.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # the replicas must not drift apart
    ranks_equal[wrapper] = all(torch.equal(flat, other) for other in info.gather(flat))
if info.master:
    print("RESULT " + json.dumps({"grads": grads, "params": params, "ranks_equal": ranks_equal, "steps": STEPS, "accumulation": ACCUMULATION,
                                  "world_size": info.world_size}), flush=True)
info.barrier()  # leave together
shutdown(exit_code=0)  # skip the interpreter's teardown, where gloo can abort a finished rank
