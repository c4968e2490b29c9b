"""Shell-completion helpers; they read the static index and plain-text lists, so pressing TAB never imports torch."""

from __future__ import annotations


def complete_model_name(incomplete: str) -> list[str]:
    """rl's registered names; ``timm/`` names from the list rl keeps of the installed timm's registry (written on
    the first use of a timm/ model: timm's registry cannot be read without importing torch); ``hf/`` names from the
    repositories in the local Hugging Face cache."""
    from rlcli.models.zoo import HF_PREFIX, TIMM_PREFIX

    if incomplete.startswith(TIMM_PREFIX):
        from rlcli.models.zoo.names import cached_timm_names

        return [TIMM_PREFIX + name for name in cached_timm_names() if (TIMM_PREFIX + name).startswith(incomplete)]
    if incomplete.startswith(HF_PREFIX):
        from rlcli.core.hub import cached_repo_ids

        return [HF_PREFIX + repo for repo in cached_repo_ids() if (HF_PREFIX + repo).startswith(incomplete)]
    from rlcli.models.catalog import load_index

    return [entry.name for entry in load_index().entries if entry.name.startswith(incomplete)]


SHELLS = ("bash", "zsh", "fish")


def completion_script(shell: str) -> str:
    """The script a shell sources to complete `rl`; it calls back into `rl` with _RL_COMPLETE set."""
    from typer.completion import get_completion_script

    return get_completion_script(prog_name="rl", complete_var="_RL_COMPLETE", shell=shell).rstrip("\n") + "\n"
