"""machine.py: the device and the precision, decided in one place."""

import pytest
import torch

import machine
from machine import DeviceError


def test_a_device_asked_for_must_exist(monkeypatch):
    assert machine.pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert machine.pick_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="no CUDA device; use --device cpu or auto"):
        machine.pick_device("cuda")
    with pytest.raises(DeviceError, match="no MPS device"):
        machine.pick_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert machine.pick_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match="2 CUDA device"):
        machine.pick_device("cuda:2")


def test_dtype_is_decided_by_the_gpu(monkeypatch):
    assert machine.pick_dtype("cpu") == torch.float32 and machine.pick_dtype("mps") == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert machine.pick_dtype("cuda") == torch.bfloat16  # A100, H100, RTX 30xx/40xx
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert machine.pick_dtype("cuda") == torch.float16  # T4, V100: fp16 with a GradScaler
    assert machine.pick_dtype("cuda", "float32") == torch.float32
    assert isinstance(machine.autocast_context("cpu", torch.float32), type(__import__("contextlib").nullcontext()))
