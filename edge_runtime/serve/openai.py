"""Language models over HTTP: the OpenAI-compatible API and the KServe v2 generate extension.

=========================================================  ===========================================
``GET  /v1/models``                                        the language models served
``POST /v1/chat/completions``                              chat (messages through the model's template)
``POST /v1/completions``                                   text completion of a prompt
``POST /v2/models/{m}/generate``                           KServe v2 generate: ``text_input`` -> ``text_output``
``POST /v2/models/{m}/generate_stream``                    the same as server-sent events
=========================================================  ===========================================

``stream: true`` answers with server-sent events (``data: {...}`` chunks, then
``data: [DONE]``); ``stream_options.include_usage`` adds a usage chunk. Honoured
fields: ``max_tokens`` (``max_completion_tokens``), ``temperature``, ``top_p``,
``seed``, ``stop``; extensions ``top_k`` and ``repetition_penalty``. Generations
run on the model's continuous-batching engine (:mod:`edge_runtime.llm.engine`);
a full queue answers 503, a client that goes away cancels its generation.
The engine's limits (sequences decoding together, queue size, context per request)
come from the server's ``[llm]`` config (:mod:`edge_runtime.serve.llm_limits`).
Prometheus (:class:`edge_runtime.serve.metrics.ServeMetrics`): time to first
token, inter-token latency, tokens/s, queue time, sequences per decode step,
tokens and generations counted.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from edge_runtime.package._json import JsonLimits, loads_bounded
from edge_runtime.serve.errors import InferenceRequestError, OverloadedError, ServeError
from edge_runtime.serve.llm_limits import LLMLimits

__all__ = ["add_routes", "engine_of", "probe_generation", "set_llm_limits"]

_JSON = JsonLimits(max_depth=16, max_number_chars=64, max_values=100_000)
_MAX_STOP = 4
_DEFAULT_MAX_TOKENS = 256

# The limits of each language model by the manager that serves it (edge_runtime.serve.server sets its
# config's lookup); a manager without one: LLMLimits() for every model.
_limits: weakref.WeakKeyDictionary[Any, Callable[[str], LLMLimits]] = weakref.WeakKeyDictionary()
_PROBE_TEXT = "The quick brown fox"
_PROBE_TOKENS = 8
_DISCONNECT_POLL_S = 0.25  # how often a waiting generation checks that its client is still there


def set_llm_limits(manager: Any, lookup: Callable[[str], LLMLimits]) -> None:
    """Where ``manager``'s language models take their engine limits from (model name -> limits)."""
    _limits[manager] = lookup


def _limits_of(manager: Any, name: str) -> LLMLimits:
    lookup = _limits.get(manager)
    return lookup(name) if lookup is not None else LLMLimits()


def engine_of(manager: Any, loaded: Any) -> Any:
    """The engine of a loaded language model, created with its limits; its steps feed the batch histogram."""
    engine = loaded.model.engine(**_limits_of(manager, loaded.name).engine_options())
    if engine.on_step is None:
        engine.on_step = manager.metrics.llm_batch_sequences.labels(loaded.name, loaded.version).observe
    return engine


class _Timing:
    """The metrics of one generation: TTFT and queue time at its first token, ITL between tokens,
    tokens/s and how it ended at its end (one definition for the HTTP handlers and the probe)."""

    def __init__(self, metrics: Any, labels: tuple[str, str]) -> None:
        self.metrics, self.labels = metrics, labels
        self.start = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0

    def token(self, handle: Any) -> None:
        m, now = self.metrics, time.monotonic()
        if self.first is None:
            self.first = now
            m.llm_ttft_seconds.labels(*self.labels).observe(now - self.start)
            if handle.admitted_at is not None:
                m.llm_queue_seconds.labels(*self.labels).observe(
                    max(0.0, handle.admitted_at - handle.submitted)
                )
        else:
            m.llm_itl_seconds.labels(*self.labels).observe(now - self.last)  # type: ignore[operator]
        self.last = now
        self.tokens += 1

    def end(self, how: str) -> None:
        """``how``: the finish reason (stop, length), or cancelled, rejected, error."""
        m = self.metrics
        m.llm_generated_tokens.labels(*self.labels).inc(self.tokens)
        m.llm_requests.labels(*self.labels, how).inc()
        first, last = self.first, self.last
        if (
            how in ("stop", "length")
            and self.tokens > 1
            and first is not None
            and last is not None
            and last > first
        ):
            m.llm_tokens_per_second.labels(*self.labels).observe((self.tokens - 1) / (last - first))


