"""The one device abstraction: where tensors go, in which precision and memory format.

Everything device-specific (pinned memory, non_blocking copies, autocast, channels_last, the
inference thread) lives here, so the batcher and the models never branch on CPU vs CUDA.
The CUDA path is written for GPUs but only verified on CPU in this project's CI.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Device:
    """A torch device plus how we run on it. One inference thread per device keeps model work
    off the event loop and serialises forward passes (the device is the bottleneck anyway)."""

    torch_device: torch.device
    precision: str = "fp32"
    channels_last: bool = True
    executor: ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        name = str(self.torch_device).replace(":", "")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    @classmethod
    def create(cls, name: str = "auto", precision: str = "fp32", channels_last: str = "auto",
               threads: int = 0) -> "Device":
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.type == "cpu" and precision == "fp16":
            raise ValueError("--precision fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
        if threads > 0:
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return cls(device, precision, channels_last != "off")

    @property
    def type(self) -> str:
        return self.torch_device.type

    @property
    def label(self) -> str:
        return str(self.torch_device)

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move a freshly loaded module to the device, in eval mode and the chosen memory format."""
        module = module.to(self.torch_device).eval()
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def upload(self, batch: torch.Tensor) -> torch.Tensor:
        """Host batch -> device. On CUDA: pinned host memory and an asynchronous copy (uint8
        travels, so 4x less traffic than float32)."""
        if self.type == "cuda":
            return batch.pin_memory().to(self.torch_device, non_blocking=True)
        return batch

    def format(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        dtype = _AMP_DTYPES.get(self.precision)
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.type, dtype=dtype):
            yield

    def download(self, tensor: torch.Tensor) -> torch.Tensor:
        """Device -> host float32 (waits for the device)."""
        return tensor.detach().float().cpu()

    def memory_in_use(self) -> int:
        return torch.cuda.memory_allocated(self.torch_device) if self.type == "cuda" else 0

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
