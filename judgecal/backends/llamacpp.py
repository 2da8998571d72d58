"""The in-process engine: a GGUF model (the embedded SmolLM2 by default) run by llama.cpp.

The embedded model runs behind DSPy's engine interface (``dspy.LM(..., engine=...)``),
which DSPy caches on disk; the deprecated ``BaseLM.forward`` path is never cached.
What the engine adds over a plain llama.cpp call:

* **Grammar-constrained JSON.** When DSPy asks for a JSON schema, generation is
  constrained by a grammar built from it, so a 135M model still returns parseable
  fields. Lists and free strings get bounds, or a tiny model runs to ``max_tokens``.
* **Decision probabilities.** For each boolean or string-enum property of the schema
  (a judge's verdict) the engine scores every allowed answer at the step where the
  answers diverge and reports them as token alternatives in ``logprobs``. The raw
  logits are read before the grammar applies, so forbidden tokens are not mixed in.
* **Prefix reuse.** One ``Llama`` per model file and settings, kept in the workspace's
  :class:`~judgecal.workspace.LoadedModels`, keeps its evaluated tokens; a call whose
  prompt starts like the previous one (same instructions and few-shot demos) only
  evaluates the new suffix. Callers get the benefit by judging rows of one program
  consecutively, which :mod:`judgecal.judges` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from judgecal.backends.files import file_identity
from judgecal.workspace import LoadedModels

DEFAULT_ARRAY_BOUND = 8


DEFAULT_STRING_BOUND = 400


@dataclass
class EngineStats:
    """Counters of one loaded model: how much prompt work prefix reuse saved."""

    calls: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0

    @property
    def reuse_rate(self) -> float:
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass
class _LoadedModel:
    llama: Any
    formatter: Any
    lock: threading.Lock
    stats: EngineStats

    def close(self) -> None:
        self.llama.close()


def _load_model(path: str, n_ctx: int, n_threads: int) -> _LoadedModel:
    """A llama.cpp instance of the model file with its chat template. Loading reads
    ``OMP_WAIT_POLICY``, which the run set before it started (``set_process_environment``)."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llama = llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        seed=0,
        logits_all=False,
        verbose=False,
    )
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        llama.close()
        raise ValueError(f"{path}: the model file has no chat template")
    eos = llama.detokenize([llama.token_eos()], special=True).decode("utf-8", "replace")
    bos = llama.detokenize([llama.token_bos()], special=True).decode("utf-8", "replace")
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    return _LoadedModel(llama=llama, formatter=formatter, lock=threading.Lock(), stats=EngineStats())


def bound_schema(schema: Any) -> Any:
    """Add ``maxItems`` / ``maxLength`` where a schema leaves lists or free text unbounded."""
    if isinstance(schema, list):
        return [bound_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {key: bound_schema(value) for key, value in schema.items()}
    kind = bounded.get("type")
    if kind == "array" and "maxItems" not in bounded:
        bounded["maxItems"] = DEFAULT_ARRAY_BOUND
    if kind == "string" and not {"maxLength", "enum", "const", "pattern"} & set(bounded):
        bounded["maxLength"] = DEFAULT_STRING_BOUND
    return bounded


def decision_keys(schema: Any) -> dict[str, list[Any]]:
    """Top-level properties with a closed answer set: booleans, string and integer enums.

    These are the verdicts whose probabilities the engine scores. (lm15 reads the same
    convention off a schema, but only in a private module; this is the few lines we need.)
    """
    if not isinstance(schema, dict):
        return {}
    found: dict[str, list[Any]] = {}
    for name, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, dict):
            continue
        if prop.get("type") == "boolean":
            found[name] = [True, False]
        elif isinstance(prop.get("enum"), list) and (
            all(isinstance(v, str) for v in prop["enum"])
            or all(isinstance(v, int) and not isinstance(v, bool) for v in prop["enum"])
        ):
            found[name] = list(prop["enum"])
        elif isinstance(prop.get("anyOf"), list) and all(
            isinstance(b, dict) and isinstance(b.get("const"), str) for b in prop["anyOf"]
        ):
            found[name] = [b["const"] for b in prop["anyOf"]]
    return found


