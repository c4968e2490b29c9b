#compdef rl

_rl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _RL_COMPLETE=complete_zsh rl)
}

compdef _rl_completion rl
