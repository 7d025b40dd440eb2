"""The training engine: optimizer and parameter groups, LR and clip schedules, run length, loss, gradient
clipping, and (later) the loop, parallelism and checkpoints. Plain functions over torch; nothing here
prints or imports the CLI layer."""
