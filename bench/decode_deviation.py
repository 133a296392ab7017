"""Embedding deviation of reduced-scale JPEG decoding (``input.decode: fast``) from exact decoding.

Every offline photo (../shared/DATA.md) at its own size, shrunk, and upscaled to phone size
(4032x3024, Pillow BICUBIC, JPEG q90), through the demo AlexNet ``features`` (9216 floats): the
cosine between the fast and exact rows, the DCT scale libjpeg used, and both preprocessing times
on one core. Prints a Markdown table (docs/performance.md).

    python bench/decode_deviation.py
"""

from __future__ import annotations

import io
import time

import torch
from PIL import Image

from featurizer.demo import seeded_alexnet
from featurizer.inference.normalize import Normalizer
from featurizer.inference.preprocessing import ImageLimits, decode_for, probe, resize_for
from featurizer.registry.manifest import DecodeMode, InputSpec

SPEC = InputSpec()
LIMITS = ImageLimits(max_image_bytes=64 * 1024 * 1024, max_image_pixels=40_000_000)
PHONE = (4032, 3024)


def photos() -> dict[str, Image.Image]:
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
           for name in ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "retina", "camera", "coins")}
    motorcycle = skimage.data.stereo_motorcycle()[0]
    out["stereo_motorcycle"] = Image.fromarray(motorcycle).convert("RGB")
    sample = load_sample_images()
    for name, array in zip(("china", "flower"), sample.images, strict=True):
        out[name] = Image.fromarray(array).convert("RGB")
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        out["grace_hopper"] = Image.open(f).convert("RGB")
    return out


def variants(images: dict[str, Image.Image]) -> list[tuple[str, str, bytes]]:
    """(photo, size label, JPEG q90 bytes): original, half, and phone-size versions."""
    out = []
    for name, image in images.items():
        w, h = image.size
        landscape = PHONE if w >= h else PHONE[::-1]
        for label, sized in (("original", image), ("half", image.resize((max(w // 2, 1), max(h // 2, 1)), Image.Resampling.BICUBIC)),
                             ("phone", image.resize(landscape, Image.Resampling.BICUBIC))):
            buffer = io.BytesIO()
            sized.save(buffer, format="JPEG", quality=90)
            out.append((name, label, buffer.getvalue()))
    return out


def prepared(data: bytes, mode: DecodeMode) -> tuple[torch.Tensor, float, tuple[int, int]]:
    started = time.perf_counter()
    raw = decode_for(probe(data, LIMITS), SPEC, mode)
    tensor = resize_for(raw, SPEC, LIMITS)
    return tensor, (time.perf_counter() - started) * 1000, tuple(raw.shape[1:])


@torch.inference_mode()
def main() -> None:
    torch.set_num_threads(1)
    model, normalize = seeded_alexnet().features.eval(), Normalizer(SPEC)
    print("| photo | size | decoded at (fast) | exact ms | fast ms | cosine fast vs exact |")
    print("|---|---|---|---|---|---|")
    worst = 1.0
    for name, _label, data in variants(photos()):
        exact, exact_ms, full = prepared(data, DecodeMode.EXACT)
        fast, fast_ms, reduced = prepared(data, DecodeMode.FAST)
        rows = torch.flatten(model(normalize(torch.stack([exact, fast]))), 1).double()
        cosine = float(torch.nn.functional.cosine_similarity(rows[0:1], rows[1:2])[0])
        worst = min(worst, cosine)
        scale = round(full[0] / reduced[0])
        print(f"| {name} | {full[1]}x{full[0]} | {reduced[1]}x{reduced[0]} (1/{scale}) | {exact_ms:.1f} | {fast_ms:.1f} "
              f"| {cosine:.6f} |")
    print(f"\nworst cosine: {worst:.6f}")


if __name__ == "__main__":
    main()