def probe_generation(manager: Any, loaded: Any, timeout_s: float = 120.0) -> bool:
    """A short greedy generation through the engine, counted in the metrics like a request's.

    The fleet agent's health window runs it (fleet.targets.ServeTarget.probe), so a new version
    with no traffic still shows its time to first token and tokens/s. False if it failed; a full
    queue skips it (True: a busy device is not a broken version).
    """
    import queue as queue_module

    from edge_runtime.llm.engine import EngineOverloadedError
    from edge_runtime.llm.sampling import SamplingParams

    model = loaded.model
    ids = model.tokenize(_PROBE_TEXT)[: max(1, model.context - 2)]
    params = SamplingParams(
        max_new_tokens=max(1, min(_PROBE_TOKENS, model.context - len(ids))), temperature=0.0
    )
    events: queue_module.Queue[Any] = queue_module.Queue()
    try:
        loaded.acquire()  # the version stays open until the probe ends, as for a request
    except ServeError:  # being replaced: nothing to probe
        return True
    timing = _Timing(manager.metrics, (loaded.name, loaded.version))
    try:
        try:
            handle = engine_of(manager, loaded).submit(ids, params, events.put)
        except EngineOverloadedError:
            return True
        manager.metrics.llm_prompt_tokens.labels(loaded.name, loaded.version).inc(len(ids))
        return _await_probe(events, handle, timing, timeout_s)
    finally:
        loaded.release()


def _await_probe(events: Any, handle: Any, timing: _Timing, timeout_s: float) -> bool:
    import queue as queue_module

    try:
        while True:
            item = events.get(timeout=timeout_s)
            if isinstance(item, BaseException):
                timing.end("error")
                return False
            timing.token(handle)
            if item.finish_reason is not None:
                timing.end(item.finish_reason)
                return True
    except queue_module.Empty:
        handle.cancel()
        timing.end("error")
        return False


def _is_llm(model: Any) -> bool:
    return callable(getattr(model, "engine", None)) and hasattr(model, "tokenizer")


def _openai_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    from edge_runtime.serve.app import read_body

    raw = await read_body(request)
    doc = loads_bounded(raw, _JSON, InferenceRequestError, "request body")
    if not isinstance(doc, dict):
        raise InferenceRequestError("the request body must be a JSON object")
    return doc


def _number(doc: dict[str, Any], key: str, default: Any, kind: type = float) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        raise InferenceRequestError(
            f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        )
    return kind(value)


def _params(doc: dict[str, Any], gen: _Generation, prompt_len: int, temperature: float = 1.0) -> Any:
    """Sampling parameters of a request; ``temperature`` is the default (OpenAI's is 1).

    Raises ContextLengthError (400) when the prompt plus ``max_tokens`` exceed the request context
    (the server's ``llm.max_context`` when set, else the model's).
    """
    from edge_runtime.llm.errors import ContextLengthError
    from edge_runtime.llm.sampling import SamplingParams

    context = gen.context
    max_tokens = doc.get("max_completion_tokens", doc.get("max_tokens", doc.get("max_new_tokens")))
    if max_tokens is None:
        max_tokens = max(1, min(_DEFAULT_MAX_TOKENS, context - prompt_len))
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InferenceRequestError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if prompt_len + max_tokens > context:
        which = "this server's llm.max_context" if context < gen.model.context else "the model's context"
        raise ContextLengthError(
            f"the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceed {which} of {context} "
            f"tokens: lower max_tokens to {max(context - prompt_len, 0)} or shorten the prompt"
        )
    stop = doc.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > _MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise InferenceRequestError(
            f"stop must be a string or a list of at most {_MAX_STOP} non-empty strings"
        )
    if doc.get("n", 1) != 1:
        raise InferenceRequestError("only n = 1 is supported")
    seed = doc.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InferenceRequestError(f"seed must be an integer, got {seed!r}")
    try:
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=_number(doc, "temperature", temperature),
            top_p=_number(doc, "top_p", 1.0),
            top_k=_number(doc, "top_k", 0, int),
            repetition_penalty=_number(doc, "repetition_penalty", 1.0),
            seed=seed,
            stop=tuple(stop),
        )
    except ValueError as exc:
        raise InferenceRequestError(str(exc)) from None


