"""`olmo serve`: an OpenAI-compatible HTTP server for a checkpoint (the work is olmo_cli/serve/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from olmo_cli.commands._options import Dtype, DtypeOption, RunDeviceOption

API_KEY_ENV = "OLMO_API_KEY"


def serve_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CKPT",
            help="A checkpoint of any kind olmo generate takes: stepN-unsharded/, a sharded stepN/, a run "
            "folder (its latest), a Hugging Face Olmo directory, a quantized directory, a LoRA adapter.",
            show_default=False,
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            "--host", help="The address to listen on; anything but loopback is reachable by others."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="The port (0: any free one).")] = 8000,
    device: RunDeviceOption = None,
    dtype: DtypeOption = Dtype.auto,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The model id clients send (default: the checkpoint folder's name).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help=f"Require Authorization: Bearer KEY on every request but /health (default: ${API_KEY_ENV}).",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option("--max-batch", min=1, help="Requests generated together (each holds a KV cache slot)."),
    ] = 8,
    max_tokens_in_flight: Annotated[
        int | None,
        typer.Option(
            "--max-tokens-in-flight",
            min=2,
            help="Prompt plus max_tokens summed over running requests (default: max-batch full contexts).",
            show_default=False,
        ),
    ] = None,
    max_queue: Annotated[
        int,
        typer.Option("--max-queue", min=0, help="Requests that may wait; beyond it: 503 with Retry-After."),
    ] = 64,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for the model (default: torch's, one per core). One fewer than the cores "
            "leaves one for answering HTTP.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a checkpoint over HTTP with the OpenAI API: /v1/completions, /v1/chat/completions (both with
    stream: true), /v1/models and /health.

    Concurrent requests share forward passes (continuous batching): a request joins between two decode
    steps and leaves as soon as it finishes. Stop with Ctrl-C or SIGTERM: requests in flight finish
    first (up to 30 s). Needs the serve extra: pip install 'olmo-cli[serve]'.

    Examples:

      olmo serve runs/olmo-tiny

      curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json'
      -d '{"model": "olmo-tiny", "prompt": "Language modeling is", "max_tokens": 16, "temperature": 0}'

      olmo serve ckpts/OLMo-2-1124-7B-Instruct --device cuda --host 0.0.0.0 --api-key "$KEY"
    """
    # Before torch loads OpenMP: idle worker threads sleep instead of spinning, so a server sharing its
    # cores with other work (or with its own HTTP thread) is not slowed down many times over.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from olmo_cli import ui
    from olmo_cli.errors import ConfigError

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "olmo serve needs starlette and uvicorn, which are not installed",
            hint="pip install 'olmo-cli[serve]' (or pip install starlette uvicorn)",
        ) from None
    from olmo_cli.serve.run import ServeOptions, is_loopback, serve

    key = api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(host) and key is None:
        ui.warn(f"listening on {host} without an API key: anyone who can reach it can use the model")
    options = ServeOptions(
        checkpoint=checkpoint,
        host=host,
        port=port,
        device=device,
        dtype=dtype.value,
        name=name,
        api_key=key,
        max_batch=max_batch,
        max_tokens_in_flight=max_tokens_in_flight,
        max_queue=max_queue,
        threads=threads,
    )
    serve(options, lambda text: ui.console.print(text, markup=False, highlight=False, soft_wrap=True))
