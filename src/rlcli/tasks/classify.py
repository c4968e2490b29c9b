"""`rl classify`: single-label image classification with any registry model, offline.

Weights come from a checkpoint file (plain state dict, training checkpoint, or an rlcli checkpoint that also names
the architecture and classes), from a torchvision weights name resolved in the local torch hub cache, or — for a
``timm/NAME`` model — from its Hub repository in the local Hugging Face cache; the model, its classes and its
preprocessing are resolved by ``rlcli.models.loading``. The preprocessing is exactly the weights' evaluation
transform (timm's data config for timm's weights). Images run through the shared batched runner
(``rlcli.core.inference``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from rlcli.core.checkpoints import SAFETENSORS_SUFFIX, TORCH_SUFFIXES, CheckpointInfo
from rlcli.core.devices import resolve_device, resolve_dtype
from rlcli.core.images import ImageBatch, Preprocess
from rlcli.core.inference import InferenceModel, RunOptions, forward_batches
from rlcli.core.inputs import Input, Problem
from rlcli.errors import CheckpointError, RlError, UsageError


@dataclass
class Classifier:
    """A model ready for inference, with what its outputs mean and where its weights came from."""

    runner: InferenceModel
    class_names: list[str]
    weights: str
    info: CheckpointInfo | None = None

    @property
    def preprocess(self) -> Preprocess:
        return self.runner.preprocess


@dataclass(frozen=True)
class PreprocessOverrides:
    """Preprocessing settings typed on the command line; unset ones keep the model's."""

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def apply(self, base: Preprocess) -> Preprocess:
        changes = {k: v for k, v in vars(self).items() if v is not None}
        if "crop" in changes and "resize" not in changes:
            changes["resize"] = round(changes["crop"] / base.crop * base.resize)
        result = replace(base, **changes)
        problem = result.problem()
        if problem:
            raise UsageError(f"invalid preprocessing: {problem}")
        return result


def load_classifier(
    model: str | None,
    weights: str | None,
    *,
    classes_file: Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    overrides: PreprocessOverrides = PreprocessOverrides(),
) -> Classifier:
    """Resolve the architecture, its weights, class names and preprocessing; never downloads.

    Example:
        >>> clf = load_classifier("resnet50", "ResNet50_Weights.IMAGENET1K_V2")
        >>> clf = load_classifier(None, "runs/shapes.safetensors")   # an rlcli checkpoint names its arch
    """
    from rlcli.models.loading import load_model_file, load_timm_weights, load_torchvision_weights, output_count
    from rlcli.models.registry import get_spec

    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    if weights is None:
        if model is None:
            raise UsageError("give --model NAME, --weights FILE, or both")
        weights = "DEFAULT"
    path = Path(weights).expanduser()
    if path.is_file() or path.suffix in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        loaded = load_model_file(path, model, adjust=overrides.apply)
        preprocess = loaded.preprocess
    elif model is None:
        raise UsageError(f"--weights {weights} names torchvision weights: give --model too")
    else:
        spec = get_spec(model, user_code=True)
        _check_task(spec.card)  # before reading any file: a detector's weights carry no classification transform
        if spec.card.source == "timm":
            loaded = load_timm_weights(spec, weights)
        else:
            loaded = load_torchvision_weights(spec, weights)
        preprocess = overrides.apply(loaded.preprocess)
        _check_fixed_input(loaded, preprocess)
    card = loaded.spec.card
    _check_task(card)
    if preprocess is None:
        raise UsageError(f"{card.name} does not take images ({card.input_kind} input): rl classify runs image models")
    outputs = loaded.outputs or output_count(loaded.model)
    names = read_class_names(classes_file) if classes_file is not None else loaded.class_names or []
    if outputs is not None and len(names) != outputs:
        raise CheckpointError(f"{len(names)} class names for a model with {outputs} outputs ({card.name})")
    runner = InferenceModel.prepare(
        card.name,
        loaded.model,
        preprocess,
        device=target,
        dtype=torch_dtype,
        channels_last=card.channels_last,
    )
    return Classifier(runner=runner, class_names=names, weights=loaded.weights, info=loaded.info)


def _check_fixed_input(loaded, preprocess) -> None:
    """A model whose weights fix its input (a timm ViT's position table: timm's ``fixed_input_size``) is refused a
    crop of another size before any image is read, instead of failing inside its forward pass."""
    cfg = getattr(loaded.model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size") or ())
    if not cfg.get("fixed_input_size") or len(size) != 3 or preprocess is None:
        return
    if (preprocess.crop, preprocess.crop) != size[1:]:
        raise UsageError(
            f"{loaded.spec.card.name} takes {size[1]}x{size[2]} inputs only (its weights fix the size): "
            f"--crop {preprocess.crop} does not fit; leave --crop out or give --crop {size[1]}"
        )


def _check_task(card) -> None:
    if card.task not in ("image-classification", "unknown"):
        hint = " (rl multilabel runs CSRA heads)" if card.task == "multi-label" else ""
        raise UsageError(f"{card.name} is a {card.task} model; rl classify runs image classifiers{hint}")


def read_class_names(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise RlError(f"cannot read class names from {path}: {exc}") from exc
    if not names:
        raise RlError(f"{path} holds no class names")
    return names


# --- running -------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    path: str
    position: int
    indices: list[int]
    labels: list[str]
    probabilities: list[float]


def classify(
    clf: Classifier, inputs: list[Input], top_k: int = 5, options: RunOptions | None = None
) -> Iterator[Prediction | Problem]:
    """Top-k predictions (softmax probabilities) per image, and a Problem per unreadable input, in input order."""
    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    for batch, logits in forward_batches(clf.runner, inputs, options or RunOptions()):
        yield from predictions(clf, batch, logits, top_k)


def predictions(clf: Classifier, batch: ImageBatch, logits, top_k: int) -> list[Prediction | Problem]:
    """One batch's predictions and problems, in input order (the local runner and ``tasks.batch``'s workers)."""
    k = min(top_k, len(clf.class_names))
    results: list[Prediction | Problem] = list(batch.problems)
    if logits is not None:
        _check_scores(logits, clf)
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
    return sorted(results, key=lambda r: r.position)


def _check_scores(logits, clf: Classifier) -> None:
    """The model must return one score per class name: anything else would label images with the wrong names."""
    if logits.dim() != 2 or logits.shape[-1] != len(clf.class_names):
        from rlcli.errors import ModelRunError

        shape = "x".join(map(str, logits.shape))
        raise ModelRunError(
            f"{clf.runner.name} returned scores of shape {shape} for {len(clf.class_names)} class names: "
            f"rl classify needs one score per class (a [batch, classes] tensor)"
        )