class _Generation:
    """One generation of a served model: holds a reference on the version and cancels on exit."""

    def __init__(self, request: web.Request, name: str, version: str | None = None) -> None:
        from edge_runtime.serve.app import MANAGER

        self.request = request
        self.loaded = request.app[MANAGER].get(name, version)
        if not _is_llm(self.loaded.model):
            raise InferenceRequestError(
                f"model {name!r} is not a language model; use /v2/models/{name}/infer"
            )
        self.model = self.loaded.model
        self.name = name
        self.handle: Any = None
        self.manager = request.app[MANAGER]
        self.labels = (name, self.loaded.version)
        self.limits = _limits_of(self.manager, name)
        self.context = min(self.model.context, self.limits.max_context or self.model.context)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason = "length"

    async def events(self, prompt_ids: list[int], params: Any) -> AsyncIterator[Any]:
        """The token events of the generation; cancels it when the consumer stops early."""
        from edge_runtime.llm.engine import EngineOverloadedError

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                if self.handle is not None:
                    self.handle.cancel()

        self.loaded.acquire()
        timing = _Timing(self.manager.metrics, self.labels)
        try:
            try:
                self.handle = engine_of(self.manager, self.loaded).submit(prompt_ids, params, emit)
            except EngineOverloadedError as exc:
                timing.end("rejected")
                raise OverloadedError(str(exc)) from None
            self.prompt_tokens = len(prompt_ids)
            self.manager.metrics.llm_prompt_tokens.labels(*self.labels).inc(len(prompt_ids))
            while True:
                item = await self._next(queue)
                if isinstance(item, BaseException):
                    timing.end("error")
                    raise item
                timing.token(self.handle)
                self.completion_tokens += 1
                yield item
                if item.finish_reason is not None:
                    self.finish_reason = item.finish_reason
                    break
            timing.end(self.finish_reason)
        except (asyncio.CancelledError, GeneratorExit, ConnectionError):
            timing.end("cancelled")
            raise
        finally:
            if self.handle is not None:
                self.handle.cancel()
            self.loaded.release()

    def _client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def _next(self, queue: asyncio.Queue[Any]) -> Any:
        """The next event; ConnectionResetError once the client has gone away (aiohttp does not cancel
        a handler whose client disconnects, and a non-streamed answer writes nothing until the end)."""
        while True:
            if self._client_gone():
                raise ConnectionResetError("the client went away")
            try:
                return await asyncio.wait_for(queue.get(), _DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                continue

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, payload: Any) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    await response.write(f"data: {data}\n\n".encode())


def _model_name(doc: dict[str, Any]) -> str:
    name = doc.get("model")
    if not isinstance(name, str) or not name:
        raise InferenceRequestError("model must name a served model (GET /v1/models lists them)")
    return name


# --- /v1 ---


async def list_models(request: web.Request) -> web.Response:
    from edge_runtime.serve.app import MANAGER

    manager = request.app[MANAGER]
    data = []
    for name in manager.names():
        try:
            loaded = manager.get(name)
        except Exception:  # noqa: BLE001, S112 - not loaded now
            continue
        if _is_llm(loaded.model):
            data.append(
                {"id": name, "object": "model", "created": int(loaded.loaded_at), "owned_by": "edge-runtime"}
            )
    return web.json_response({"object": "list", "data": data})


