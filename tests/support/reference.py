"""Independent references: torchvision's own modules and preset transforms on the same tensors."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.io import decode_image, ImageReadMode
from torchvision.models import AlexNet_Weights, VGG11_Weights, alexnet, vgg11

from featurizer.demo import DEMO_SEED


def torchvision_alexnet(seed: int = DEMO_SEED) -> torch.nn.Module:
    """torchvision's AlexNet with the same seeded weights the demo registry writes."""
    torch.manual_seed(seed)
    return alexnet(weights=None).eval()


def torchvision_vgg11(seed: int = 0) -> torch.nn.Module:
    """torchvision's VGG-11 (its own initialisation) under a fixed seed."""
    torch.manual_seed(seed)
    return vgg11(weights=None).eval()


def _decoded(data: bytes | np.ndarray) -> torch.Tensor:
    """File bytes (torchvision's decoder) or uint8 HWC -> uint8 [3, H, W]."""
    if isinstance(data, (bytes, bytearray)):
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return torch.from_numpy(np.array(data, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def preset_tensor(data: bytes | np.ndarray) -> torch.Tensor:
    """torchvision's AlexNet IMAGENET1K_V1 preset applied to the decoded uint8 image -> [1, 3, 224, 224]."""
    return AlexNet_Weights.IMAGENET1K_V1.transforms()(_decoded(data)).unsqueeze(0)


def vgg11_preset_tensor(data: bytes | np.ndarray, crop: int = 224, resize: int = 256) -> torch.Tensor:
    """torchvision's VGG11 IMAGENET1K_V1 preset (resize the short side, centre crop, ImageNet mean/std),
    optionally at a smaller ``crop``/``resize`` -> [1, 3, crop, crop]."""
    return VGG11_Weights.IMAGENET1K_V1.transforms(crop_size=crop, resize_size=resize)(_decoded(data)).unsqueeze(0)


@torch.inference_mode()
def reference_features(model: torch.nn.Module, data: bytes | np.ndarray, cut: int = 12) -> np.ndarray:
    """alexnet().features[:cut+1] on the preset tensor, flattened."""
    return torch.flatten(model.features[: cut + 1](preset_tensor(data)), 1)[0].numpy()


@torch.inference_mode()
def largenet_reference(state: dict[str, torch.Tensor], images: np.ndarray, size: int = 32) -> np.ndarray:
    """The lecture's LargeNet with ``state`` on uint8 NHWC ``images``: torchvision's antialiased resize
    to size x size, scale to [0, 1], normalise with mean = std = 0.5 -> logits [N, classes]."""
    from torchvision.transforms.functional import resize
    from featurizer.architectures.largenet import LargeNet

    model = LargeNet(num_classes=len(state["fc2.bias"])).eval()
    model.load_state_dict(state)
    x = resize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), [size, size], antialias=True)
    return model((x.float() / 255 - 0.5) / 0.5).numpy()
