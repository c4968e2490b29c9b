"""Shell-completion helpers; they read the static index, so pressing TAB never imports torch."""

from __future__ import annotations


def complete_model_name(incomplete: str) -> list[str]:
    from rlcli.models.catalog import load_index

    return [entry.name for entry in load_index().entries if entry.name.startswith(incomplete)]


SHELLS = ("bash", "zsh", "fish")


def completion_script(shell: str) -> str:
    """The script a shell sources to complete `rl`; it calls back into `rl` with _RL_COMPLETE set."""
    from typer.completion import get_completion_script

    return get_completion_script(prog_name="rl", complete_var="_RL_COMPLETE", shell=shell).rstrip("\n") + "\n"
