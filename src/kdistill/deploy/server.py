"""`kdistill serve EXPORT_DIR`: an export as an HTTP service, a Starlette app under uvicorn, without torch.

    POST /predict   {"text": "a fine film"}            -> {"label": ..., "probabilities": {label: p}}
                    {"texts": ["a fine film", "dull"]} -> {"predictions": [{"label": ..., "probabilities": ...}, ...]}
                    a tagger's export answers {"entities": [{"type", "text", "start", "end", "score"}], "tags": [...],
                    "truncated_words": n} per text instead (ExportedModel.predict)
    GET  /health    {"status": "ok", ...}
    GET  /model     the export's facts: labels, teacher, strategy, metrics, sizes (ExportedModel.facts)

Dynamic batching: texts of concurrent requests go to the model together, up to `max_batch` texts a call (a
request's texts are never split): those that queued while the model ran the last call and, under load (the last
call held more than one text), those arriving within `max_wait_ms`. A lone client is answered without waiting. The model runs in one worker thread,
so the event loop keeps reading requests while a batch runs, and the next batch gathers meanwhile.
`max_batch: 1` turns batching off: one request, one model call, in arrival order.

A bad request gets a 4xx and {"error": "one line"}: 400 for a body that is not JSON, 413 for a body, text or list
over its limit, 422 for JSON of the wrong shape or types. The limits are ServeConfig's fields (and serve's flags).
"""

import asyncio
import dataclasses
import json
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import UserError
from .runtime import is_unicode

logger = logging.getLogger(__name__)

# A body over max_body_bytes is read on and dropped up to this size, so that the client gets its 413.
DRAIN_BYTES = 64 * 1024 * 1024
# `--workers N` starts N processes that import the app by name; they read their settings from this variable.
_ENV = "KDISTILL_SERVE"


@dataclass
class ServeConfig:
    """How `kdistill serve` runs: where it listens, how it batches, and what it refuses."""

    host: str = "127.0.0.1"
    port: int = 8000
    int8: bool = False
    workers: int = 1
    threads: int | None = None  # ONNX Runtime's threads per worker; default: the cores shared among the workers
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_texts: int = 256
    max_body_bytes: int = 1_000_000
    max_text_chars: int = 10_000

    def __post_init__(self):
        for name in ("workers", "max_batch", "max_texts", "max_body_bytes", "max_text_chars"):
            if getattr(self, name) < 1:
                raise UserError(f"serve: --{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"serve: --threads must be at least 1, got {self.threads}")
        if self.max_wait_ms < 0:
            raise UserError(f"serve: --max_wait_ms must be at least 0, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"serve: --port must be 0-65535, got {self.port}")

    @property
    def model_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)


class BadRequest(Exception):
    """A request the service refuses: its HTTP status and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Batcher:
    """Gathers the texts of concurrent requests into model calls of up to `max_batch` texts.

    A batch is what queued while the model ran the last one; when that last call held more than one text (there is
    load), the batch also waits up to `max_wait_ms` (from its first text) for others to join it.
    """

    def __init__(self, predict, max_batch: int, max_wait_ms: float):
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # One thread: ONNX Runtime already uses every core it is given within a call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdistill-model")
        self.calls = 0
        self.texts = 0
        self._last_size = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def predict(self, texts: list[str]) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, future))
        return await future

    async def _gather(self) -> list[tuple[list[str], asyncio.Future]]:
        loop = asyncio.get_running_loop()
        items = [await self._queue.get()]
        size = len(items[0][0])
        # Wait for company only when the last call had some: a lone client is answered at once (the wait would be
        # all its latency), while under load a batch fills up to max_batch.
        deadline = loop.time() + (self.max_wait if self._last_size > 1 else 0.0)
        while size < self.max_batch:
            if self._queue.empty():
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            items.append(item)
            size += len(item[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            texts = [text for item_texts, _ in items for text in item_texts]
            try:
                predictions = await loop.run_in_executor(self._executor, self._predict, texts)
            except Exception as err:  # the model failed on this batch: its requests get a 500, the service lives on
                logger.exception("prediction failed on a batch of %d texts", len(texts))
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.calls += 1
            self.texts += len(texts)
            self._last_size = len(texts)
            start = 0
            for item_texts, future in items:
                if not future.done():  # a client that went away leaves a cancelled future
                    future.set_result(predictions[start:start + len(item_texts)])
                start += len(item_texts)


def parse_request(body: bytes, config: ServeConfig) -> tuple[list[str], bool]:
    """The texts a /predict body asks for, and whether it sent one text (not a list). Raises BadRequest.

    A pure function of the body and the limits, so each refusal is tested without a server.
    """
    if len(body) > config.max_body_bytes:
        raise BadRequest(413, f"the body is {len(body)} bytes, over the limit of {config.max_body_bytes} "
                              f"(--max_body_bytes)")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"the body is not JSON ({err})") from None
    except RecursionError:
        raise BadRequest(400, "the body is JSON nested too deeply to read") from None
    if not isinstance(doc, dict):
        raise BadRequest(422, 'expected a JSON object: {"text": "..."} or {"texts": ["...", ...]}')
    unknown = sorted(set(doc) - {"text", "texts"})
    if unknown or len(doc) != 1:
        what = f"unknown key {unknown[0]!r}" if unknown else ("no text" if not doc else "both text and texts")
        raise BadRequest(422, f'{what}: send {{"text": "..."}} or {{"texts": ["...", ...]}}')
    single = "text" in doc
    texts = [doc["text"]] if single else doc["texts"]
    if not isinstance(texts, list):
        raise BadRequest(422, f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise BadRequest(422, "texts is an empty list")
    if len(texts) > config.max_texts:
        raise BadRequest(413, f"{len(texts)} texts in one request, over the limit of {config.max_texts} (--max_texts)")
    for i, text in enumerate(texts):
        where = "text" if single else f"texts[{i}]"
        if not isinstance(text, str):
            raise BadRequest(422, f"{where} must be a string, got {type(text).__name__}")
        if not is_unicode(text):  # refused here: in a batch it would fail its neighbours' requests too
            raise BadRequest(422, f"{where} is not valid Unicode (it holds a lone surrogate, e.g. from \\ud800)")
        if len(text) > config.max_text_chars:
            raise BadRequest(413, f"{where} has {len(text)} characters, over the limit of {config.max_text_chars} "
                                  f"(--max_text_chars)")
    return texts, single


def create_app(model, config: ServeConfig):
    """The Starlette app serving `model` (an ExportedModel, or anything with predict(texts) and facts())."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = Batcher(model.predict, config.max_batch, config.max_wait_ms)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> bytes:
        body = bytearray()
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= config.max_body_bytes:
                body += chunk
            elif size > DRAIN_BYTES:
                break  # past this the connection is dropped with the answer: the client may not see it
        if size > config.max_body_bytes:
            # Read (not kept) so the client, still sending, gets the 413 rather than a reset connection.
            declared = request.headers.get("content-length")
            raise BadRequest(413, f"the body is {declared or 'over ' + str(size)} bytes, over the limit of "
                                  f"{config.max_body_bytes} (--max_body_bytes)")
        return bytes(body)

    async def predict(request: Request) -> JSONResponse:
        try:
            texts, single = parse_request(await read_body(request), config)
        except BadRequest as bad:
            return error(bad.status, str(bad))
        except ClientDisconnect:
            return error(400, "the client closed the connection before sending the whole body")
        predictions = await batcher.predict(texts)
        return JSONResponse(predictions[0] if single else {"predictions": predictions})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "waiting": batcher.waiting, "model_calls": batcher.calls,
                             "texts": batcher.texts})

    facts = {**model.facts(), "serving": {k: v for k, v in dataclasses.asdict(config).items()
                                          if k not in ("host", "port")}}

    async def model_facts(request: Request) -> JSONResponse:
        return JSONResponse(facts)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own 404 and 405, as JSON like every other refusal.
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health, methods=["GET"]),
                            Route("/model", model_facts, methods=["GET"])],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.batcher = batcher
    return app


