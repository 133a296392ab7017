"""`featurizer visualize` draws one tile per channel of the chosen layer (counted from the
PNG itself), and the tiles show torchvision's own activations and kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from featurizer.architectures.alexnet import ALEXNET_LAYERS
from featurizer.cli import main
from tests.support.images import encode, photos
from tests.support.reference import preset_tensor, torchvision_alexnet
from tests.support.registries import publish_alexnet

WHITE = 255


@pytest.fixture(scope="module")
def reference_model():
    return torchvision_alexnet()


@pytest.fixture
def cat_jpeg(tmp_path) -> Path:
    path = tmp_path / "cat.jpg"
    path.write_bytes(encode(photos()["chelsea"], "JPEG"))
    return path


def bands(is_separator: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of False between True separator lines."""
    runs, start = [], None
    for i, separator in enumerate(list(is_separator) + [True]):
        if not separator and start is None:
            start = i
        elif separator and start is not None:
            runs.append((start, i))
            start = None
    return runs


def tiles_of(png: Path) -> list[np.ndarray]:
    """The tiles of a grid PNG, found from its all-white separator rows and columns (empty slots dropped)."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    white = (pixels == WHITE).all(axis=2)
    rows, columns = bands(white.all(axis=1)), bands(white.all(axis=0))
    tiles = [pixels[r0:r1, c0:c1] for r0, r1 in rows for c0, c1 in columns]
    return [t for t in tiles if not (t == WHITE).all()]


@torch.inference_mode()
def reference_maps(model: torch.nn.Module, jpeg: bytes, layer: str) -> torch.Tensor:
    return model.features[: ALEXNET_LAYERS[layer] + 1](preset_tensor(jpeg))[0]


def viridis(channel: torch.Tensor) -> np.ndarray:
    scaled = (channel - channel.min()) / (channel.max() - channel.min())
    return colormaps["viridis"](scaled.numpy())[..., :3] * 255


@pytest.mark.parametrize("layer", ["conv1", "conv3"])
def test_feature_maps_one_tile_per_channel(demo_registry_template, reference_model, cat_jpeg, tmp_path, layer):
    out = tmp_path / f"{layer}.png"
    assert main(["visualize", "--registry", str(demo_registry_template), "--model", "alexnet", "--layer", layer,
                 str(cat_jpeg), "-o", str(out)]) == 0
    expected = reference_maps(reference_model, cat_jpeg.read_bytes(), layer)  # [C, H, W]
    tiles = tiles_of(out)
    assert len(tiles) == expected.shape[0]
    height, width = tiles[0].shape[:2]
    assert all(t.shape[:2] == (height, width) for t in tiles)
    factor = height // expected.shape[1]
    assert (height, width) == (factor * expected.shape[1], factor * expected.shape[2])
    for k in (0, len(tiles) // 2, len(tiles) - 1):  # tile k shows channel k
        drawn = tiles[k][::factor, ::factor].astype(float)
        assert np.abs(drawn - viridis(expected[k])).mean() < 2.0, k


def test_filters_are_the_first_kernels_as_rgb(demo_registry_template, reference_model, tmp_path):
    out = tmp_path / "filters.png"
    assert main(["visualize", "--registry", str(demo_registry_template), "--filters", "-o", str(out)]) == 0
    weight = reference_model.features[0].weight.detach()  # [64, 3, 11, 11]
    tiles = tiles_of(out)
    assert len(tiles) == weight.shape[0]
    factor = tiles[0].shape[0] // weight.shape[2]
    for k in (0, 63):
        w = weight[k]
        expected = ((w - w.min()) / (w.max() - w.min())).permute(1, 2, 0).numpy() * 255
        assert np.abs(tiles[k][::factor, ::factor].astype(float) - expected).max() <= 1.0


def test_any_cut_of_the_registry_and_clear_errors(demo_registry, cat_jpeg, tmp_path, capsys):
    publish_alexnet(demo_registry, "alexnet-conv3", layer="conv3")
    out = tmp_path / "relu2.png"
    assert main(["visualize", "--registry", str(demo_registry), "--model", "alexnet-conv3", "--layer", "relu2",
                 str(cat_jpeg), "-o", str(out)]) == 0
    assert len(tiles_of(out)) == torchvision_alexnet().features[3].out_channels  # conv2's 192 channels

    assert main(["visualize", "--registry", str(demo_registry), "--model", "alexnet-conv3", "--layer", "conv4",
                 str(cat_jpeg), "-o", str(tmp_path / "x.png")]) == 1
    assert "--layer: 'conv4'" in capsys.readouterr().err
    assert main(["visualize", "--registry", str(demo_registry), "--layer", "conv9",
                 str(cat_jpeg), "-o", str(tmp_path / "x.png")]) == 1
    assert "unknown layer 'conv9'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
