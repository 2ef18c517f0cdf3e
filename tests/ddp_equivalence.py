"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=W`: data parallel vs one process.

Every rank also computes the single-process reference (the whole batch, one model) itself, so the
comparison needs no files. Everything runs in float64 (gloo all-reduces it), so that a correct wrapper
agrees with one process to about 1e-12 and a bug stands out by ten orders of magnitude. Two broken
wrappers are run through the same comparison, to show what a bug scores. Rank 0 prints one
`RESULT {json}` line with the largest differences.
"""

import contextlib
import copy
import json

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from tinyllm_lib.distributed import DataParallel, OverlappedDataParallel, init_distributed, shutdown
from tinyllm_lib.model import GPT, GPTConfig
from tinyllm_lib.optim import configure_optimizer

B, T, STEPS, ACCUMULATION = 12, 16, 5, 2  # B divides into 2, 3 and 4 ranks
info, device = init_distributed("cpu")
torch.set_default_dtype(torch.float64)
cfg = GPTConfig.preset("tiny", vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, context_length=T,
                       dropout=0.0)  # dropout off: random masks would differ between the two set-ups
assert cfg.tie_weights
torch.manual_seed(0)
reference = GPT(cfg).double()  # the single process
reference.blocks[0].ln1.weight.requires_grad_(False)  # a frozen parameter: no hook, never waited for
initial = copy.deepcopy(reference)  # rank 0's replicas start from these weights
batches = torch.randint(0, 64, (STEPS * ACCUMULATION, B, T + 1), generator=torch.Generator().manual_seed(0))
mine = slice(info.rank * B // info.world_size, (info.rank + 1) * B // info.world_size)  # this rank's rows


def loss_fn(model, batch):  # lm_loss computes in float32: here the float64 cross-entropy
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


class Recording(OverlappedDataParallel):
    """The overlapped wrapper, counting the buckets already in flight when backward ends."""

    def finish_gradient_sync(self):
        if self.armed:
            in_flight_at_finish.append(len(self.in_flight))
        super().finish_gradient_sync()


in_flight_at_finish = []


class NoDivision(OverlappedDataParallel):
    """Bug 1: sums the gradients and forgets to divide by the world size."""

    def __init__(self, module, bucket_bytes):
        super().__init__(module, bucket_bytes)
        self.world = 1


WRAPPERS = {
    "torch DDP": lambda m: info.wrap(m, device),
    "per-parameter": lambda m: DataParallel(m, bucket_bytes=None),
    "bucketed": lambda m: DataParallel(m, bucket_bytes=4096),
    "overlapped": lambda m: Recording(m, bucket_bytes=4096),  # several buckets
    "bug: no division by world size": lambda m: NoDivision(m, bucket_bytes=4096),
    "bug: no_sync on every micro-batch": lambda m: OverlappedDataParallel(m, bucket_bytes=4096),
}


def replica(wrapper: str):
    """A copy of the model whose weights differ per rank until the wrapper broadcasts rank 0's."""
    model = copy.deepcopy(initial)
    if info.rank:
        torch.manual_seed(info.rank)
        for p in model.parameters():
            p.data.normal_()
    return WRAPPERS[wrapper](model), model


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b) if x is not None)


def worst_over_ranks(value: float) -> float:
    return max(info.gather(value))


# (a) gradients after one backward: W ranks x B/W windows against 1 process x B windows
loss_fn(reference, batches[0]).backward()
ref_grads = [p.grad.clone() if p.grad is not None else None for p in reference.parameters()]
reference.zero_grad(set_to_none=True)
grads, buckets = {}, {}
for wrapper in WRAPPERS:
    wrapped, model = replica(wrapper)
    loss_fn(wrapped, batches[0, mine]).backward()
    if not isinstance(wrapped, DDP):
        wrapped.sync_gradients()  # the overlapped wrapper has already finished at the end of backward
    assert model.blocks[0].ln1.weight.grad is None  # the frozen parameter
    grads[wrapper] = worst_over_ranks(max_diff([p.grad for p in model.parameters()], ref_grads))
    if isinstance(wrapped, OverlappedDataParallel):
        buckets[wrapper] = len(wrapped.buckets)


# (b) parameters after every one of STEPS AdamW steps, ACCUMULATION micro-batches each
def train(model, wrapped, never_sync=False):
    """Train; yield the parameters after each optimizer step."""
    optimizer = configure_optimizer(model, lr=1e-2, weight_decay=0.1)
    rows = slice(None) if wrapped is model else mine
    for step in range(STEPS):
        for micro in range(ACCUMULATION):
            batch = batches[step * ACCUMULATION + micro, rows]
            last = micro == ACCUMULATION - 1
            keep_local = hasattr(wrapped, "no_sync") and (never_sync or not last)  # DDP and the overlapped wrapper
            with wrapped.no_sync() if keep_local else contextlib.nullcontext():  # around forward and backward
                (loss_fn(wrapped, batch) / ACCUMULATION).backward()
            if last and isinstance(wrapped, DataParallel):
                wrapped.sync_gradients()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        yield [p.detach().clone() for p in model.parameters()]


trajectory = list(train(reference, reference))  # the reference's parameters after each step
params, ranks_equal = {}, {}
for wrapper in WRAPPERS:
    wrapped, model = replica(wrapper)
    steps = train(model, wrapped, never_sync="no_sync on every" in wrapper)
    params[wrapper] = [worst_over_ranks(max_diff(now, ref)) for now, ref in zip(steps, trajectory)]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # the replicas must not drift apart
    ranks_equal[wrapper] = all(torch.equal(flat, other) for other in info.gather(flat))
# (c) a parameter this backward never reaches: its bucket is sent at the end of backward, with zeros
torch.manual_seed(0)
small = torch.nn.Linear(4, 3)
small.unused = torch.nn.Parameter(torch.ones(5))
wrapped = OverlappedDataParallel(small, bucket_bytes=16)  # several small buckets
wrapped(torch.full((2, 4), float(info.rank + 1))).sum().backward()
expected_weight = torch.full((3, 4), (1 + info.world_size) / 2 * 2)  # mean over ranks of 2 rows of (rank + 1)
unused_ok = all(info.gather(torch.equal(small.unused.grad, torch.zeros(5))
                            and torch.allclose(small.weight.grad, expected_weight)))  # on every rank

if info.master:
    print("RESULT " + json.dumps({"grads": grads, "params": params, "ranks_equal": ranks_equal, "buckets": buckets,
                                  "in_flight_at_finish": in_flight_at_finish,
                                  "unused_parameter_ok": unused_ok,
                                  "steps": STEPS, "accumulation": ACCUMULATION, "world_size": info.world_size}),
          flush=True)
info.barrier()  # leave together
shutdown(exit_code=0)  # skip the interpreter's teardown, where gloo can abort a finished rank
