"""lm-evaluation-harness's model interface over OminiX's own decoder and its KV cache.

Imported only where lm-eval is installed (``ominix.eval.harness`` checks first). Each context is run
once into a KV cache and every continuation of it (a multiple-choice question's answers) is scored
from that cache, rewound to the context's end between continuations. Generation is greedy through
``ominix.infer.generate.StaticDecoder``, the decoder ``ominix infer`` uses.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM

from ominix.model import KVCache

MAX_GEN_TOKS = 256  # lm-eval's own default for a generation task that sets no max_gen_toks


class OminixLM(LM):
    """``model`` (an eval-mode ``ominix.model.LlamaForCausalLM``) with its training ``tokenizer``
    (framed as the training documents were, ``ominix.data.tokenizer.set_framing``)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.max_len = model.config.max_position_embeddings
        weight = model.lm_head.weight
        self._device, self.dtype = weight.device, weight.dtype  # LM.device reads _device
        self.decoder = None  # built on the first generation request

    def _context(self, text: str) -> list[int]:
        """A context's token ids; an empty one is a document boundary (BOS or EOS), as in training."""
        ids = self.tokenizer(text).input_ids
        return ids or [self.tokenizer.bos_token_id or self.tokenizer.eos_token_id]

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, split where the whole text's tokens split (as lm-eval's HF
        model does: a context's trailing spaces belong to the continuation)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        head = self.tokenizer(context).input_ids
        whole = self.tokenizer(context + continuation).input_ids
        return head or self._context(""), whole[len(head):]

    @torch.no_grad()
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._pair(*r.args) for r in requests]
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
        for context, members in groupby(order, key=lambda i: pairs[i][0]):
            members = list(members)
            longest = max(len(pairs[i][1]) for i in members)
            context = context[-max(self.max_len - longest, 1):]  # the continuation must fit whole
            cache = KVCache(self.model.config, 1, len(context) + longest, self.device, self.dtype)
            last = self.model(self._ids(context), cache=cache).logits[:, -1:]
            for i in members:
                results[i] = self._score(pairs[i][1], last, cache, len(context))
        return results

    def _score(self, continuation: list[int], last: torch.Tensor, cache: KVCache,
               start: int) -> tuple[float, bool]:
        """Log-probability of ``continuation`` after the cached context and whether greedy decoding
        would produce it; ``last`` is the context's last logits."""
        cache.pos = start  # rewind: the continuation overwrites the previous one's cache rows
        logits = last
        if len(continuation) > 1:
            logits = torch.cat([last, self.model(self._ids(continuation[:-1]), cache=cache).logits], 1)
        logprobs = F.log_softmax(logits[0].float(), -1)
        target = torch.tensor(continuation, device=self.device)
        picked = logprobs.gather(1, target[:, None]).sum().item()
        return picked, bool((logprobs.argmax(-1) == target).all())

    @torch.no_grad()
    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text's log-probability, scored in windows of the model's context, each window
        starting afresh after a document boundary."""
        out = []
        for request in requests:
            ids = self._context("")[:1] + self.tokenizer(request.args[0], add_special_tokens=False).input_ids
            total = 0.0
            for start in range(0, len(ids) - 1, self.max_len):
                window = ids[start:start + self.max_len + 1]
                logits = self.model(self._ids(window[:-1])).logits[0].float()
                target = torch.tensor(window[1:], device=self.device)
                total += F.log_softmax(logits, -1).gather(1, target[:, None]).sum().item()
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from ominix.infer.generate import StaticDecoder

        if self.decoder is None:
            self.decoder = StaticDecoder(self.model, self.max_len)
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else until
            budget = kwargs.get("max_gen_toks", MAX_GEN_TOKS)
            ids = self._context(context)[-(self.max_len - 1):]
            out.append(self._greedy(ids, min(budget, self.max_len - len(ids)), until))
        return out

    def _greedy(self, ids: list[int], budget: int, until: list[str]) -> str:
        """Greedy continuation of ``ids``, cut before the first of the ``until`` strings."""
        logits = self.decoder.prefill(torch.tensor([ids]))
        tokens: list[int] = []
        for i in range(budget):
            token = int(logits.argmax(-1))
            if token == self.tokenizer.eos_token_id:
                break
            tokens.append(token)
            text = self.tokenizer.decode(tokens)
            if any(stop in text for stop in until):
                break
            logits = self.decoder.step(token, len(ids) + i)
        text = self.tokenizer.decode(tokens)
        for stop in until:
            text = text.split(stop)[0]
        return text

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], device=self.device)
