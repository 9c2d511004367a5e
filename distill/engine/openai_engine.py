"""OpenAI-compatible servers (vllm serve, SGLang, DeepSeek's API) behind the engine interface."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import threading
from collections.abc import Iterable, Iterator

from distill import prompts
from distill.engine import Engine, Prompt, Request, Sample, Sampling
from distill.errors import DistillError
from distill.redact import redact_url

log = logging.getLogger(__name__)


def split_urls(base_url: str) -> list[str]:
    """'URL1,URL2,…' → the servers of a fleet (one URL: one server)."""
    urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
    if not urls:
        raise DistillError("--base-url is empty; pass http://HOST:PORT/v1, or several separated by commas")
    bad = [redact_url(u) for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise DistillError(f"--base-url {bad[0]}: expected http://HOST:PORT/v1 (several separated by commas)")
    return list(dict.fromkeys(urls))


class OpenAIEngine(Engine):
    """Chat completions against one OpenAI-compatible server or a fleet of them (several comma-separated URLs),
    `concurrency` requests in flight in all, retried with exponential backoff on 429, 5xx, timeouts and dropped
    connections. Each sample goes to the least-loaded server (fewest requests in flight; ties in turn); a server that
    fails is benched for the backoff, or for as long as its Retry-After says, and the others take its work
    meanwhile. The key is read from the environment variable named by `api_key_env`, never stored."""

    BACKOFF_S = 0.5
    BACKOFF_MAX_S = 60.0
    RETRY_AFTER_MAX_S = 600.0  # a Retry-After is honoured up to this; a longer one is a misconfigured server

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 64,
                 timeout: float = 3600.0, max_retries: int = 8):
        super().__init__(model=model, backend="openai", info={"base_url": redact_url(base_url)})
        self.urls = split_urls(base_url)
        self.shown = [redact_url(u) for u in self.urls]
        self.base_url, self.shown_url = base_url, redact_url(base_url)
        self.api_key_env, self.concurrency = api_key_env, concurrency
        self.timeout, self.max_retries = timeout, max_retries
        self.retries = 0
        self.inflight = [0] * len(self.urls)
        self.benched_until = [0.0] * len(self.urls)
        self.requests = [0] * len(self.urls)  # answered requests per server (stats.json: server_requests)
        self._turn = 0
        self._checked = False

    @property
    def server_requests(self) -> dict[str, int]:
        return dict(zip(self.shown, self.requests))

    def pick(self, now: float) -> tuple[int, float]:
        """(server, seconds to wait first): the least-loaded server not benched, ties in turn; if all are benched,
        the one free soonest."""
        ready = [i for i in range(len(self.urls)) if self.benched_until[i] <= now]
        if not ready:
            i = min(range(len(self.urls)), key=lambda j: self.benched_until[j])
            return i, self.benched_until[i] - now
        start = self._turn % len(self.urls)
        self._turn += 1
        order = sorted(ready, key=lambda j: (self.inflight[j], (j - start) % len(self.urls)))
        return order[0], 0.0

    def supports_thinking_budget(self) -> bool:
        return True  # passed on as thinking_token_budget; a server without a reasoning parser says so (HTTP 400)

    def render(self, problem: str, template: str, think_prefill: str) -> Prompt:
        # The server renders its own template; an R1 template opens the thought itself, so the text arriving is
        # inside it unless --think-prefill off.
        return Prompt(messages=tuple(prompts.chat_messages(problem, template)), prefilled=think_prefill != "off")

    def generate(self, requests: Iterable[Request], sampling: Sampling) -> Iterator[tuple[Request, list[Sample]]]:
        """A background thread runs the asyncio client; finished requests come back through a queue."""
        results: queue.Queue = queue.Queue(maxsize=4 * self.concurrency)
        stop = threading.Event()
        done = object()

        def worker() -> None:
            try:
                asyncio.run(self._run(iter(requests), sampling, results, stop))
                results.put(done)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                results.put(e)

        thread = threading.Thread(target=worker, name="openai-engine", daemon=True)
        thread.start()
        try:
            while (item := results.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a worker waiting on a full queue
                try:
                    results.get(timeout=0.1)
                except queue.Empty:
                    pass
            thread.join()

    async def _run(self, todo: Iterator[Request], sampling: Sampling, results: queue.Queue,
                   stop: threading.Event) -> None:
        from openai import AsyncOpenAI

        # Local servers (vllm serve, SGLang) accept any key; the client refuses an empty one.
        key = os.environ.get(self.api_key_env) or "EMPTY"
        clients = [AsyncOpenAI(base_url=u, api_key=key, timeout=self.timeout, max_retries=0) for u in self.urls]
        try:
            if not self._checked:
                await asyncio.gather(*(self._check(c, shown) for c, shown in zip(clients, self.shown)))
                self._checked = True
            slots = asyncio.Semaphore(self.concurrency)
            loop = asyncio.get_running_loop()

            async def sample(req: Request, i: int) -> Sample:
                async with slots:
                    return await self._complete(clients, req, sampling, None if req.seed is None else req.seed + i)

            async def one(req: Request) -> None:
                samples = await asyncio.gather(*(sample(req, i) for i in range(req.n)))
                await loop.run_in_executor(None, results.put, (req, list(samples)))

            async with asyncio.TaskGroup() as tg:  # the first failure cancels the rest
                pending: set[asyncio.Task] = set()
                for req in todo:
                    task = tg.create_task(one(req))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    # Bounded: a million prompts are not all tasks at once; the consumer stopping cancels the rest.
                    while len(pending) >= 2 * self.concurrency and not stop.is_set():
                        await asyncio.wait(set(pending), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                    if stop.is_set():
                        raise _Stopped
                while pending:
                    if stop.is_set():
                        raise _Stopped
                    await asyncio.wait(set(pending), timeout=0.5)
        except _Stopped:
            return
        except BaseExceptionGroup as group:
            _, rest = group.split(_Stopped)
            if rest is None:
                return
            first = rest.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            for client in clients:
                await client.close()

    async def _check(self, client, shown: str) -> None:
        """Fail in one line, before any work, when the server is unreachable or does not serve the model."""
        import openai

        try:
            models = await client.models.list(timeout=30.0)
        except openai.APIConnectionError as e:
            raise DistillError(f"--base-url {shown}: cannot connect ({_cause(e)}); start the server or fix "
                               f"the URL") from None
        except openai.AuthenticationError:
            raise DistillError(f"--base-url {shown}: the server refused the API key (HTTP 401); set the "
                               f"variable named by --api-key-env") from None
        except openai.APIStatusError:
            return  # some servers have no /models; the first completion will tell
        names = [m.id for m in models.data]
        if names and self.model not in names:
            raise DistillError(f"model {self.model}: not served by {shown} (it serves: "
                               f"{', '.join(names[:10])}); pass one of those names")

    async def _complete(self, clients: list, req: Request, sampling: Sampling, seed: int | None) -> Sample:
        import openai

        extra = {"thinking_token_budget": sampling.thinking_budget} if sampling.thinking_budget else None
        loop = asyncio.get_running_loop()
        for attempt in range(self.max_retries + 1):
            i, wait = self.pick(loop.time())
            if wait > 0:
                await asyncio.sleep(wait)
            self.inflight[i] += 1
            try:
                resp = await clients[i].chat.completions.create(
                    model=self.model, messages=list(req.prompt.messages), temperature=sampling.temperature,
                    top_p=sampling.top_p, max_tokens=req.max_tokens, seed=seed, n=1, extra_body=extra)
                self.requests[i] += 1
                break
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as e:
                # APITimeoutError is an APIConnectionError: a stalled request is retried like a dropped one.
                if attempt == self.max_retries:
                    raise DistillError(f"--base-url {self.shown[i]}: request failed after {self.max_retries} "
                                       f"retries ({type(e).__name__}: {_cause(e)}); check the server or raise "
                                       f"--max-retries") from None
                self.retries += 1
                delay = min(self.BACKOFF_MAX_S, self.BACKOFF_S * 2 ** attempt) * (0.5 + random.random() / 2)
                retry_after = _retry_after(e)
                if retry_after is not None:
                    delay = min(self.RETRY_AFTER_MAX_S, max(delay, retry_after))
                # The server is benched, not the request: with a fleet the retry goes to another server now.
                self.benched_until[i] = max(self.benched_until[i], loop.time() + delay)
                log.debug("retry %d after %s from %s: benched %.1fs", attempt + 1, type(e).__name__, self.shown[i],
                          delay)
            except openai.APIStatusError as e:
                raise DistillError(f"--base-url {self.shown[i]}: HTTP {e.status_code} for model {self.model} "
                                   f"({_cause(e)}); fix the request options (e.g. --max-tokens)") from None
            finally:
                self.inflight[i] -= 1
        choice = resp.choices[0]
        msg = choice.message
        extra_fields = msg.model_extra or {}
        # vLLM names the split-out thought `reasoning`, DeepSeek's API `reasoning_content`.
        reasoning = (extra_fields.get("reasoning_content") or extra_fields.get("reasoning")
                     or getattr(msg, "reasoning_content", None))
        usage = resp.usage
        return Sample(text=msg.content or "", finish_reason=choice.finish_reason or "",
                      num_tokens=usage.completion_tokens if usage else 0,
                      prompt_tokens=usage.prompt_tokens if usage else 0, reasoning=reasoning)


class _Stopped(Exception):
    """The consumer stopped reading: cancel what is in flight."""


def _retry_after(e: BaseException) -> float | None:
    """Seconds a 429/503 response asks us to wait (Retry-After), if it says."""
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _cause(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause):
        msg = f"{msg}: {cause}"
    return redact_url(" ".join(msg.split())[:300])
