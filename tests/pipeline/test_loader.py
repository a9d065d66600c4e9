"""Worker-process decode (workers/pipeline/loader.py) and the precision a model runs in."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest
import torch

from workers.pipeline.cache import feature_key
from workers.pipeline.datasets.images import ImageSample
from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import extract
from workers.pipeline.loader import decoded_batches
from workers.pipeline.models.base import autocast_dtype
from workers.pipeline.models.preprocessing import ImageRecipe

RECIPES = [ImageRecipe(), ImageRecipe(size=240, resize=274, interpolation="bicubic")]


def _in_process(samples, recipes) -> list[torch.Tensor]:
    return [torch.stack([r.geometry(s.load()) for s in samples]) for r in recipes]


def _no_children_left(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


@pytest.mark.parametrize(("batch_size", "chunk", "workers"), [(5, 3, 2), (4, 4, 3), (16, 32, 1)])
def test_batches_equal_in_process_decode(fmnist64, batch_size, chunk, workers) -> None:
    """Chunks that straddle batches, chunks equal to batches, one worker: the same pixels in
    the same order as decoding in this process, every geometry from one decode."""
    samples = fmnist64.samples[:13]
    expected = _in_process(samples, RECIPES)
    batches = list(
        decoded_batches(samples, RECIPES, batch_size, workers, torch.device("cpu"), chunk)
    )
    assert [len(b[0]) for b in batches] == [
        min(batch_size, 13 - s) for s in range(0, 13, batch_size)
    ]
    for g, want in enumerate(expected):
        got = torch.cat([b[g] for b in batches])
        assert got.dtype == torch.uint8 and got.shape == want.shape
        assert torch.equal(got, want)
    assert _no_children_left()


class _Broken(ImageSample):
    def load(self, draft=None):
        raise PipelineError("image 3 is not a valid PNG; remove it from the upload")


class _Dies(ImageSample):
    def load(self, draft=None):
        os._exit(3)


def test_worker_error_reaches_the_caller_and_stops_the_workers(fmnist64) -> None:
    samples = [*fmnist64.samples[:8], _Broken(), *fmnist64.samples[8:20]]
    with pytest.raises(PipelineError, match="not a valid PNG"):
        for _ in decoded_batches(samples, RECIPES[:1], 4, 2, torch.device("cpu"), 2):
            pass
    assert _no_children_left()


def test_a_dead_worker_is_an_error_not_a_hang(fmnist64) -> None:
    samples = [_Dies(), *fmnist64.samples[:4]]
    with pytest.raises(PipelineError, match=r"decode worker died \(exit code 3\)"):
        list(decoded_batches(samples, RECIPES[:1], 2, 1, torch.device("cpu"), 1))
    assert _no_children_left()


def test_leaving_early_stops_the_workers(fmnist64) -> None:
    for _ in decoded_batches(fmnist64.samples, RECIPES[:1], 4, 2, torch.device("cpu"), 2):
        break
    assert _no_children_left()


def test_extract_with_workers_equals_in_process(zoo, fmnist64) -> None:
    """The whole pipeline through worker processes gives the features of in-process decode."""
    model = zoo("mobilenet-v2")
    subset = fmnist64.select(np.arange(10))
    inline = extract([model], subset, batch_size=4, num_workers=0)["mobilenet-v2"]
    workers = extract([model], subset, batch_size=4, num_workers=2)["mobilenet-v2"]
    np.testing.assert_array_equal(inline.features, workers.features)
    np.testing.assert_array_equal(inline.probs, workers.probs)


def test_precision_is_part_of_the_cache_key(zoo, fmnist64) -> None:
    """A GPU placement names its precision in ``runtime``, so its features never share a cache
    entry with the CPU's; reduced precision on a CPU is refused with what to do."""
    model = zoo("efficientnet-lite0")  # PyTorch on the CPU (the zoo loads it with TB_RUNTIME=torch
    reference = getattr(model, "reference", model)  # or on ONNX Runtime around this reference)
    cpu_key = feature_key(reference, fmnist64.content_hash)
    assert reference.runtime == "torch"
    try:
        reference.place(torch.device("cuda"), "fp32")  # records only: moves no weights
        assert reference.runtime == "torch-cuda-fp32"
        assert feature_key(reference, fmnist64.content_hash) != cpu_key
    finally:
        reference.place(torch.device("cpu"), "auto")
    assert feature_key(reference, fmnist64.content_hash) == cpu_key
    for precision in ("bf16", "fp16"):
        with pytest.raises(PipelineError, match=r"TB_PRECISION=\w+ applies to a CUDA device"):
            autocast_dtype(torch.device("cpu"), precision)
    with pytest.raises(PipelineError, match="unknown precision"):
        autocast_dtype(torch.device("cpu"), "int8")
    assert autocast_dtype(torch.device("cpu"), "auto") is None


def test_a_models_pixels_do_not_depend_on_the_other_models_of_a_job(tmp_path) -> None:
    """A JPEG was decoded once per job, drafted for the largest resize of its models, so a
    model with a smaller resize saw other pixels beside a larger one than alone (about 6% of
    its features apart), and the feature cache kept whichever came first. Each recipe's
    pixels are now those of decoding for it alone; one decode serves every recipe whose draft
    comes to the same reduced size."""
    from PIL import Image

    from workers.pipeline.datasets.images import FileImage, decode_each
    from workers.pipeline.loader import geometries

    rng = np.random.default_rng(0)
    small = (rng.random((145, 145, 3)) * 255).astype(np.uint8)
    path = tmp_path / "large.jpg"
    Image.fromarray(small).resize((580, 580), Image.BILINEAR).save(path, quality=92)
    sample = FileImage(path)
    a, b = ImageRecipe(size=224, resize=256), ImageRecipe(size=260, resize=297)
    together = geometries(sample, [a, b])
    alone = [geometries(sample, [a])[0], geometries(sample, [b])[0]]
    for shared, own in zip(together, alone, strict=True):
        assert torch.equal(shared, own)
    # 580 px drafted for 256 is halved (290 px), for 297 it is not: two decodes, unlike ones
    first, second = decode_each(path.read_bytes(), str(path), [256, 297])
    assert first.size == (290, 290) and second.size == (580, 580)
    # drafts that reduce alike (both keep 580 px) share one decode
    same = decode_each(path.read_bytes(), str(path), [297, 300])
    assert same[0] is same[1]
