"""The one device abstraction: where tensors go, in which precision and memory format.

Everything device-specific (pinned memory, non_blocking copies, autocast, channels_last, the
inference thread) lives here, so the batcher and the models never branch on CPU vs CUDA.
The CUDA path is written for GPUs but only verified on CPU in this project's CI (``bench/gpu_check.sh``
checks it on a GPU machine: docs/gpu.md).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from torch import nn

from featurizer.settings import InvalidSetting

_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# torch's default intra-op thread count, read once at import: later, a new thread's count follows
# whichever thread last called set_num_threads (a preprocessing worker sets 1 for itself).
DEFAULT_THREADS = torch.get_num_threads()


@dataclass
class Device:
    """A torch device plus how we run on it. One inference thread per device keeps model work
    off the event loop and serialises forward passes (the device is the bottleneck anyway)."""

    torch_device: torch.device
    precision: str = "fp32"
    channels_last: bool = True
    threads: int = 0  # intra-op threads of the inference thread (0 = torch's default)
    executor: ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        name = str(self.torch_device).replace(":", "")
        threads = self.threads or DEFAULT_THREADS
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}",
                                           initializer=self._setup_inference_thread, initargs=(threads,))

    def _setup_inference_thread(self, threads: int) -> None:
        use_intra_op_threads(threads)
        if self.type == "cuda":  # kernels, streams and allocations of this thread default to our GPU
            torch.cuda.set_device(self.torch_device)

    @classmethod
    def create(cls, name: str = "auto", precision: str = "fp32", channels_last: str = "auto",
               threads: int = 0) -> "Device":
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except RuntimeError:
            raise InvalidSetting("device", f"expected cpu, cuda or cuda:N, got {name!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidSetting("device", f"{name}: CUDA is not available on this machine")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise InvalidSetting("device", f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.type == "cpu" and precision == "fp16":
            raise InvalidSetting("precision", "fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch shapes repeat: let cuDNN pick its kernels once
        return cls(device, precision, channels_last != "off", threads)

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

    def upload(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Same-shape CHW images -> one NCHW batch on the device, stacked once. On CUDA the stack
        lands in pinned host memory and travels by an asynchronous copy (uint8 travels, so 4x
        less traffic than float32); the caching host allocator keeps the buffer until the copy ends."""
        if self.type == "cuda" and any(image.is_cuda for image in images):  # decoded on the GPU already
            return self.format(torch.stack([image.to(self.torch_device, non_blocking=True) for image in images]))
        first = images[0]
        host = torch.empty((len(images), *first.shape), dtype=first.dtype, pin_memory=self.type == "cuda")
        torch.stack(list(images), out=host)
        if self.type == "cuda":
            return self.format(host.to(self.torch_device, non_blocking=True))
        return self.format(host)

    def format(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's memory format (before normalising, so uint8 is what gets reordered)."""
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
        """Device -> host float32. A blocking copy: it waits for the device's queued work, so
        the rows are final when the inference thread hands them over. fp16/bf16 outputs travel
        as such and widen on the host."""
        return tensor.detach().to("cpu").float()

    def memory_in_use(self) -> Optional[int]:
        """Bytes held by torch's CUDA allocator (read after each batch for the device-memory gauge);
        None on CPU, which keeps no such count."""
        return torch.cuda.memory_allocated(self.torch_device) if self.type == "cuda" else None

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def decode_device(name: str, serving: Device) -> Optional[torch.device]:
    """Where JPEGs are decoded: None for the CPU; for ``cuda``, the serving GPU (or GPU 0 when the
    model runs on the CPU). Refused where CUDA is absent, at start-up rather than on the first request."""
    if name == "cpu":
        return None
    if name != "cuda":
        raise InvalidSetting("decode_device", f"expected cpu or cuda, got {name!r}")
    if not torch.cuda.is_available():
        raise InvalidSetting("decode_device", f"decoding JPEGs on the GPU needs CUDA, and this machine has none "
                                              f"(torch {torch.__version__}, {torch.cuda.device_count()} CUDA devices); "
                                              f"decode on the CPU instead")
    return serving.torch_device if serving.type == "cuda" else torch.device("cuda", 0)


def bind_thread(device: torch.device) -> None:
    """Make ``device`` the calling thread's GPU (a thread-pool initializer; nothing on CPU)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def finish_queued_work(device: torch.device) -> None:
    """Wait for the work queued on ``device``'s current stream (nothing to wait for on CPU)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def use_intra_op_threads(count: int) -> None:
    """Give the calling thread ``count`` intra-op threads (a thread-pool initializer).

    With torch's OpenMP backend the setting is per thread, so the inference thread can use all
    cores while each preprocessing thread uses one: on a small machine, OpenMP teams in every
    decode/resize thread fight the forward pass for cores (resize got ~7x slower here). torch
    sets a thread's count lazily on its first parallel op, so that happens first."""
    torch.get_num_threads()
    torch.set_num_threads(count)


@functools.lru_cache(maxsize=None)
def per_thread_intra_op() -> bool:
    """Whether intra-op threads are a per-thread setting (OpenMP) rather than one global pool."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def single_threaded_worker() -> None:
    """Initializer for preprocessing threads: one intra-op thread each, where that stays per thread."""
    if per_thread_intra_op():
        use_intra_op_threads(1)
