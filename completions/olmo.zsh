#compdef olmo

_olmo_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _OLMO_COMPLETE=complete_zsh olmo)
}

compdef _olmo_completion olmo