async def _complete(request: web.Request, chat: bool) -> web.StreamResponse:
    doc = await _body(request)
    name = _model_name(doc)
    gen = _Generation(request, name)
    model = gen.model
    if chat:
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InferenceRequestError("messages must be a non-empty list of {role, content}")
        messages = [_message(m) for m in messages]
        ids = model.tokenize(model.apply_chat_template(messages))
    else:
        prompt = doc.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            ids = model.tokenize(prompt)
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
        ):
            ids = list(prompt)
            if min(ids) < 0 or max(ids) >= model.config.vocab_size:
                raise InferenceRequestError(f"prompt token ids must be in [0, {model.config.vocab_size})")
        else:
            raise InferenceRequestError("prompt must be a non-empty string or a list of token ids")
    params = _params(doc, gen, len(ids))
    created = int(time.time())
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    obj = "chat.completion" if chat else "text_completion"
    if not doc.get("stream"):
        parts = [ev.text async for ev in gen.events(ids, params)]
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "finish_reason": gen.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        return web.json_response(
            {
                "id": rid,
                "object": obj,
                "created": created,
                "model": name,
                "choices": [choice],
                "usage": gen.usage(),
            }
        )
    options = doc.get("stream_options") or {}
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    response = await _sse(request)
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta_text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        c: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if delta_text is not None:
                delta["content"] = delta_text
            c["delta"] = delta
        else:
            c.update(text=delta_text or "", logprobs=None)
        return {"id": rid, "object": chunk_obj, "created": created, "model": name, "choices": [c]}

    if chat:
        await _send(response, chunk("", None, role=True))
    try:
        async for ev in gen.events(ids, params):
            if ev.text:
                await _send(response, chunk(ev.text, None))
            if ev.finish_reason is not None:
                await _send(response, chunk(None if chat else "", ev.finish_reason))
    except Exception as exc:
        if isinstance(exc, (ConnectionError, asyncio.CancelledError)):
            raise
        await _send(response, {"error": {"message": str(exc), "type": type(exc).__name__}})
    if include_usage:
        await _send(
            response,
            {
                "id": rid,
                "object": chunk_obj,
                "created": created,
                "model": name,
                "choices": [],
                "usage": gen.usage(),
            },
        )
    await _send(response, "[DONE]")
    await response.write_eof()
    return response


def _message(m: Any) -> dict[str, str]:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise InferenceRequestError("each message must be an object with a role and a content")
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise InferenceRequestError("only text content parts are supported")
        content = "".join(texts)
    if not isinstance(content, str):
        raise InferenceRequestError("message content must be a string")
    return {"role": m["role"], "content": content}


async def _openai_errors(request: web.Request, chat: bool) -> web.StreamResponse:
    """OpenAI's error body (``{"error": {"message", "type", "code"}}``), which its clients read."""
    from edge_runtime.errors import EdgeRuntimeError

    try:
        return await _complete(request, chat)
    except ConnectionError:  # the client went away: its generation is cancelled, nobody reads this
        return web.Response(status=499, text="client closed the request")
    except ServeError as exc:
        kind = {404: "not_found_error", 503: "overloaded_error"}.get(exc.http_status, "invalid_request_error")
        return _openai_error(exc.http_status, str(exc), kind)
    except ValueError as exc:  # bad parameters, context exceeded, a template that refuses the messages
        return _openai_error(400, str(exc))
    except EdgeRuntimeError as exc:
        return _openai_error(500, str(exc), "server_error")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _openai_errors(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _openai_errors(request, chat=False)


# --- KServe v2 generate extension ---


async def _generate(request: web.Request, stream: bool) -> web.StreamResponse:
    doc = await _body(request)
    name = request.match_info["name"]
    gen = _Generation(request, name, request.match_info.get("version"))
    text = doc.get("text_input")
    if not isinstance(text, str) or not text:
        raise InferenceRequestError("text_input must be a non-empty string")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InferenceRequestError("parameters must be a JSON object")
    ids = gen.model.tokenize(text)
    params = _params(parameters, gen, len(ids), temperature=0.0)
    base = {"model_name": name, "model_version": gen.loaded.version}
    if not stream:
        out = "".join([ev.text async for ev in gen.events(ids, params)])
        return web.json_response(
            {**base, "text_output": out, "finish_reason": gen.finish_reason, "usage": gen.usage()}
        )
    response = await _sse(request)
    try:
        async for ev in gen.events(ids, params):
            payload = {**base, "text_output": ev.text}
            if ev.finish_reason is not None:
                payload["finish_reason"] = ev.finish_reason
            await _send(response, payload)
    except Exception as exc:
        if isinstance(exc, (ConnectionError, asyncio.CancelledError)):
            raise
        await _send(response, {"error": str(exc)})
    await response.write_eof()
    return response


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generate(request, stream=False)


async def generate_stream(request: web.Request) -> web.StreamResponse:
    return await _generate(request, stream=True)


def add_routes(app: web.Application) -> None:
    """Add the language-model routes to the server's application."""
    r = app.router
    r.add_get("/v1/models", list_models)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_post(prefix + "/generate", generate)
        r.add_post(prefix + "/generate_stream", generate_stream)
