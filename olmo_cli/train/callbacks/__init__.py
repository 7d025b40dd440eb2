"""What happens around the steps: checkpoints, metric sinks, evaluation, the UI feed (docs/architecture.md
rule 13). The loop only steps; each of these is a callback with named hooks and its own state_dict, so
what it remembers (its checkpoints, a wandb run id) travels in `train.pt` and survives a resume. The
hooks, and the list that calls them in order, are in `base.py`.
"""
