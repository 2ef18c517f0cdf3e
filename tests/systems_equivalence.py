"""Run by tests/test_systems.py under torchrun (gloo, CPU): ZeRO-1 and FSDP2 against DDP + AdamW.

A GPT with tied weights (and an odd number of parameters, so that ZeRO pads its last shard), float64,
4 AdamW steps with weight decay on the matrices only; every rank trains on its own data. Prints RESULT {name: max |parameter difference| with DDP after each step}.
"""
import json

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from tinyllm_lib.distributed import init_distributed, shutdown
from tinyllm_lib.model import GPT, GPTConfig, lm_loss
from tinyllm_lib.optim import configure_optimizer
from tinyllm_lib.systems import ZeroAdamW, checkpoint_blocks, fsdp_wrap

info, _ = init_distributed("cpu")
STEPS, LR, WD = 4, 1e-2, 0.1
cfg = GPTConfig(vocab_size=63, context_length=16, d_model=32, n_layers=3, n_heads=4, d_ff=63, dropout=0.0)
data = torch.randint(0, 63, (STEPS, 4, 17), generator=torch.Generator().manual_seed(100 + info.rank))


def fresh():
    torch.manual_seed(0)  # the same start on every rank
    return GPT(cfg).double()


def groups(model):
    return configure_optimizer(model, LR, WD).param_groups  # decay on matrices only, as the trainer


def flat(model):
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    return torch.cat([p.detach().reshape(-1) for p in params])


def train(model, optimizer, forward):
    after = []
    for step in range(STEPS):
        lm_loss(forward(data[step, :, :-1]), data[step, :, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after.append(flat(model).clone())
    return after


class NoGather(ZeroAdamW):  # a planted bug: each rank updates its shard but never receives the others
    def all_gather_shards(self, flat):
        pass


ddp_model = fresh()
ddp = DDP(ddp_model)
reference = train(ddp_model, torch.optim.AdamW(groups(ddp_model), lr=LR, betas=(0.9, 0.99), foreach=False),
                  ddp)

zero_model = fresh()
zero = ZeroAdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups(zero_model)],
                 lr=LR, betas=(0.9, 0.99))
got = {"zero1": train(zero_model, zero, zero_model)}
state = {"zero1": zero.state_bytes(), "adamw": 2 * 8 * zero_model.num_params()}

fsdp_model = fsdp_wrap(fresh())
got["fsdp2"] = train(fsdp_model, torch.optim.AdamW(groups(fsdp_model), lr=LR, betas=(0.9, 0.99), foreach=False),
                     fsdp_model)

both_model = fsdp_wrap(checkpoint_blocks(fresh()))  # FSDP2 over activation-checkpointed blocks
got["fsdp2 + checkpointing"] = train(both_model, torch.optim.AdamW(groups(both_model), lr=LR, betas=(0.9, 0.99),
                                                                   foreach=False), both_model)

bug_model = fresh()
got["bug: no all-gather"] = train(bug_model, NoGather(bug_model.parameters(), lr=LR, betas=(0.9, 0.99)), bug_model)

result = {name: [(a - b).abs().max().item() for a, b in zip(after, reference)] for name, after in got.items()}
gathered = [None] * info.world_size
dist.all_gather_object(gathered, flat(zero_model))
result["zero1 ranks equal"] = all(torch.equal(gathered[0], g) for g in gathered)
result["tied"] = zero_model.lm_head.weight is zero_model.tok_emb.weight
result["numel"] = zero_model.num_params()  # odd: the last shard is padded
# FSDP2 really shards: each rank holds a part of every parameter's rows
result["fsdp_local_fraction"] = (sum(p.to_local().numel() for p in fsdp_model.parameters())
                                 / sum(p.numel() for p in fsdp_model.parameters()))
result["state_bytes"] = state
if info.master:
    print("RESULT " + json.dumps(result), flush=True)
info.barrier()
shutdown(exit_code=0)
