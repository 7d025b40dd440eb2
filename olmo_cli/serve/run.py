"""`serve(options)`: load a checkpoint, start the batching engine, answer HTTP until a signal stops it.

uvicorn runs the server on the calling thread and handles SIGINT/SIGTERM: it stops accepting
connections, lets the requests in flight finish (for up to `graceful_s` seconds), then the engine stops,
cancelling whatever is still running. What happens is reported to `on_message`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_cli.errors import UsageError

__all__ = ["ServeOptions", "build_service", "is_loopback", "listen", "serve"]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServeOptions:
    checkpoint: Path
    host: str = LOOPBACK
    port: int = 8000
    device: str | None = None
    dtype: str = "auto"
    name: str | None = None  # the model id clients use (default: the checkpoint folder's name)
    api_key: str | None = None
    max_batch: int = 8
    max_tokens_in_flight: int | None = None  # default: max_batch full contexts
    max_queue: int = 64
    max_body_bytes: int = 4 << 20
    graceful_s: float = 30.0
    threads: int | None = None  # torch's CPU threads (None: torch's default)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_service(options: ServeOptions) -> Any:
    """The loaded model behind its engine (not started) as a `Service`; UsageError for settings that
    cannot work (limits below one request, a cache larger than the device's memory)."""
    from olmo_cli.api.model import load
    from olmo_cli.memory import device_memory, human_bytes
    from olmo_cli.serve.engine import Engine
    from olmo_cli.serve.service import Service
    from olmo_cli.serve.slots import SlotCache

    if options.max_batch < 1 or options.max_queue < 0:
        raise UsageError("--max-batch must be at least 1 and --max-queue at least 0")
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    model = load(options.checkpoint, device=options.device, dtype=options.dtype)
    context = model.max_sequence_length
    in_flight = options.max_tokens_in_flight or options.max_batch * context
    if in_flight < 2:
        raise UsageError(f"--max-tokens-in-flight {in_flight} leaves no room for a request")
    need = SlotCache.bytes_for(model.torch_module, options.max_batch, context)
    have = device_memory(model.device)
    if have is not None and need > have:
        fits = max(have // SlotCache.bytes_for(model.torch_module, 1, context), 0)
        raise UsageError(
            f"--max-batch {options.max_batch} needs a KV cache of {human_bytes(need)} ({context:,} positions "
            f"per request), more than the {human_bytes(have)} free on {model.device}",
            hint=f"use --max-batch {max(fits, 1)} or less",
        )
    engine = Engine(
        model.torch_module,
        max_batch=options.max_batch,
        max_tokens_in_flight=in_flight,
        max_queue=options.max_queue,
        context=context,
    )
    name = options.name or options.checkpoint.resolve().name
    return Service(model, engine, name)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); UsageError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {e.strerror or e}",
            hint="pick another --port (or --port 0 for any free one), or a --host this machine has",
        ) from None
    return sock


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a SIGINT or SIGTERM it handled (a graceful stop) ends `olmo serve`
        normally (exit 0) instead of being raised again once the server has stopped."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def serve(options: ServeOptions, on_message: Callable[[str], None]) -> None:
    import uvicorn

    _Server = _server_class()

    from olmo_cli.serve.http import build_app

    sock = listen(options.host, options.port)  # before the model loads: a taken port fails at once
    try:
        service = build_service(options)
    except BaseException:
        sock.close()
        raise
    app = build_app(service, api_key=options.api_key, max_body_bytes=options.max_body_bytes)
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=int(options.graceful_s), access_log=False
    )
    server = _Server(config)
    service.engine.start()
    model = service.model
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    on_message(
        f"serving {service.name!r} ({model.kind}, {model.device} {str(model.dtype).removeprefix('torch.')}, "
        f"{service.context:,} tokens of context, up to {options.max_batch} requests batched) on "
        f"http://{shown}:{port}/v1" + (", API key required" if options.api_key else "")
    )
    try:
        server.run(sockets=[sock])
    finally:
        service.engine.stop(timeout=options.graceful_s)
        sock.close()
    on_message("stopped")
