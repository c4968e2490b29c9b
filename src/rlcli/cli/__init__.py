"""The `rl` command: one typer app, one module per command, one error boundary.

Heavy libraries (torch, torchvision, fvcore) are imported inside the commands that need them, so that `rl --help`,
`rl --version`, `rl models` and shell completion start instantly.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import warnings

import typer

from rlcli import __version__
from rlcli.cli import _common, cache, classify, compare, generate, models, multilabel, summary, swa_merge

HELP = """Inspect and run the classic networks of a deep-learning reading list.

Examples:

\b
  rl models resnet                   # what rl knows (no torch import)
  rl summary swin_t                  # layers, params, MACs/FLOPs, memory
  rl summary resnet50 resnext50_32x4d --depth 1
  rl compare --macs 1G               # ResNet vs ResNeXt vs MobileNet at 1 GMACs
  rl summary mypkg.nets:Net --input-size 1x28x28 --json
  rl summary timm/convnext_tiny --train   # timm's zoo (rlcli[timm]); a training step's cost
  rl generate --top-k 40 "Hello"     # GPT-2 text, streamed
  rl generate --dtype int8 --prompts prompts.jsonl -o out.jsonl
  rl classify photos/ -m resnet50    # top-5 ImageNet labels
  rl classify photos/ -m resnet50 -o labels/ --ray   # sharded output, on a Ray cluster
  rl multilabel photos/ -w csra.pth  # CSRA multi-label recognition
  rl multilabel train labels.csv -o mine.pt   # CSRA heads on your own labels
  rl swa-merge ckpt/*.pt -o swa.pt   # average checkpoints (SWA)
"""

app = typer.Typer(
    name="rl",
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors (also RL_DEBUG=1)."),
) -> None:
    if debug:
        _common.STATE.debug = True


summary.register(app)
models.register(app)
swa_merge.register(app)
generate.register(app)
classify.register(app)
multilabel.register(app)
compare.register(app)
cache.register(app)


class _PipeClosed(BaseException):
    """The reader of stdout went away (`rl ... | head`). A BaseException, so that nothing on the way out, typer
    included (which turns EPIPE into exit 1), mistakes it for a failure of the command."""


class _Terminated(BaseException):
    """SIGTERM arrived. Raised in the main thread so that every `finally` runs: temporary files are removed."""


def _pipe_closed_is_not_a_failure(command):
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BrokenPipeError as exc:
            raise _PipeClosed from exc

    return run


for _info in app.registered_commands:
    _info.callback = _pipe_closed_is_not_a_failure(_info.callback)


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def main() -> None:
    """Entry point of the `rl` script: runs the app and turns failures into one `error:` line."""
    from rlcli.errors import RlError

    signal.signal(signal.SIGTERM, _on_sigterm)
    if not _common.STATE.debug and "--debug" not in sys.argv:
        # rl says what matters in its own words; library warnings (torch's, Pillow's) are not for its users.
        warnings.simplefilter("ignore")
    try:
        code = app(standalone_mode=False)
    except _CLICK_USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(exc.exit_code)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _fail(f"{_lower_first(exc.format_message()).rstrip('.')}{hint}", exc.exit_code)
    except typer.Abort:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)
    except RlError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)
    except (_PipeClosed, BrokenPipeError):
        # `rl ... | head` closed the pipe: not an error of ours, and nothing more to say. 141 = 128 + SIGPIPE, what
        # a shell reports for a program the closed pipe stopped; stdout goes to /dev/null so that the final flush
        # at exit cannot complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except _Terminated:
        sys.stderr.write("\nterminated\n")
        sys.exit(143)
    except Exception as exc:
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)
    if code == 130:
        # typer turns Ctrl-C inside a command into Exit(130), which reaches us as a plain return value.
        sys.stderr.write("\ninterrupted\n")
    sys.exit(code if isinstance(code, int) else 0)


# Typer may use click or its own vendored copy; BadParameter's ancestry names the class either way.
_CLICK_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _fail(message: str, code: int) -> None:
    if _common.STATE.debug:
        import traceback

        traceback.print_exc()
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)
