"""The preset's resize without full-size float copies, and reduced-scale JPEG decoding, against
torchvision's own preset on real photos of several sizes."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.models import AlexNet_Weights

from featurizer.inference.decode_resize import DRAFT_HEADROOM
from featurizer.inference.preprocessing import ImageLimits, decode, decode_for, probe, resize_for
from featurizer.registry.manifest import DecodeMode, InputMode, InputSpec
from tests.support.phone_photos import sized_photos
from tests.support.reference import _decoded

LIMITS = ImageLimits(max_image_bytes=64 * 1024 * 1024, max_image_pixels=40_000_000)
SPEC = InputSpec()
PRESET = AlexNet_Weights.IMAGENET1K_V1.transforms()


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return TF.normalize(pixels.float() / 255, list(SPEC.mean), list(SPEC.std))


@pytest.mark.parametrize("name", sorted(sized_photos()))
def test_exact_resize_and_crop_equal_the_torchvision_preset(name):
    data = sized_photos()[name]
    ours = resize_for(decode_for(probe(data, LIMITS), SPEC, DecodeMode.EXACT), SPEC, LIMITS)
    expected = PRESET(_decoded(data))  # torchvision's decoder and preset, float32 normalised
    assert (normalised(ours) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("size", [(200, 300), (300, 200), (224, 224), (400, 500)])
def test_exact_resize_mode_is_bit_identical_to_tf_resize(size):
    spec = InputSpec(mode=InputMode.RESIZE, height=size[0], width=size[1])
    for name in ("coffee@phone", "chelsea@original", "rocket@small"):
        image = decode(sized_photos()[name], LIMITS)
        assert torch.equal(resize_for(image, spec, LIMITS), TF.resize(image, list(size), antialias=True)), name


@pytest.mark.parametrize("name", sorted(sized_photos()))
def test_fast_decoding_never_goes_below_twice_the_resize_nor_upscales(name):
    data = sized_photos()[name]
    exact = decode(data, LIMITS)
    fast = decode_for(probe(data, LIMITS), SPEC, DecodeMode.FAST)
    assert fast.shape[0] == 3
    assert fast.shape[1] <= exact.shape[1] and fast.shape[2] <= exact.shape[2]  # never upscaled
    if fast.shape != exact.shape:
        assert min(fast.shape[1:]) >= SPEC.resize * DRAFT_HEADROOM
    else:  # too small to reduce: the exact decode itself
        assert torch.equal(fast, exact)


def test_fast_decoding_reduces_a_phone_photo_by_a_dct_scale():
    fast = decode_for(probe(sized_photos()["coffee@phone"], LIMITS), SPEC, DecodeMode.FAST)
    assert tuple(fast.shape) == (3, 3024 // 4, 4032 // 4)


def test_native_models_and_non_jpeg_images_are_always_decoded_exactly():
    from tests.support.images import encode, photos

    png = encode(photos()["coffee"], "PNG")
    assert torch.equal(decode_for(probe(png, LIMITS), SPEC, DecodeMode.FAST), decode(png, LIMITS))
    native = InputSpec(mode="native", resize=None, height=None, width=None)
    data = sized_photos()["coffee@phone"]
    assert torch.equal(decode_for(probe(data, LIMITS), native, DecodeMode.FAST), decode(data, LIMITS))
