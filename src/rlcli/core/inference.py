"""Batched inference over image files: the runner that classify, multilabel and swa-merge's BatchNorm pass share.

Images are decoded and preprocessed in worker processes while the model runs; outputs come back batch by batch
in input order, with the inputs that could not be read beside them. The cost of a batch is checked against the
memory available before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rlcli.core.images import ImageBatch, Preprocess, image_batches
from rlcli.core.inputs import Input
from rlcli.core.resources import check_fits_in_memory
from rlcli.errors import ModelRunError, UsageError


@dataclass
class InferenceModel:
    """A model ready to run on images: where it runs, in which dtype and memory layout, fed how."""

    name: str
    model: nn.Module
    preprocess: Preprocess
    device: torch.device
    dtype: torch.dtype
    channels_last: bool = False

    @classmethod
    def prepare(
        cls,
        name: str,
        model: nn.Module,
        preprocess: Preprocess,
        *,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        train: bool = False,
    ) -> InferenceModel:
        """Move ``model`` to ``device``/``dtype`` (channels-last for convolutional networks), in eval mode."""
        model = model.to(device=device, dtype=dtype).train(train)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(name, model, preprocess, device, dtype, channels_last)


@dataclass
class RunOptions:
    batch_size: int = 32
    workers: int = 2
    draft: bool = False  # the fast, inexact JPEG decode (opt-in)
    on_progress: Callable[[int, int], None] | None = field(default=None, repr=False)


def forward_batches(
    runner: InferenceModel,
    inputs: list[Input],
    options: RunOptions,
    forward: Callable[[torch.Tensor], Any] | None = None,
) -> Iterator[tuple[ImageBatch, Any]]:
    """Model outputs (float32, on the CPU; a tuple when ``forward`` returns one) for each decoded batch, in input
    order. ``forward`` defaults to the model's own; a failing forward is one ModelRunError naming the batch."""
    run = forward or runner.model
    _check_options(options)
    check_fits_in_memory(_bytes_in_flight(runner.preprocess, options), _describe_load(runner.preprocess, options))
    done = 0
    batches = image_batches(
        inputs, runner.preprocess, batch_size=options.batch_size, workers=options.workers, draft=options.draft
    )
    with torch.inference_mode():
        for batch in batches:
            outputs = None
            if batch.pixels is not None:
                outputs = run_batch(runner, run, batch)
            done += len(batch.paths) + len(batch.problems)
            if options.on_progress:
                options.on_progress(done, len(inputs))
            yield batch, outputs


def run_batch(runner: InferenceModel, run: Callable[[torch.Tensor], Any], batch: ImageBatch) -> Any:
    """``run`` on one decoded batch, on the runner's device, dtype and memory format (the local path's and each Ray
    actor's step, so both compute the same numbers)."""
    pixels = batch.pixels.to(runner.device, runner.dtype, non_blocking=True)
    if runner.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    try:
        outputs = run(pixels)
    except (Exception, SystemExit) as exc:
        # The same model fails on every batch alike: one line for the run, not a traceback per batch.
        reason = f"it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise ModelRunError(
            f"{runner.name} failed on a batch of {len(batch.paths)} images of "
            f"{'x'.join(map(str, pixels.shape[1:]))} (first: {batch.paths[0]}): {_first_line(reason)}"
        ) from exc
    if isinstance(outputs, tuple):
        return tuple(o.float().cpu() for o in outputs)
    return outputs.float().cpu()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _check_options(options: RunOptions) -> None:
    if options.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if options.workers < 0:
        raise UsageError("--workers must be 0 or more")


def _bytes_in_flight(preprocess: Preprocess, options: RunOptions) -> int:
    """Pixels held at once, at least: the batch in use and the ``2 x workers`` decoded ahead, plus each decoder's
    resized picture (8-bit, at least resize x resize)."""
    batches = 1 + 2 * options.workers
    resized = 3 * preprocess.resize * preprocess.resize
    return batches * preprocess.batch_bytes(options.batch_size) + max(options.workers, 1) * resized


def _describe_load(preprocess: Preprocess, options: RunOptions) -> str:
    return (
        f"resizing to {preprocess.resize} and cropping {preprocess.crop}x{preprocess.crop} in batches of "
        f"{options.batch_size} with {options.workers} decoding worker{'' if options.workers == 1 else 's'}"
    )
