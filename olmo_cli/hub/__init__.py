"""Published checkpoints: the official index, Hugging Face revisions, and a robust HTTP downloader.

- `index`: model names -> the published `Step,Checkpoint Directory` CSV files, parsed.
- `hf`: the revisions (branches such as `step1000-tokens4B`) of a Hugging Face model repository.
- `listing`: which upstream files a checkpoint directory URL holds (HEAD probes; no listing API).
- `download`: parallel, ranged, resumable, verified downloads into `step{N}-unsharded/` directories.

Nothing here prints: progress and retries are reported as the events in `events`.
"""
