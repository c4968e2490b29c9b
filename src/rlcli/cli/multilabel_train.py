"""`rl multilabel train DATA -o model.pt`: CSRA heads trained on your own labelled images."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from rlcli.cli._common import note, parse_floats, print_json, progress_bar
from rlcli.cli._completion import complete_model_name

HELP = """Train CSRA heads (and their backbone) on your own labelled images.

DATA is the labels CSV that `rl multilabel --labels` reads (image path relative to the CSV, then its class names;
'name?' marks a difficult one, left out of the loss and the figures), a VOC-style folder (Annotations/*.xml,
ImageSets/Main/SPLIT.txt, JPEGImages/), or a COCO-style instances JSON. --val gives a held-out set in the same
forms; without it a seeded --val-fraction of DATA is held out (said on stderr).

The backbone starts from ImageNet weights found in the local torch hub cache (never downloaded), from --init FILE,
or from scratch (said on stderr). Defaults are the paper's recipe (the official main.py): SGD, momentum 0.9, weight
decay 1e-4, heads at 10x the backbone's learning rate 0.01, 2 warm-up epochs, x0.1 every 4 epochs, random flip and
resized crop, batch 16, 30 epochs. --freeze-backbone computes the backbone's features once (cached on disk in
float16) and trains only the heads.

After every epoch the validation mAP is printed; the best epoch is written atomically to OUT as a self-describing
checkpoint (architecture, classes, lambda, heads, preprocessing, metrics, settings) that `rl multilabel -w OUT`
reads with no other flag. OUT.state.pt holds the last completed epoch: --resume continues an interrupted run.

Examples:

\b
  rl multilabel train labels.csv -o mine.pt -m csra_resnet50 --heads 4 --lam 0.5
  rl multilabel train VOCdevkit/VOC2007 --val-split test -o voc.pt --freeze-backbone --epochs 20
  rl multilabel train annotations/instances_train2014.json --val annotations/instances_val2014.json -o coco.pt
  rl multilabel train labels.csv -o mine.pt --resume
"""


@functools.cache
def train_click_command():
    """The click command behind `rl multilabel train` (dispatched to by the multilabel command)."""
    app = typer.Typer(rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
    app.command("train", help=HELP)(train_command)
    return typer.main.get_command(app)


def train_command(
    data: Path = typer.Argument(..., metavar="DATA", help="Labels CSV, VOC-style folder or COCO instances JSON."),
    output: Path = typer.Option(..., "--output", "-o", help="The checkpoint to write (.pt or .safetensors)."),
    val: Path | None = typer.Option(None, "--val", help="Held-out set (same forms as DATA)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of DATA held out when --val is not given."),
    split: str = typer.Option("trainval", "--split", help="VOC folder: the ImageSets/Main list to train on."),
    val_split: str | None = typer.Option(None, "--val-split", help="VOC folder: a list of DATA to validate on."),
    images: Path | None = typer.Option(None, "--images", help="COCO JSON: the image folder (default: its own)."),
    model: str = typer.Option(
        "csra_resnet101",
        "--model",
        "-m",
        help="A CSRA architecture (rl models csra).",
        autocompletion=complete_model_name,
    ),
    heads: int = typer.Option(1, "--heads", help="CSRA heads: 1, 2, 4, 6 or 8."),
    lam: float = typer.Option(0.1, "--lam", help="lambda, the weight of the attention logit."),
    image_size: int | None = typer.Option(None, "--image-size", help="Square input side (default: the model's)."),
    epochs: int = typer.Option(30, "--epochs", help="Epochs."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per step."),
    lr: float = typer.Option(0.01, "--lr", help="The backbone's learning rate."),
    head_lr_factor: float = typer.Option(
        10.0, "--head-lr-factor", help="The heads' learning rate over the backbone's."
    ),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="SGD weight decay."),
    warmup_epochs: int = typer.Option(2, "--warmup-epochs", help="Epochs of linear warm-up."),
    step_size: int = typer.Option(4, "--step-size", help="Multiply the rates by --gamma every this many epochs."),
    gamma: float = typer.Option(0.1, "--gamma", help="Step decay factor."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flip."),
    crop_scale: str = typer.Option("0.7,1.0", "--crop-scale", help="Random resized crop's area range, or 'none'."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Train the heads on cached features."),
    init: Path | None = typer.Option(None, "--init", help="Backbone weights to start from (a checkpoint file)."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Feature cache (default: ~/.cache/rlcli/features)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run that writes OUT from OUT.state.pt."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, shuffling, augmentation and the split."),
    workers: int = typer.Option(0, "--workers", "-j", min=0, help="Decoding processes (0: in this process)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON."),
) -> None:
    from rlcli.core.files import check_output_file
    from rlcli.errors import UsageError
    from rlcli.tasks.multilabel_data import read_labelled_set, split_off
    from rlcli.tasks.multilabel_train import EpochReport, Hooks, TrainSettings, state_path, train

    scale = None if crop_scale.strip().lower() == "none" else parse_floats(crop_scale, "--crop-scale", count=2)
    settings = TrainSettings(
        arch=model, num_heads=heads, lam=lam, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
        head_lr_factor=head_lr_factor, momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        step_size=step_size, gamma=gamma, flip=flip, crop_scale=scale, freeze_backbone=freeze_backbone, seed=seed,
        workers=workers,
    )  # fmt: skip
    settings.check()
    if heads not in (1, 2, 4, 6, 8):
        raise UsageError(f"--heads must be 1, 2, 4, 6 or 8, not {heads}")
    if resume:
        if not state_path(output).is_file():
            raise UsageError(f"nothing to resume: {state_path(output)} does not exist")
    else:
        check_output_file(output, force=force)
        check_output_file(state_path(output), force=True)
    train_set = read_labelled_set(data, split=split, images=images)
    if val is not None:
        val_set = read_labelled_set(val, train_set.class_names, split=val_split or "test", images=images)
    elif val_split is not None:
        val_set = read_labelled_set(data, train_set.class_names, split=val_split, images=images)
    else:
        train_set, val_set = split_off(train_set, val_fraction, seed)
        note(f"no --val: validating on {len(val_set)} of the images (a seeded {val_fraction:g} share of {data})")
    note(f"{len(train_set)} training images, {len(val_set)} validation images, {len(train_set.class_names)} classes")

    with progress_bar(True) as report:

        def on_batch(epoch: int, done: int, total: int, loss: float) -> None:
            label = "computing features" if epoch == 0 else f"epoch {epoch}/{settings.epochs} loss {loss:.4f}"
            report(label, done, total)

        def on_epoch(epoch: EpochReport) -> None:
            mark = "  best: written" if epoch.best else ""
            note(
                f"epoch {epoch.epoch}/{settings.epochs}: loss {epoch.loss:.4f}, val mAP {100 * epoch.val_mAP:.2f} "
                f"({epoch.seconds:.2f} s){mark}"
            )

        try:
            result = train(
                train_set,
                val_set,
                output,
                settings,
                init=init,
                cache_dir=cache_dir,
                resume=resume,
                hooks=Hooks(on_batch=on_batch, on_epoch=on_epoch, note=note),
            )
        except KeyboardInterrupt:
            note(f"interrupted: {state_path(output)} holds the last completed epoch; continue with --resume")
            raise
    if result.feature_seconds:
        note(f"backbone features computed in {result.feature_seconds:.1f} s (cached for later runs)")
    best = f"best epoch {result.best_epoch}: val mAP {100 * result.best_mAP:.2f}, written to {output}"
    if json_out:
        from dataclasses import asdict

        print_json(
            {
                "output": str(output),
                "best_epoch": result.best_epoch,
                "best_mAP": result.best_mAP,
                "feature_seconds": result.feature_seconds,
                "epochs": [asdict(e) for e in result.epochs],
            }
        )
    else:
        typer.echo(best)
