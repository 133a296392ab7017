"""The builder table, the Pooling set and LayeredFeatures, checked against torchvision's own modules.

Every layered stack (AlexNet's and VGG-11's ``features``) must equal torchvision's
``features[:k+1]`` with the same weights on the same tensor, cut after any of its layers and
tapped at all of them in one pass.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.models import vgg11, vgg11_bn

from featurizer.architectures import (ArchitectureError, LayeredFeatures, Pooling, apply_pooling, build,
                                      list_builders, register_builder)
from featurizer.architectures.alexnet import ALEXNET_LAYERS
from featurizer.architectures.vgg import vgg_layer_names
from tests.support.reference import torchvision_alexnet

VGG11_LAYERS = ("conv1_1", "relu1_1", "pool1", "conv2_1", "relu2_1", "pool2", "conv3_1", "relu3_1", "conv3_2",
                "relu3_2", "pool3", "conv4_1", "relu4_1", "conv4_2", "relu4_2", "pool4", "conv5_1", "relu5_1",
                "conv5_2", "relu5_2", "pool5")


def one_layer_at_a_time(features: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's own layers applied one by one: element i is ``features[:i+1](x)``."""
    out, expected = x, []
    with torch.inference_mode():
        for layer in features:
            out = layer(out.clone())  # clone: the ReLUs work in place
            expected.append(out)
    return expected


def check_every_cut_and_tap(architecture: str, names: tuple[str, ...], reference: nn.Sequential,
                            x: torch.Tensor) -> None:
    expected = one_layer_at_a_time(reference, x)
    state = {f"features.{k}": v for k, v in reference.state_dict().items()}
    with torch.inference_mode():
        for index, layer in enumerate(names):
            stack = build(architecture, {"layer": layer, "pooling": "none"}).eval()
            assert isinstance(stack, LayeredFeatures) and stack.cut == index
            stack.load_state_dict({k: v for k, v in state.items() if k in stack.state_dict()}, strict=True)
            assert torch.allclose(stack(x), expected[index], atol=1e-5), layer
        taps = stack.forward_taps(x, set(range(len(names))))  # every layer of the last stack, one pass
    assert sorted(taps) == list(range(len(names)))
    for index, tap in taps.items():  # each tap survives the in-place ReLUs that follow it
        assert torch.allclose(tap, expected[index], atol=1e-5), names[index]


def test_alexnet_features_cuts_and_taps_are_torchvisions_prefixes():
    x = torch.randn(1, 3, 96, 112, generator=torch.Generator().manual_seed(0))
    check_every_cut_and_tap("alexnet_features", tuple(ALEXNET_LAYERS), torchvision_alexnet().features, x)


def test_vgg11_features_cuts_and_taps_are_torchvisions_prefixes():
    torch.manual_seed(0)
    with torch.device("meta"):  # the 123M-parameter classifier costs nothing on the meta device
        model = vgg11(weights=None)
    reference = model.features.to_empty(device="cpu")
    for module in reference.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    x = torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    check_every_cut_and_tap("vgg11_features", VGG11_LAYERS, reference.eval(), x)


def test_vgg_layer_names_come_from_the_torchvision_module():
    with torch.device("meta"):
        plain, normed = vgg11(weights=None).features, vgg11_bn(weights=None).features
    assert vgg_layer_names(plain) == VGG11_LAYERS
    assert build("vgg11_features", {}).layer_names == VGG11_LAYERS
    assert vgg_layer_names(normed)[:4] == ("conv1_1", "bn1_1", "relu1_1", "pool1")
    with pytest.raises(ValueError, match="a VGG stack holds"):
        vgg_layer_names(nn.Sequential(nn.Linear(2, 2)))


def test_vgg11_features_are_initialised_as_torchvision_does():
    torch.manual_seed(0)
    stack = build("vgg11_features", {"layer": "conv3_1"})
    conv = stack.features[6]  # 256 x 128 x 3 x 3: kaiming normal, fan_out, for ReLU
    assert isinstance(conv, nn.Conv2d) and torch.count_nonzero(conv.bias) == 0
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(conv.weight.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.02
    assert conv.weight.device.type == "cpu"


def test_resolve_layer_names_the_valid_layers_of_this_cut():
    stack = build("vgg11_features", {"layer": "relu3_2", "pooling": "avg"})
    assert stack.resolve_layer("pool2") == 5 and stack.resolve_layer(9) == 9 and stack.resolve_layer("9") == 9
    assert stack.layers == {name: i for i, name in enumerate(VGG11_LAYERS[:10])}
    assert stack.last_layer == "relu3_2" and stack.pooling is Pooling.AVG
    with pytest.raises(ArchitectureError, match=r"'conv4_1' comes after this model's last layer, relu3_2 \(9\); "
                                                r"expected one of conv1_1, .*, relu3_2 or an index 0..9"):
        stack.resolve_layer("conv4_1")
    with pytest.raises(ArchitectureError, match=r"unknown layer 'conv4'; expected one of conv1_1"):
        stack.resolve_layer("conv4")
    with pytest.raises(ArchitectureError, match=r"layer index 21 is outside the stack's layers"):
        stack.resolve_layer(21)
    with pytest.raises(ArchitectureError, match=r"layer indices \[10\] are outside this model's layers 0..9"):
        stack.forward_taps(torch.zeros(1, 3, 32, 32), {10})


def test_builders_refuse_unknown_names_params_layers_and_poolings():
    assert {"alexnet_features", "vgg11_features", "largenet", "alexnet_classifier",
            "feature_head"} <= set(list_builders())
    assert list_builders() == sorted(list_builders())
    with pytest.raises(ArchitectureError, match="unknown architecture 'vgg'; known: alexnet_classifier, "):
        build("vgg", {})
    with pytest.raises(ArchitectureError, match="bad params for 'largenet'"):
        build("largenet", {"classes": 3})
    with pytest.raises(ArchitectureError, match="unknown layer 'conv9'; expected one of conv1, relu1"):
        build("alexnet_features", {"layer": "conv9"})
    with pytest.raises(ArchitectureError, match="params.pooling: expected one of flatten, avg, max, none, "
                                                "got 'median'"):
        build("vgg11_features", {"pooling": "median"})
    with pytest.raises(ArchitectureError, match="feature_head must be one of flatten, avg, max, got 'none'"):
        build("feature_head", {"in_features": 4, "num_classes": 2, "pooling": "none"})


def test_register_builder_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="builder 'alexnet_features' is already registered"):
        register_builder("alexnet_features")(lambda: nn.Identity())


def test_pooling_is_one_closed_set():
    assert [str(p) for p in Pooling] == ["flatten", "avg", "max", "none"]
    assert Pooling.parse("max") is Pooling.MAX
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    assert apply_pooling(x, Pooling.FLATTEN).shape == (1, 24)
    assert torch.equal(apply_pooling(x, Pooling.AVG), torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))
    assert torch.equal(apply_pooling(x, Pooling.MAX), torch.nn.functional.adaptive_max_pool2d(x, 1).flatten(1))
    assert apply_pooling(x, Pooling.NONE) is x


def test_the_cli_gets_pooling_without_importing_torch():
    """``featurizer --help`` builds its --pooling choices from Pooling: importing it must not cost torch."""
    code = ("import sys; from featurizer.architectures import Pooling, ArchitectureError; "
            "from featurizer.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