def app_from_env():
    """The app of one `--workers` process: its settings come from the parent through the environment."""
    from .runtime import ExportedModel

    settings = json.loads(os.environ[_ENV])
    config = ServeConfig(**settings["config"])
    return create_app(ExportedModel.load(settings["export_dir"], config.int8, config.model_threads), config)


def _check_address(host: str, port: int) -> None:
    """A port in use or a host that is not this machine's is one line, before uvicorn logs and exits."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(infos[0][4])
    except OSError as err:
        raise UserError(f"serve: cannot listen on {host}:{port} ({err.strerror or err})") from None


def serve(export_dir: str, config: ServeConfig) -> int:
    """Load the export, then serve it until interrupted (Ctrl-C or SIGTERM: uvicorn shuts down cleanly)."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn", "onnxruntime", "tokenizers") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"serve needs {', '.join(missing)}: pip install {' '.join(missing)}")
    import uvicorn

    from .runtime import ExportedModel

    model = ExportedModel.load(export_dir, config.int8, config.model_threads)  # a bad export fails here, in one line
    _check_address(config.host, config.port)
    scope = ("loopback only: reachable from this machine alone; --host 0.0.0.0 listens on every interface"
             if config.host in ("127.0.0.1", "localhost", "::1") else "reachable from other machines")
    logger.info("serving %s (%s, %d labels) on http://%s:%d (%s); batches of up to %d texts, %g ms wait; "
                "%d worker(s), %d ONNX Runtime thread(s) each", export_dir, model.facts()["model_file"],
                len(model.labels), config.host, config.port, scope, config.max_batch, config.max_wait_ms,
                config.workers, config.model_threads)
    log_level = os.environ.get("KDISTILL_LOG", "INFO").lower()
    options = {"host": config.host, "port": config.port, "log_level": "warning" if log_level == "info" else log_level,
               "access_log": False}
    # uvicorn stops gracefully on SIGINT and SIGTERM and then raises the signal again against the handler it found,
    # so that the process dies of it; a no-op handler there makes a stopped service exit 0 after saying so.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if config.workers > 1:
            del model
            os.environ[_ENV] = json.dumps({"export_dir": os.path.abspath(export_dir),
                                           "config": dataclasses.asdict(config)})
            uvicorn.run("kdistill.deploy.server:app_from_env", factory=True, workers=config.workers, **options)
        else:
            uvicorn.run(create_app(model, config), **options)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("stopped")
    return 0
