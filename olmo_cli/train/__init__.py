"""The training engine, entered through `run.run` (train, resume and finetune alike; progress as the
events of events.py). Around the loop (loop.py): prepare.py (data, run directory), parallelize.py
(activation checkpointing, compile, FSDP2), optim.py / optim_state.py / clip.py / schedule.py,
loader.py (this rank's batches in the data order), restore.py and state.py (checkpoints back in),
duration.py, plan.py (`--dry-run`), fits.py, speed.py, signals.py, launch.py (`--nproc-per-node`),
finetune.py (a finetune's config), and callbacks/ (checkpointing, in-loop eval, metrics, W&B, the
event feed). Nothing here prints or imports the CLI layer.
"""
