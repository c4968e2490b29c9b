"""`rl multilabel train`: CSRA heads (and their backbone) trained on the user's labelled images.

The paper's recipe (CSRA's official main.py) is the default: SGD with momentum 0.9 and weight decay 1e-4, the heads'
learning rate 10x the backbone's, a linear warm-up over the first epochs, step decay (x0.1 every 4 epochs, VOC's
setting), binary cross-entropy, random horizontal flip and random resized crop (scale 0.7-1) then a square resize.
Evaluation uses the checkpoint's own preprocessing, exactly as `rl multilabel --labels` does, so the validation mAP
printed per epoch is the figure that command reproduces.

With ``freeze_backbone`` the backbone runs once per image (evaluation transform, no augmentation) and its feature
maps are cached on disk in float16; only the heads train, in seconds per epoch. Resumable state is written after
every completed epoch; a resumed run ends with the same weights as an uninterrupted one with the same seed (on the
same machine, with the same thread count and workers): the shuffling and augmentation of each epoch are seeded from
(seed, epoch), and the schedule is a function of the step.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlcli.core.checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint, save_torch_file
from rlcli.core.files import WrittenFile
from rlcli.core.images import Preprocess, describe_image_error, open_rgb
from rlcli.errors import CheckpointError, RlError, UsageError
from rlcli.tasks.multilabel import Truth, evaluate
from rlcli.tasks.multilabel_data import LabelledSet

STATE_FORMAT = "rlcli-multilabel-train-state"


@dataclass
class TrainSettings:
    """Every setting of a run (stored in the checkpoint and the resumable state)."""

    arch: str = "csra_resnet101"
    num_heads: int = 1
    lam: float = 0.1
    image_size: int | None = None  # square input side; None: the architecture's (448 ResNet, 224 ViT, 64 tiny)
    epochs: int = 30  # the official total_epoch
    batch_size: int = 16
    lr: float = 0.01  # the backbone's; the heads get lr * head_lr_factor
    head_lr_factor: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 2  # linear warm-up over these epochs' steps
    step_size: int = 4  # x gamma every step_size epochs (official: VOC 4, COCO and Wider 5)
    gamma: float = 0.1
    flip: bool = True  # random horizontal flip
    crop_scale: tuple[float, float] | None = (0.7, 1.0)  # RandomResizedCrop's area range; None: no crop
    freeze_backbone: bool = False
    seed: int = 0
    workers: int = 0  # decoding processes

    def check(self) -> None:
        """Usage errors for settings that cannot train (checked before any work)."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "step_size": self.step_size}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        finite = {"lr": self.lr, "head_lr_factor": self.head_lr_factor, "momentum": self.momentum,
                  "weight_decay": self.weight_decay, "gamma": self.gamma, "lam": self.lam}  # fmt: skip
        for name, value in finite.items():
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number >= 0, not {value}")
        if self.warmup_epochs < 0:
            raise UsageError(f"--warmup-epochs must be >= 0, not {self.warmup_epochs}")
        if self.image_size is not None and not 8 <= self.image_size <= 4096:
            raise UsageError(f"--image-size must be from 8 to 4096 px, not {self.image_size}")
        if self.crop_scale is not None:
            low, high = self.crop_scale
            if not 0 < low <= high <= 1:
                raise UsageError(f"--crop-scale must be two numbers 0 < low <= high <= 1, not {low},{high}")

    def to_mapping(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop_scale"] = list(self.crop_scale) if self.crop_scale else None
        return data

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("crop_scale") is not None:
            values["crop_scale"] = tuple(values["crop_scale"])
        return cls(**values)


@dataclass
class EpochReport:
    epoch: int  # 1-based
    loss: float  # mean training loss
    val_mAP: float
    seconds: float  # training and validation
    best: bool  # the best validation mAP so far: the checkpoint was written


@dataclass
class TrainResult:
    output: Path
    best_epoch: int
    best_mAP: float
    epochs: list[EpochReport] = field(default_factory=list)
    feature_seconds: float = 0.0  # computing the frozen backbone's features (0 when they came from the cache)
    written: WrittenFile | None = None


@dataclass
class Hooks:
    """Callbacks for the CLI: progress within an epoch, each finished epoch, and messages."""

    on_batch: Callable[[int, int, int, float], None] = lambda epoch, done, total, loss: None
    on_epoch: Callable[[EpochReport], None] = lambda report: None
    note: Callable[[str], None] = lambda message: None


def state_path(output: Path) -> Path:
    """Where the resumable state of a run writing ``output`` lives."""
    return output.with_name(output.name + ".state.pt")


# --- model and initialisation --------------------------------------------------------------------------------


def build_model(settings: TrainSettings, num_classes: int) -> tuple[nn.Module, Preprocess]:
    """The CSRA network for ``settings`` and its evaluation preprocessing at ``image_size``."""
    from dataclasses import replace

    from rlcli.models.registry import get_spec

    spec = get_spec(settings.arch)
    if spec.card.family != "csra":
        raise UsageError(f"{settings.arch} is not a CSRA model (rl models csra lists them)")
    base = spec.card.preprocess or Preprocess()
    side = settings.image_size or base.crop
    arguments: dict[str, Any] = {"num_classes": num_classes, "num_heads": settings.num_heads, "lam": settings.lam}
    if "image_size" in spec.accepted_arguments():
        arguments["image_size"] = side
    try:
        net = spec.build((3, side, side), **arguments)
    except ValueError as exc:
        raise UsageError(f"cannot build {settings.arch}: {exc}") from exc
    return net, replace(base, resize=side, crop=side, square=True)


def model_arguments(net: nn.Module, num_classes: int) -> dict[str, Any]:
    arguments = {"num_classes": num_classes, "num_heads": net.num_heads, "lam": float(net.lam)}
    if hasattr(net, "grid"):
        arguments["image_size"] = net.grid * 16
    return arguments


def initialise_backbone(net: nn.Module, arch: str, init: Path | None) -> str:
    """Backbone weights from ``init``, else ImageNet weights found in the local caches; returns what was done, in
    words. The heads always start from the constructor's initialisation."""
    if init is not None:
        state = load_checkpoint(init).state_dict
        return f"backbone from {init}: " + _load_backbone(net, state, str(init))
    found = _cached_imagenet_weights(arch)
    if found is None:
        return f"backbone from scratch: no ImageNet weights for {arch} in the local caches ({_where_looked(arch)})"
    state = torch.load(found, map_location="cpu", weights_only=True)
    return f"backbone from ImageNet weights {found}: " + _load_backbone(net, state, str(found))


def _load_backbone(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> str:
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = _resize_positions(state["pos_embed"], own["pos_embed"].shape[1])
    matched = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not matched:
        raise CheckpointError(f"{source}: none of its tensors fits this backbone (names or shapes differ)")
    net.load_state_dict(matched, strict=False)
    missing = len(own) - len(matched)
    return f"{len(matched)} of the backbone's {len(own)} tensors" + (f" ({missing} left as built)" if missing else "")


def _resize_positions(table: torch.Tensor, rows: int) -> torch.Tensor:
    """A ViT position table for another grid: the class token's row kept, the grid resized bicubically (timm's way)."""
    old, new = math.isqrt(table.shape[1] - 1), math.isqrt(rows - 1)
    grid = table[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(table.dtype)], dim=1)


# The ImageNet weights the official code starts from: torchvision's ResNets, and timm's original ViT ports
# (pipeline/vit_csra.py's default_cfgs), found where torch.hub would have saved them.
_VIT_FILES = {"csra_vit_b16": "jx_vit_base_p16_224-80ecf9dd.pth", "csra_vit_l16": "jx_vit_large_p16_224-4ee7a4dc.pth"}


def _cached_imagenet_weights(arch: str) -> Path | None:
    from rlcli.core.hub import torch_hub_checkpoints

    folder = torch_hub_checkpoints()
    if arch in _VIT_FILES:
        path = folder / _VIT_FILES[arch]
        return path if path.is_file() else None
    if arch.startswith("csra_resnet"):
        import torchvision

        weights = torchvision.models.get_model_weights(arch.removeprefix("csra_")).IMAGENET1K_V1
        path = folder / weights.url.rsplit("/", 1)[-1]
        return path if path.is_file() else None
    return None


def _where_looked(arch: str) -> str:
    from rlcli.core.hub import torch_hub_checkpoints

    if arch in _VIT_FILES:
        return f"looked for {torch_hub_checkpoints() / _VIT_FILES[arch]}"
    if arch.startswith("csra_resnet"):
        name = arch.removeprefix("csra_")
        return f"looked in {torch_hub_checkpoints()} for torchvision's {name} IMAGENET1K_V1 weights"
    return f"{arch} has no released ImageNet weights"


# --- data ----------------------------------------------------------------------------------------------------


class ImageSet(torch.utils.data.Dataset):
    """Decoded images with their targets (1 positive, 0 negative) and loss masks (0 for a difficult pair)."""

    def __init__(self, data: LabelledSet, transform: Callable) -> None:
        self.data, self.transform = data, transform
        self.targets, self.masks = targets_of(data.truths, len(data.class_names))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        path = self.data.images[index]
        try:
            image = open_rgb(path)
        except Exception as exc:  # any decoding failure is this file's error, said in words
            raise RlError(f"cannot read {path}: {describe_image_error(exc)}") from None
        return self.transform(image), self.targets[index], self.masks[index]


def targets_of(truths: list[Truth], classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    targets, masks = torch.zeros(len(truths), classes), torch.ones(len(truths), classes)
    for row, truth in enumerate(truths):
        targets[row, list(truth.positives)] = 1.0
        masks[row, list(truth.difficult)] = 0.0
    return targets, masks


def training_transform(preprocess: Preprocess, settings: TrainSettings) -> Callable:
    """The official training augmentation (pipeline/dataset.py): flip, random resized crop, square resize."""
    from torchvision import transforms

    side = preprocess.crop
    steps: list[Any] = [transforms.RandomHorizontalFlip()] if settings.flip else []
    if settings.crop_scale is not None:
        steps.append(transforms.RandomResizedCrop(side, scale=settings.crop_scale, antialias=True))
    steps += [
        transforms.Resize((side, side), antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(list(preprocess.mean), list(preprocess.std)),
    ]
    return transforms.Compose(steps)


def _loader(dataset, batch_size: int, workers: int, shuffle_seed: int | None) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle_seed is not None, generator=generator, num_workers=workers
    )


# --- frozen backbone: features cached on disk ----------------------------------------------------------------


def cached_features(
    net: nn.Module, data: LabelledSet, preprocess: Preprocess, settings: TrainSettings, cache_dir: Path, hooks: Hooks
) -> tuple[torch.Tensor, bool]:
    """The backbone's feature maps of every image, float16, [images, channels, h, w]; computed once per backbone,
    preprocessing and image list, then read from ``cache_dir``. Returns them and whether they were computed now."""
    key = _feature_key(net, data, preprocess)
    path = cache_dir / f"csra-features-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["features"], False
        except Exception:  # an unreadable cache entry is recomputed
            hooks.note(f"cached features in {path} are unreadable; computing them again")
    net.eval()
    batches = []
    loader = _loader(ImageSet(data, preprocess), settings.batch_size, settings.workers, None)
    with torch.inference_mode():
        for done, (images, _, _) in enumerate(loader, start=1):
            batches.append(net.backbone(images).to(torch.float16))
            hooks.on_batch(0, done, len(loader), math.nan)
    features = torch.cat(batches)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_torch_file(path, {"features": features})
    return features, True


def _feature_key(net: nn.Module, data: LabelledSet, preprocess: Preprocess) -> str:
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        if not name.startswith("classifier."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(preprocess.to_mapping(), sort_keys=True).encode())
    for path in data.images:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


# --- the schedule ----------------------------------------------------------------------------------------------


def learning_rate_factor(settings: TrainSettings, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The multiplier of the base rates at ``step`` (0-based) of ``epoch`` (0-based): linear warm-up over the first
    warmup_epochs, times gamma^(epoch // step_size)."""
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    done = epoch * steps_per_epoch + step
    warm = min(1.0, (done + 1) / warmup_steps) if warmup_steps else 1.0
    return warm * settings.gamma ** (epoch // settings.step_size)


def make_optimizer(net: nn.Module, settings: TrainSettings) -> torch.optim.SGD:
    """SGD over two groups as the official main.py splits them: parameters named 'classifier' (the heads) at
    lr x head_lr_factor, the rest at lr; a frozen backbone's group is left out."""
    heads = [p for n, p in net.named_parameters() if "classifier" in n]
    backbone = [p for n, p in net.named_parameters() if "classifier" not in n]
    groups = [
        {"params": heads, "lr": settings.lr * settings.head_lr_factor, "base_lr": settings.lr * settings.head_lr_factor}
    ]
    if not settings.freeze_backbone:
        groups.append({"params": backbone, "lr": settings.lr, "base_lr": settings.lr})
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the (image, class) pairs that are not difficult."""
    losses = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (losses * masks).sum() / masks.sum().clamp(min=1)


# --- the run -------------------------------------------------------------------------------------------------


def train(
    train_set: LabelledSet,
    val_set: LabelledSet,
    output: Path,
    settings: TrainSettings,
    *,
    init: Path | None = None,
    cache_dir: Path | None = None,
    resume: bool = False,
    hooks: Hooks | None = None,
) -> TrainResult:
    """Train, validate after every epoch, write the best epoch's checkpoint to ``output`` (atomically) and the
    resumable state beside it. ``resume`` continues from that state (its settings win)."""
    hooks = hooks or Hooks()
    saved = _read_state(output) if resume else None
    if saved is not None:
        stored = TrainSettings.from_mapping(saved["settings"])
        if settings.epochs > stored.epochs:
            stored.epochs = settings.epochs  # resuming may extend a run
        settings = stored
    settings.check()
    if list(val_set.class_names) != list(train_set.class_names):
        raise UsageError("the validation set's classes differ from the training set's")
    data = {"classes": list(train_set.class_names), "train_images": len(train_set), "val_images": len(val_set)}
    if saved is not None and saved.get("data") != data:
        raise UsageError(
            f"{state_path(output)} is the state of a run on other data ({_describe(saved.get('data'))}); "
            f"this one has {_describe(data)}"
        )
    torch.manual_seed(settings.seed)
    net, preprocess = build_model(settings, len(train_set.class_names))
    if saved is not None:
        net.load_state_dict(saved["model"])
        hooks.note(f"resuming {output} after epoch {saved['epoch']} of {settings.epochs}")
        init_note = saved["init"]
    else:
        init_note = initialise_backbone(net, settings.arch, init)
        hooks.note(init_note)
    optimizer = make_optimizer(net, settings)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
    trainer = _Trainer(net, preprocess, settings, train_set, val_set, hooks, cache_dir)
    result = TrainResult(output, saved["best_epoch"] if saved else 0, saved["best_mAP"] if saved else -1.0)
    result.epochs = [EpochReport(**e) for e in saved["history"]] if saved else []
    result.feature_seconds = trainer.prepare()
    meta = {"init": init_note, "train_images": len(train_set), "val_images": len(val_set), "val_source": val_set.source}
    for epoch in range(saved["epoch"] if saved else 0, settings.epochs):
        start = time.perf_counter()
        loss = trainer.train_epoch(optimizer, epoch)
        val_map = trainer.validation_map()
        best = val_map > result.best_mAP
        report = EpochReport(epoch + 1, loss, val_map, time.perf_counter() - start, best)
        if best:
            result.best_epoch, result.best_mAP = epoch + 1, val_map
            result.written = _write_checkpoint(output, net, train_set.class_names, preprocess, settings, report, meta)
        result.epochs.append(report)
        _write_state(output, net, optimizer, settings, result, init_note, data)
        hooks.on_epoch(report)
    return result


class _Trainer:
    """One run's data and steps, for the full network or (frozen backbone) the heads on cached features."""

    def __init__(self, net, preprocess, settings, train_set, val_set, hooks, cache_dir) -> None:
        self.net, self.preprocess, self.settings, self.hooks = net, preprocess, settings, hooks
        self.train_set, self.val_set, self.cache_dir = train_set, val_set, cache_dir
        self.train_targets = targets_of(train_set.truths, len(train_set.class_names))

    def prepare(self) -> float:
        if not self.settings.freeze_backbone:
            return 0.0
        from rlcli.core.hub import rl_cache_dir

        folder = self.cache_dir or rl_cache_dir() / "features"
        start = time.perf_counter()
        self.train_features, computed = cached_features(
            self.net, self.train_set, self.preprocess, self.settings, folder, self.hooks
        )
        self.val_features, computed_val = cached_features(
            self.net, self.val_set, self.preprocess, self.settings, folder, self.hooks
        )
        for p in self.net.parameters():
            p.requires_grad_(False)
        for p in self.net.classifier.parameters():
            p.requires_grad_(True)
        return time.perf_counter() - start if computed or computed_val else 0.0

    def _batches(self, epoch: int):
        seed = self.settings.seed * 1_000_003 + epoch
        torch.manual_seed(seed)  # the augmentation's draws in this process
        if self.settings.freeze_backbone:
            order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(seed))
            targets, masks = self.train_targets
            for start in range(0, len(order), self.settings.batch_size):
                index = order[start : start + self.settings.batch_size]
                yield self.train_features[index].float(), targets[index], masks[index]
            return
        dataset = ImageSet(self.train_set, training_transform(self.preprocess, self.settings))
        yield from _loader(dataset, self.settings.batch_size, self.settings.workers, seed)

    def train_epoch(self, optimizer: torch.optim.SGD, epoch: int) -> float:
        net, settings = self.net, self.settings
        net.train()
        if settings.freeze_backbone:
            net.eval()  # batch-norm statistics of the frozen backbone stay as they are
        steps = math.ceil(len(self.train_set) / settings.batch_size)
        total, count = 0.0, 0
        for step, (inputs, targets, masks) in enumerate(self._batches(epoch)):
            factor = learning_rate_factor(settings, epoch, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            logits = net.classifier(inputs) if settings.freeze_backbone else net(inputs)
            loss = masked_bce(logits, targets, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(inputs), count + len(inputs)
            self.hooks.on_batch(epoch + 1, step + 1, steps, total / count)
        return total / max(count, 1)

    def validation_scores(self) -> torch.Tensor:
        self.net.eval()
        with torch.inference_mode():
            if self.settings.freeze_backbone:
                chunks = [
                    self.net.classifier(self.val_features[i : i + 256].float())
                    for i in range(0, len(self.val_features), 256)
                ]
            else:
                loader = _loader(
                    ImageSet(self.val_set, self.preprocess), self.settings.batch_size, self.settings.workers, None
                )
                chunks = [self.net(images) for images, _, _ in loader]
        return torch.cat(chunks).sigmoid()

    def validation_map(self) -> float:
        scores = self.validation_scores().tolist()
        result = evaluate(scores, self.val_set.truths, self.val_set.class_names)
        return 0.0 if math.isnan(result.mAP) else result.mAP


# --- files ---------------------------------------------------------------------------------------------------


def _write_checkpoint(output, net, class_names, preprocess, settings, report: EpochReport, meta) -> WrittenFile:
    arguments = model_arguments(net, len(class_names))
    info = CheckpointInfo(
        arch=settings.arch,
        model_args=arguments,
        class_names=list(class_names),
        extra={
            "preprocess": preprocess.to_mapping(),
            "lam": arguments["lam"],
            "num_heads": arguments["num_heads"],
            "metrics": {"val_mAP": report.val_mAP, "epoch": report.epoch, "train_loss": report.loss},
            "training": {**settings.to_mapping(), **meta},
        },
    )
    return save_checkpoint(output, net.state_dict(), info)


def _describe(data: dict | None) -> str:
    if not isinstance(data, dict):
        return "unknown"
    return f"{len(data['classes'])} classes, {data['train_images']} training and {data['val_images']} validation images"


def _write_state(output: Path, net, optimizer, settings, result: TrainResult, init_note: str, data: dict) -> None:
    payload = {
        "data": data,
        "format": STATE_FORMAT,
        "settings": settings.to_mapping(),
        "epoch": result.epochs[-1].epoch,
        "model": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "best_epoch": result.best_epoch,
        "best_mAP": result.best_mAP,
        "history": [asdict(e) for e in result.epochs],
        "init": init_note,
    }
    save_torch_file(state_path(output), payload)


def _read_state(output: Path) -> dict[str, Any]:
    path = state_path(output)
    if not path.is_file():
        raise UsageError(f"nothing to resume: {path} does not exist (it is written after each completed epoch)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged state file is one error line
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not the state of an `rl multilabel train` run")
    return payload
