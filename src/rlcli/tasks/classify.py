"""`rl classify`: single-label image classification with any registry model, offline.

Weights come from a checkpoint file (plain state dict, training checkpoint, or an rlcli checkpoint that also names
the architecture and classes) or from a torchvision weights name resolved in the local torch hub cache. The
preprocessing is exactly the weights' evaluation transform. Images are decoded in worker processes while the
model runs, and results come back in input order, batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlcli.core.checkpoints import CheckpointInfo, load_checkpoint, load_into
from rlcli.core.devices import resolve_device, resolve_dtype
from rlcli.core.images import ImageBatch, InputProblem, Preprocess, image_batches
from rlcli.core.meta import build_on_meta
from rlcli.errors import CheckpointError, RlError, UsageError

CONV_FAMILIES = {
    "resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "regnet", "densenet",
    "vgg", "alexnet", "googlenet", "inception", "mnasnet", "shufflenet_v2", "squeezenet", "convnext",
}  # fmt: skip


@dataclass
class LoadedClassifier:
    """A model ready for inference, with how its inputs are prepared and what its outputs mean."""

    arch: str
    model: nn.Module
    preprocess: Preprocess
    class_names: list[str]
    weights: str  # where the weights came from, for reports
    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    info: CheckpointInfo | None = None


@dataclass(frozen=True)
class PreprocessOverrides:
    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def apply(self, base: Preprocess) -> Preprocess:
        from dataclasses import replace

        changes = {k: v for k, v in vars(self).items() if v is not None}
        if "crop" in changes and "resize" not in changes:
            changes["resize"] = round(changes["crop"] / base.crop * base.resize)
        return replace(base, **changes)


def load_classifier(
    model: str | None,
    weights: str | None,
    *,
    classes_file: Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    overrides: PreprocessOverrides = PreprocessOverrides(),
) -> LoadedClassifier:
    """Resolve the architecture, its weights, class names and preprocessing; never downloads.

    Example:
        >>> clf = load_classifier("resnet50", "ResNet50_Weights.IMAGENET1K_V2")
        >>> clf = load_classifier(None, "runs/shapes.safetensors")   # an rlcli checkpoint names its arch
    """
    from rlcli.models.registry import get_spec

    torch_dtype = resolve_dtype(dtype)
    if weights is None:
        if model is None:
            raise UsageError("give --model NAME, --weights FILE, or both")
        weights = "DEFAULT"
    target = resolve_device(device)
    path = Path(weights).expanduser()
    if path.is_file() or path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors"):
        spec, net, names, preprocess, info = _from_checkpoint(path, model)
        source = str(path)
    else:
        if model is None:
            raise UsageError(f"--weights {weights} names torchvision weights: give --model too")
        spec = get_spec(model)
        net, names, preprocess = _from_torchvision_weights(spec, weights)
        info, source = None, weights
    arch = spec.name
    outputs = _output_count(net)
    if classes_file is not None:
        names = read_class_names(classes_file)
    elif names is None:
        names = _default_class_names(spec, outputs)
    if outputs is not None and len(names) != outputs:
        raise CheckpointError(f"{len(names)} class names for a model with {outputs} outputs ({arch})")
    channels_last = spec.family in CONV_FAMILIES
    net = net.to(device=target, dtype=torch_dtype).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return LoadedClassifier(
        arch=arch,
        model=net,
        preprocess=overrides.apply(preprocess),
        class_names=names,
        weights=source,
        device=target,
        dtype=torch_dtype,
        channels_last=channels_last,
        info=info,
    )


def _from_checkpoint(path: Path, model: str | None):
    from rlcli.models.registry import get_spec

    checkpoint = load_checkpoint(path)
    info = checkpoint.info
    arch = model or (info.arch if info else None)
    if arch is None:
        raise UsageError(f"{path} does not name its architecture: give --model")
    if info and info.arch and model and model != info.arch:
        raise UsageError(f"{path} holds a {info.arch}, not a {model}")
    spec = get_spec(arch)
    args = dict(info.model_args) if info and info.arch == arch else {}
    if "num_classes" not in args and spec.source == "torchvision":
        # A fine-tuned torchvision model: its class count is the height of its final weight in the file.
        args["num_classes"] = _classes_in_state(checkpoint.state_dict, spec)
    net = build_on_meta(lambda: spec.build(**args))
    load_into(net, checkpoint.state_dict, source=str(path), assign=True)
    names = info.class_names if info else None
    preprocess = Preprocess.for_model(spec)
    if info and info.extra.get("preprocess"):
        preprocess = Preprocess(**info.extra["preprocess"])
    return spec, net, names, preprocess, info


def _default_class_names(spec, outputs: int | None) -> list[str]:
    """ImageNet's names for a 1000-way torchvision model (torchvision ships them), else numbered classes."""
    if spec.source == "torchvision" and outputs is not None:
        import torchvision.models as tvm

        categories = tvm.get_model_weights(spec.name).DEFAULT.meta.get("categories") or []
        if len(categories) == outputs:
            return list(categories)
    return [f"class {i}" for i in range(outputs or 0)]


def _classes_in_state(state: dict[str, torch.Tensor], spec) -> int | None:
    reference = build_on_meta(lambda: spec.build())
    last = [name for name, p in reference.named_parameters() if p.dim() >= 2][-1]
    return int(state[last].shape[0]) if last in state else None


