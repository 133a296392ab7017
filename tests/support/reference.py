"""Independent references: torchvision's own modules and preset transforms on the same tensors."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.io import decode_image, ImageReadMode
from torchvision.models import AlexNet_Weights, alexnet

from featurizer.demo import DEMO_SEED


def torchvision_alexnet(seed: int = DEMO_SEED) -> torch.nn.Module:
    """torchvision's AlexNet with the same seeded weights the demo registry writes."""
    torch.manual_seed(seed)
    return alexnet(weights=None).eval()


def preset_tensor(data: bytes | np.ndarray) -> torch.Tensor:
    """torchvision's AlexNet IMAGENET1K_V1 preset applied to the decoded uint8 image -> [1, 3, 224, 224]."""
    if isinstance(data, (bytes, bytearray)):
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    else:
        image = torch.from_numpy(np.array(data, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    return AlexNet_Weights.IMAGENET1K_V1.transforms()(image).unsqueeze(0)


@torch.inference_mode()
def reference_features(model: torch.nn.Module, data: bytes | np.ndarray, cut: int = 12) -> np.ndarray:
    """alexnet().features[:cut+1] on the preset tensor, flattened."""
    return torch.flatten(model.features[: cut + 1](preset_tensor(data)), 1)[0].numpy()


@torch.inference_mode()
def largenet_reference(state: dict[str, torch.Tensor], images: np.ndarray, size: int = 32) -> np.ndarray:
    """The lecture's LargeNet with ``state`` on uint8 NHWC ``images``: torchvision's antialiased resize
    to size x size, scale to [0, 1], normalise with mean = std = 0.5 -> logits [N, classes]."""
    from torchvision.transforms.functional import resize
    from featurizer.architectures.builders import LargeNet

    model = LargeNet(num_classes=len(state["fc2.bias"])).eval()
    model.load_state_dict(state)
    x = resize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), [size, size], antialias=True)
    return model((x.float() / 255 - 0.5) / 0.5).numpy()
