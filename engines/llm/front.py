"""ChatFront: the half of a chat engine that runs off the engine thread and never calls MLX.

Tokenizer, chat templates, fit checks, grammar compilation, request validation and admission
counting, called from the event loop (the server runs the slow ones, tokenizing a prompt and
compiling a grammar, in worker threads). Everything here is pure Python over values the engine
thread set once at load (`tokenizer`, `info`, `vocab_size`, `profile`, `kv_budget_bytes`,
`max_batch`); after that they are only read.

Invariants: `submit`-side checks raise before anything is queued; the counts (`active`,
`queued`) change only under `_counts_lock` (the event loop adds, the engine thread releases).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from engines.errors import InvalidRequest, KVBudgetExceeded, Overloaded
from engines.llm.constrain import GrammarCompiler
from engines.llm.special_text import SpecialText
from engines.llm.templates import render_chat
from engines.types import ChatLimits, ChatModelInfo, GenerationRequest

if TYPE_CHECKING:
    from engines.llm.caches import CacheProfile


class ChatFront:
    """Set by the engine at load: tokenizer, info, vocab_size, profile, budget, max_batch."""

    keeps_images = False  # a vision model's front keeps image parts for its template

    def __init__(self, name: str, limits: ChatLimits) -> None:
        self.name = name
        self.limits = limits
        self.info: ChatModelInfo | None = None
        self.tokenizer: Any = None
        self.vocab_size = 0
        self.profile: CacheProfile | None = None
        self.kv_budget_bytes = 0
        # Sized to the device at load unless set (engines/llm/limits.py); 1 for models whose
        # caches cannot be batched. Until load, the old fixed defaults.
        self.max_batch = limits.max_batch or 32
        self.max_waiting = 64 if limits.max_waiting is None else limits.max_waiting
        self.limits_reason = ""
        self._grammars: GrammarCompiler | None = None
        self._special_text: SpecialText | None = None
        self._grammar_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._active = 0  # choices accepted and not finished
        self._queued = 0  # requests accepted and not yet admitted to prefill

    @property
    def active(self) -> int:
        """Choices accepted and not yet finished (waiting, prefilling or decoding)."""
        return self._active

    @property
    def queued(self) -> int:
        """Requests waiting for admission (the queue that overflows into 429s)."""
        return self._queued

    def release(self, choices: int, queued: int = 0) -> None:
        """Count choices and queue places freed (negative) or taken (positive)."""
        with self._counts_lock:
            self._active += choices
            self._queued += queued

    def grammar_compiler(self) -> GrammarCompiler:
        """The model's tokenizer for llguidance, built on first use (slow: a pass over the whole
        vocabulary; no MLX: any thread). Lazy, so engines that never constrain need no
        llguidance at all."""
        with self._grammar_lock:  # its own lock: building is slow
            if self._grammars is None:
                eos = sorted(self.info.eos_token_ids) if self.info else []
                hf_tokenizer = getattr(self.tokenizer, "_tokenizer", self.tokenizer)
                self._grammars = GrammarCompiler(hf_tokenizer, self.vocab_size, eos)
            return self._grammars

    def check_grammar(self, grammar: str, param: str) -> None:
        """Raise InvalidRequest (naming `param`) unless `grammar` can be enforced."""
        self.grammar_compiler().check(grammar, param)

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Render the model's chat template and tokenize, special-token strings in the messages
        and tools as text (engines/llm/special_text.py); pure Python (no MLX), any thread."""
        if self._special_text is None:  # built once; two threads building it build the same
            self._special_text = SpecialText(self.tokenizer)
        return self._special_text.encode_chat(
            messages, lambda chat, defined: self.render(chat, defined, template_kwargs), tools
        )

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text (engines/llm/templates.py); image parts kept where they are on a
        model that reads images (`keeps_images`)."""
        return render_chat(
            self.tokenizer, messages, tools, template_kwargs, keep_images=self.keeps_images
        )

    def encode_text(self, text: str) -> list[int]:
        """Tokenize a raw prompt as the model expects it (BOS added if the model wants one)."""
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def encode_output(self, text: str) -> list[int]:
        """Tokenize text as the model would write it in its reply (no special token added): a
        predicted output's tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_fim(self, prefix: str, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt, or InvalidRequest if the model has no FIM tokens."""
        assert self.info is not None
        if self.info.fim_tokens is None:
            raise InvalidRequest(
                f"model '{self.name}' has no fill-in-the-middle tokens, so 'suffix' cannot be used",
                param="suffix",
            )
        pre, suf, mid = self.info.fim_tokens
        text = f"{pre}{prefix}{suf}{suffix}{mid}"
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens))

    def check_fits(
        self, prompt_tokens: int, max_tokens: int | None, param: str = "messages"
    ) -> int:
        """Return the max_tokens to use, or raise ContextTooLong (before any model work)."""
        assert self.info is not None
        return self.info.fit(prompt_tokens, max_tokens, param)

    def kv_bytes(self, choices: int, tokens: int) -> int:
        """Cache memory of `choices` rows of a dense batch `tokens` long (per cache kind)."""
        assert self.profile is not None
        return choices * self.profile.row_bytes(tokens)

    def admit(self, request: GenerationRequest) -> None:
        """Check a request and take its queue place and choices, or raise before any of it:
        InvalidRequest (cannot be served as asked), KVBudgetExceeded (could never fit in
        memory on its own), Overloaded (queue full)."""
        if not request.prompt_tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if request.n > self.max_batch:
            raise InvalidRequest(
                f"n={request.n} exceeds this engine's batch of {self.max_batch}", param="n"
            )
        bad = [t for t, _ in request.sampling.logit_bias if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"logit_bias names token ids outside the vocabulary (0..{self.vocab_size - 1}): "
                f"{bad[:5]}",
                param="logit_bias",
            )
        tokens = len(request.prompt_tokens) + request.max_tokens
        need = self.kv_bytes(request.n, tokens)
        if need > self.kv_budget_bytes:
            raise KVBudgetExceeded(
                f"This request needs {need / 2**20:.0f} MiB of KV cache ({request.n} × "
                f"{tokens} tokens), more than the engine's budget of "
                f"{self.kv_budget_bytes / 2**20:.0f} MiB; lower max_tokens or n",
                param="max_tokens",
            )
        with self._counts_lock:
            if self._queued >= self.max_waiting:
                raise Overloaded(
                    f"model '{self.name}' has {self._queued} requests waiting, the most it queues;"
                    " retry shortly",
                    retry_after_s=1,
                )
            self._queued += 1
            self._active += request.n