def _from_torchvision_weights(spec, name: str):
    import torchvision.models as tvm

    from rlcli.models.registry import stock_torchvision_kwargs

    if spec.source != "torchvision":
        raise UsageError(f"{spec.name} has no torchvision weights: give --weights FILE")
    enum = tvm.get_model_weights(spec.name)
    member = name.rsplit(".", 1)[-1]
    if "." in name and name.split(".")[0] != enum.__name__:
        raise UsageError(f"{name} are not weights of {spec.name} (its weights are {enum.__name__}.*)")
    try:
        weights = enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise UsageError(f"unknown weights '{name}' for {spec.name}: choose {choices}") from None
    file = cached_weights_file(weights)
    state = load_checkpoint(file).state_dict
    crop = weights.transforms.keywords["crop_size"]
    kwargs = stock_torchvision_kwargs(spec.name, weights, (3, crop, crop))
    if spec.name == "googlenet":
        kwargs["aux_logits"] = True  # the file holds the auxiliary heads; torchvision drops them after loading
    net = build_on_meta(lambda: tvm.get_model(spec.name, **kwargs))
    load_into(net, state, source=str(file), assign=True)
    if spec.name == "googlenet":
        net.aux_logits, net.aux1, net.aux2 = False, None, None
    keywords = weights.transforms.keywords
    preprocess = Preprocess(
        resize=int(keywords.get("resize_size", 256)),
        crop=int(crop),
        mean=tuple(keywords.get("mean", Preprocess.mean)),
        std=tuple(keywords.get("std", Preprocess.std)),
        interpolation=str(getattr(keywords.get("interpolation"), "value", "bilinear")),
    )
    return net, list(weights.meta["categories"]), preprocess


def cached_weights_file(weights: Any) -> Path:
    """The file of torchvision ``weights`` in the torch hub cache, or an error with the one command that gets it."""
    filename = weights.url.rsplit("/", 1)[-1]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / filename
    if not path.is_file():
        qualified = f"{type(weights).__name__}.{weights.name}"
        raise RlError(
            f"weights {qualified} are not in the torch hub cache (looked for {path}); rl never downloads. "
            f'Fetch them once with: python -c "import torchvision; '
            f"torchvision.models.get_weight('{qualified}').get_state_dict(weights_only=True)\""
        )
    return path


def read_class_names(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise RlError(f"cannot read class names from {path}: {exc}") from exc
    if not names:
        raise RlError(f"{path} holds no class names")
    return names


def _output_count(net: nn.Module) -> int | None:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if linears:
        return linears[-1].out_features
    return convs[-1].out_channels if convs else None


# --- running -------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    path: str
    position: int
    indices: list[int]
    labels: list[str]
    probabilities: list[float]


@dataclass
class Problem:
    path: str
    position: int
    reason: str


@dataclass
class RunOptions:
    batch_size: int = 32
    workers: int = 2
    draft: bool = True
    on_progress: Callable[[int, int], None] | None = field(default=None, repr=False)


def forward_batches(
    clf: LoadedClassifier,
    inputs: list[Path | InputProblem],
    options: RunOptions,
    forward: Callable[[torch.Tensor], Any] | None = None,
) -> Iterator[tuple[ImageBatch, Any]]:
    """Model outputs (float32, on the CPU; a tuple when ``forward`` returns one) for each decoded batch, in input
    order. Shared by classify and multilabel; ``forward`` defaults to the model's own."""
    run = forward or clf.model
    if options.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if options.workers < 0:
        raise UsageError("--workers must be 0 or more")
    done = 0
    batches = image_batches(
        inputs, clf.preprocess, batch_size=options.batch_size, workers=options.workers, draft=options.draft
    )
    with torch.inference_mode():
        for batch in batches:
            outputs = None
            if batch.pixels is not None:
                pixels = batch.pixels.to(clf.device, clf.dtype, non_blocking=True)
                if clf.channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                outputs = run(pixels)
                if isinstance(outputs, tuple):
                    outputs = tuple(o.float().cpu() for o in outputs)
                else:
                    outputs = outputs.float().cpu()
            done += len(batch.paths) + len(batch.problems)
            if options.on_progress:
                options.on_progress(done, len(inputs))
            yield batch, outputs


def classify(
    clf: LoadedClassifier, inputs: list[Path | InputProblem], top_k: int = 5, options: RunOptions | None = None
) -> Iterator[Prediction | Problem]:
    """Top-k predictions (softmax probabilities) per image, and a Problem per unreadable input, in input order."""
    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    k = min(top_k, len(clf.class_names))
    for batch, logits in forward_batches(clf, inputs, options or RunOptions()):
        results: list[Prediction | Problem] = [Problem(p.path, i, p.reason) for i, p in batch.problems]
        if logits is not None:
            probabilities, indices = logits.softmax(dim=-1).topk(k, dim=-1)
            for row, (position, path) in enumerate(zip(batch.positions, batch.paths, strict=True)):
                chosen = indices[row].tolist()
                results.append(
                    Prediction(
                        path=path,
                        position=position,
                        indices=chosen,
                        labels=[clf.class_names[i] for i in chosen],
                        probabilities=probabilities[row].tolist(),
                    )
                )
        yield from sorted(results, key=lambda r: r.position)
