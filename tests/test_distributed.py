"""tinyllm_lib.distributed: real 2-process torchrun jobs (gloo, CPU) against one process, a killed rank
that resumes from its checkpoint, and the errors that say what to change."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tinyllm_lib.checkpoint import load_checkpoint
from tinyllm_lib.data import prepare_data
from tinyllm_lib.distributed import (
    Distributed,
    LaunchError,
    gradient_buckets,
    init_distributed,
    launch,
    ring_allreduce_bytes,
)
from tinyllm_lib.model import GPTConfig
from tinyllm_lib.train import main
from tinyllm_lib.trainer import TrainConfig, Trainer

HERE = Path(__file__).parent
GRAD_TOLERANCE = 1e-6  # (a) one backward: the same sums in another order
# (b) float64 parameters after every one of 5 AdamW steps at lr 1e-2. Adam divides each gradient by its
# own running RMS, which magnifies rounding in components whose gradient is nearly zero; in float64 that
# still leaves agreement near 1e-14, while each broken wrapper is off by more than 1e-3 from the first step.
PARAM_TOLERANCE = 1e-9
BUG_SCORE = 1e-4  # a broken wrapper must differ by at least this much after 5 steps
CORRECT = ("torch DDP", "per-parameter", "bucketed", "overlapped")
BROKEN = ("bug: no division by world size", "bug: no_sync on every micro-batch")
TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n\n") * 60
TINY = ["--vocab_size", "90", "--d_model", "32", "--n_layers", "1", "--n_heads", "2", "--d_ff", "64",
        "--context_length", "32", "--batch_size", "4", "--warmup_iters", "2", "--eval_iters", "2",
        "--log_interval", "1", "--dtype", "float32", "--device", "cpu"]


@pytest.mark.parametrize("world_size", [2, 3])
def test_data_parallel_matches_one_process_and_a_broken_wrapper_does_not(world_size):
    """(a) gradients after one backward and (b) float64 parameters after every AdamW step, with
    accumulation, tied weights and a frozen parameter: torch DDP and our three wrappers agree with one
    process; the same comparison fails two broken wrappers by many orders of magnitude."""
    out = launch(str(HERE / "ddp_equivalence.py"), nproc=world_size, timeout=300, show=False)
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    print(json.dumps(result, indent=1))
    assert result["world_size"] == world_size and result["accumulation"] == 2 and result["steps"] == 5
    assert set(result["grads"]) == {*CORRECT, *BROKEN}
    for name in CORRECT:
        assert result["grads"][name] < GRAD_TOLERANCE, (name, result["grads"][name])
        assert max(result["params"][name]) < PARAM_TOLERANCE, (name, result["params"][name])
        assert result["ranks_equal"][name], name  # the replicas did not drift apart
    for name in BROKEN:  # what a bug scores under the same comparison
        print(f"{world_size} ranks, {name}: max |parameter difference| per step {result['params'][name]}")
        assert result["params"][name][-1] > BUG_SCORE, (name, result["params"][name])
        assert min(result["params"][name]) > 1e3 * PARAM_TOLERANCE, (name, result["params"][name])
    assert result["grads"]["bug: no division by world size"] > BUG_SCORE  # W times the mean
    assert not result["ranks_equal"]["bug: no_sync on every micro-batch"]  # nothing keeps them together
    # the overlapped wrapper sent every bucket during backward, before anything waited for it
    assert result["buckets"]["overlapped"] > 3
    assert result["unused_parameter_ok"]  # a parameter backward never reached: zeros, and no hang
    assert result["in_flight_at_finish"] and all(n == result["buckets"]["overlapped"]
                                                 for n in result["in_flight_at_finish"]), result


def worker_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=`rank` among the children of `parent` (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"RANK={rank}\0".encode() in (stat.parent / "environ").read_bytes():
                return int(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc (Linux)")
def test_a_killed_rank_stops_the_job_and_the_run_resumes(tmp_path):
    (tmp_path / "play.txt").write_text(TEXT, encoding="utf-8")
    common = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tinyllm_lib.train",
              "--data", str(tmp_path / "play.txt"), "--out_dir", str(tmp_path / "out"),
              "--cache_dir", str(tmp_path / "cache"), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    latest = tmp_path / "out" / "latest.pt"
    log = (tmp_path / "log.txt").open("w")
    job = subprocess.Popen([sys.executable, *common, "--max_iters", "100000", "--eval_interval", "2"],
                           stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while not (latest.exists() and load_checkpoint(latest)["step"] >= 2):  # atomic: never half a file
            assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "log.txt").read_text()[-3000:]
            time.sleep(0.2)
        victim = worker_pid(job.pid, rank=1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        assert job.wait(timeout=120) != 0  # torchrun stops the other rank and reports the failure
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    step = load_checkpoint(latest)["step"]  # still loadable
    assert step >= 2

    done = subprocess.run([sys.executable, *common, "--resume", "--max_iters", str(step + 2)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"resuming from {latest} at step {step}" in done.stdout
    state = load_checkpoint(latest)
    assert state["step"] == step + 2 and len(state["rng"]) == 2


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment a rank of a 2-process torchrun job sees (no process group is started)."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_world_size_without_a_rendezvous_says_to_use_torchrun(torchrun_env):
    torchrun_env.delenv("MASTER_ADDR")
    torchrun_env.delenv("MASTER_PORT")
    with pytest.raises(ValueError, match="WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT not set: start the job "
                                         "with torchrun .* or unset WORLD_SIZE"):
        init_distributed("cpu")


def test_an_unreachable_backend_names_the_address_and_what_to_check(torchrun_env):
    def refuse(**kwargs):
        raise RuntimeError("Connection refused")

    torchrun_env.setattr(dist, "init_process_group", refuse)
    with pytest.raises(ValueError, match=r"rank 1 could not join the gloo process group at 127\.0\.0\.1:29555 "
                                         r"\(Connection refused\); check .*--rdzv-endpoint"):
        init_distributed("cpu")


def test_more_processes_than_gpus(torchrun_env):
    torchrun_env.setattr(torch.cuda, "is_available", lambda: True)
    torchrun_env.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1 but this machine has 1 GPU\(s\): start at most 1 "
                                         r"processes per machine \(--nproc_per_node 1\), or add --device cpu"):
        init_distributed()


def test_a_batch_that_does_not_divide_into_the_ranks(torchrun_env, tmp_path, capsys):
    assert Distributed(rank=0, world_size=2).shard_batch_size(6) == 3
    with pytest.raises(ValueError, match=r"--batch_size 5 does not divide into 2 processes: use a multiple of 2 "
                                         r"\(e\.g\. 4 or 6\)"):
        Distributed(rank=0, world_size=2).shard_batch_size(5)
    data = prepare_data(TEXT, 90, tmp_path / "cache", name="play")
    cfg = GPTConfig.preset("tiny", vocab_size=90, d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=32)
    with pytest.raises(ValueError, match="--batch_size 3 does not divide into 2 processes"):
        Trainer(cfg, TrainConfig(batch_size=3, out_dir=str(tmp_path / "t")), data, "cpu", Distributed(1, 1, 2))
    # the command line fails before any data work, and writes nothing
    torchrun_env.setattr(dist, "init_process_group", lambda **kwargs: None)
    (tmp_path / "play.txt").write_text(TEXT, encoding="utf-8")
    argv = ["--data", str(tmp_path / "play.txt"), "--out_dir", str(tmp_path / "out"), *TINY]
    argv[argv.index("--batch_size") + 1] = "5"
    assert main(argv) == 2
    assert "error: --batch_size 5 does not divide into 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_single_process_helpers_change_nothing():
    one = Distributed()
    t = torch.arange(3.0)
    assert one.sum(t) is t and t.tolist() == [0.0, 1.0, 2.0]
    assert one.gather({"a": 1}) == [{"a": 1}] and one.any(True) and not one.any(False)
    model = torch.nn.Linear(2, 2)
    assert one.wrap(model, torch.device("cpu")) is model
    with one.master_first(), one.no_sync(model, sync=False):
        one.barrier()
    assert [one.owns(i) for i in range(3)] == [True, True, True]
    assert [Distributed(1, 1, 2).owns(i) for i in range(4)] == [False, True, False, True]


def test_buckets_and_the_ring_formula():
    grads = [torch.zeros(n) for n in (10, 10, 50, 10)]  # 40, 40, 200, 40 bytes
    assert [[g.numel() for g in b] for b in gradient_buckets(grads, bucket_bytes=100)] == [[10, 10], [50], [10]]
    assert ring_allreduce_bytes(1000, 2) == 1000 and ring_allreduce_bytes(1000, 8) == 1750


def test_a_failed_launch_raises_with_its_last_lines(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import os, sys\nprint('rank', os.environ['RANK'], 'starting', flush=True)\nsys.exit(3)\n")
    with pytest.raises(LaunchError, match="exited with code 1"):
        launch(str(script), nproc=1, timeout=120, show=False)
    script.write_text("import time\ntime.sleep(60)\n")
    started = time.monotonic()
    with pytest.raises(LaunchError, match="stopped after the 3 s timeout"):
        launch(str(script), nproc=1, timeout=3, show=False)
    assert time.monotonic() - started < 30


def test_shutdown_with_an_exit_code_flushes_and_ends_the_process_at_once():
    """A worker's last call: its printed output arrives, its code is the exit status, and nothing after it runs
    (not even atexit handlers: the interpreter's teardown, where gloo can abort a finished rank, is skipped)."""
    script = ("import atexit, sys\n"
              "from tinyllm_lib.distributed import shutdown\n"
              "atexit.register(lambda: print('teardown ran'))\n"
              "print('result', end='')\n"
              "sys.stderr.write('note')\n"
              "shutdown(exit_code=3)\n"
              "print('after shutdown')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (3, "result", "note")
