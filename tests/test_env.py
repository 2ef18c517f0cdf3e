"""Quick mode, device choice and the environment check (tinyllm_lib.env, exported by chapter 00)."""

import subprocess
import sys

import torch

from tinyllm_lib import env


def _quick_in_subprocess(value: str | None) -> str:
    code = "from tinyllm_lib.env import QUICK, quick; print(QUICK, quick(2000, 20))"
    environ = {k: v for k, v in __import__("os").environ.items() if k != "TINYLLM_QUICK"}
    if value is not None:
        environ["TINYLLM_QUICK"] = value
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_quick_mode_switch():
    assert _quick_in_subprocess("1") == "True 20"
    assert _quick_in_subprocess("0") == "False 2000"
    assert _quick_in_subprocess(None) == "False 2000"


def test_pick_device_order_and_override(monkeypatch):
    monkeypatch.delenv("TINYLLM_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert env.pick_device().type == expected
    assert env.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("TINYLLM_DEVICE", "cpu")
    assert env.pick_device() == torch.device("cpu")


def test_version_parsing():
    assert env._version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert env._version_tuple("2.4.0rc1") == (2, 4, 0)
    assert env._version_tuple("2.13.0") >= env._version_tuple("2.4")


def test_environment_check_runs_as_a_command():
    result = subprocess.run([sys.executable, "-m", "tinyllm_lib.env"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("[OK] torch >= ") for line in lines)
    assert any("device (CUDA -> MPS -> CPU)" in line for line in lines)
    assert all(line.startswith(("[OK]", "[FAIL]", "all good", "1 requirement")) for line in lines)