class LlamaCppEngine:
    """A DSPy engine running a GGUF model in this process with llama.cpp. The model is
    loaded on the first call, once per (file, context, threads) in ``models`` (the
    workspace's; engines that share it share the loaded model and its prefix)."""

    supports_response_schema: ClassVar[bool] = True
    supported_params: ClassVar[frozenset[str]] = frozenset(
        {"temperature", "max_tokens", "seed", "stop", "response_format", "logprobs", "top_logprobs"}
    )

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        models: LoadedModels | None = None,
    ) -> None:
        self.model_path = str(Path(model_path).resolve())
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self.models = models if models is not None else LoadedModels()

    # DSPy saves a custom engine as its class path plus this state.
    def dump_state(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "n_ctx": self.n_ctx, "n_threads": self.n_threads}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LlamaCppEngine:
        return cls(state["model_path"], n_ctx=state["n_ctx"], n_threads=state.get("n_threads"))

    @property
    def model(self) -> _LoadedModel:
        key = ("llama.cpp", *file_identity(Path(self.model_path)), self.n_ctx, self.n_threads)
        return self.models.get(key, lambda: _load_model(self.model_path, self.n_ctx, self.n_threads))

    @property
    def stats(self) -> EngineStats:
        """Prompt tokens evaluated vs reused from the previous call's prefix."""
        return self.model.stats

    def complete(self, request: Any) -> Any:
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import ContextLengthError, Message, Response, TextPart, TokenLogprob, TopLogprob, Usage

        validate_request(request)
        loaded = self.model
        llama = loaded.llama
        config = request.config
        messages = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
        prompt = loaded.formatter(messages=messages).prompt

        schema = None
        response_format = config.response_format or {}
        if response_format.get("type") == "json_schema":
            schema = bound_schema(response_format["schema"])
        elif response_format.get("type") == "json_object":
            schema = {"type": "object"}
        max_tokens = config.max_tokens or 512
        temperature = 0.0 if config.temperature is None else float(config.temperature)
        want_logprobs = config.logprobs is not None

        with loaded.lock:
            prompt_tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            if len(prompt_tokens) + max_tokens > self.n_ctx:
                raise ContextLengthError(
                    f"prompt of {len(prompt_tokens)} tokens + max_tokens {max_tokens} exceeds the "
                    f"context of {self.n_ctx} tokens; raise n_ctx or shorten the inputs"
                )
            reused = _common_prefix(llama.input_ids[: llama.n_tokens].tolist(), prompt_tokens)
            steps = self._generate(llama, prompt_tokens, schema, max_tokens, temperature, config)
            stats = loaded.stats
            stats.calls += 1
            stats.prompt_tokens += len(prompt_tokens)
            stats.reused_tokens += reused
            stats.generated_tokens += len(steps)
            tokens = [token for token, _ in steps]
            text_bytes = b"".join(llama.detokenize([t]) for t in tokens)
            text = text_bytes.decode("utf-8", errors="replace")
            finish = "length" if len(tokens) >= max_tokens else "stop"
            token_logprobs = None
            if want_logprobs:
                extra = self._decision_alternatives(llama, steps, text, schema)
                token_logprobs = tuple(
                    self._token_logprob(
                        llama, token, logits, config.logprobs or 0, extra.get(i, ()), TokenLogprob, TopLogprob
                    )
                    for i, (token, logits) in enumerate(steps)
                )
        usage = Usage(input_tokens=len(prompt_tokens), output_tokens=len(tokens))
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason=finish,
            usage=usage,
            logprobs=token_logprobs,
        )

    def _generate(
        self, llama: Any, prompt_tokens: list[int], schema: Any, max_tokens: int, temperature: float, config: Any
    ) -> list[tuple[int, np.ndarray | None]]:
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar = None
        if schema is not None:
            grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        if config.seed is not None:
            llama.set_seed(int(config.seed))
        stops = [s.encode() for s in config.stop]
        keep_logits = config.logprobs is not None
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        n_vocab = llama.n_vocab()
        steps: list[tuple[int, np.ndarray | None]] = []
        produced = b""
        for token in llama.generate(
            prompt_tokens,
            temp=temperature,
            top_k=40,
            top_p=0.95,
            min_p=0.05,
            repeat_penalty=1.0,
            grammar=grammar,
            reset=True,
        ):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            logits = None
            if keep_logits:
                pointer = llama_cpp.llama_get_logits_ith(llama.ctx, -1)
                logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).copy()
            steps.append((token, logits))
            produced += llama.detokenize([token])
            if len(steps) >= max_tokens or any(produced.endswith(s) for s in stops):
                break
        return steps

    @staticmethod
    def _token_logprob(
        llama: Any,
        token: int,
        logits: np.ndarray | None,
        top_n: int,
        extra: tuple[int, ...],
        token_logprob: Any,
        top_logprob: Any,
    ) -> Any:
        piece = llama.detokenize([token])
        if logits is None:
            return token_logprob(token=piece.decode("utf-8", "replace"), logprob=0.0, bytes=tuple(piece))
        shifted = logits - logits.max()
        log_probs = shifted - np.log(np.exp(shifted).sum())
        candidates = list(np.argsort(-logits)[:top_n]) if top_n else []
        candidates += [t for t in extra if t not in candidates]
        top = tuple(
            top_logprob(
                token=llama.detokenize([int(t)]).decode("utf-8", "replace"),
                logprob=float(log_probs[t]),
                bytes=tuple(llama.detokenize([int(t)])),
                token_id=int(t),
            )
            for t in candidates
        )
        return token_logprob(
            token=piece.decode("utf-8", "replace"),
            logprob=float(log_probs[token]),
            bytes=tuple(piece),
            token_id=int(token),
            top=top,
        )

    @staticmethod
    def _decision_alternatives(
        llama: Any, steps: list[tuple[int, np.ndarray | None]], text: str, schema: Any
    ) -> dict[int, tuple[int, ...]]:
        """For each decision property, the step where its answers part ways and the first
        token of each answer there. Those tokens are added to that step's alternatives so
        a reader can compare the answers' probabilities, which the grammar hid."""
        import re

        extra: dict[int, tuple[int, ...]] = {}
        if not steps:
            return extra
        pieces = [llama.detokenize([token]) for token, _ in steps]
        starts = np.cumsum([0] + [len(p) for p in pieces])
        encoded = text.encode("utf-8", errors="replace")
        for name, answers in decision_keys(schema).items():
            match = re.search(r'"' + re.escape(name) + r'"\s*:\s*', text)
            if match is None:
                continue
            value_at = len(text[: match.end()].encode("utf-8"))
            step = int(np.searchsorted(starts, value_at, side="right") - 1)
            if step >= len(steps):
                continue
            # Walk forward while every answer would continue with the generated token.
            while step < len(steps):
                head = encoded[starts[step] : value_at] if value_at > starts[step] else b""
                continuations = [head + json.dumps(a).encode()[max(0, starts[step] - value_at) :] for a in answers]
                firsts = [(llama.tokenize(c, add_bos=False, special=False) or [None])[0] for c in continuations]
                if len(set(firsts)) > 1 or firsts[0] != steps[step][0]:
                    extra[step] = tuple(t for t in firsts if t is not None)
                    break
                step += 1
        return extra

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """The model stays loaded as long as its ``models``; other LMs may share it."""


def _common_prefix(previous: list[int], tokens: list[int]) -> int:
    """Tokens llama.cpp can keep from its last evaluation (it re-evaluates at least one)."""
    count = 0
    for old, new in zip(previous, tokens, strict=False):
        if old != new:
            break
        count += 1
    return min(count, max(0, len(tokens) - 1))


class AsyncLlamaCppEngine:
    """Async counterpart DSPy needs for ``acall``; runs the sync engine off the loop."""

    supports_response_schema: ClassVar[bool] = True
    supported_params: ClassVar[frozenset[str]] = LlamaCppEngine.supported_params

    def __init__(self, sync: LlamaCppEngine) -> None:
        self.sync = sync

    def dump_state(self) -> dict[str, Any]:
        return self.sync.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncLlamaCppEngine:
        return cls(LlamaCppEngine.load_state(state))

    async def complete(self, request: Any) -> Any:
        return await asyncio.to_thread(self.sync.complete, request)

    async def stream(self, request: Any) -> Any:
        response = await self.complete(request)
        from dspy.lm15 import response_to_events

        for event in response_to_events(response):
            yield event

    async def aclose(self) -> None:
        """Nothing to release; see :meth:`LlamaCppEngine.close`."""
