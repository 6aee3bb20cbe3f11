"""The one HF generation path: batched, left-padded generation with transformers, used by inference.py
(--backend hf) and by train_lora.py's validation callback, so the accuracy measured during training is the
accuracy inference.py measures on the same checkpoint and rows.

It owns, once each:
- the prompt: (system, user) of a row (prompt.chat_parts) in the run's style, tokenized as training tokenizes
  it (supervision.prompt_token_ids), trimmed by supervision.fit_prompt (oldest news weeks first) only when
  it would not leave `max_new_tokens` of the model's context;
- the stop rule of a style (`stop_rule`): the tokenizer's EOS and the style's stop strings, as token ids where
  a stop string is one token and as text otherwise;
- the decoding settings (`GREEDY`): greedy with every sampling default of the model's generation_config
  cleared and repetition_penalty=1.0 (Qwen2.5 ships 1.05), the settings `vllm_sampling_kwargs` gives vLLM;
- the batch plan (`plan_batches`): longest prompts first.

The other backends turn rows into the same Generated tuples: OpenAIGenerator (any OpenAI-compatible server,
concurrent requests) and VLLMGenerator (vLLM's offline engine on a GPU, with the same greedy settings and stop
strings). torch, transformers, openai, vllm and direction_probs (which imports torch) load when a backend is
built or generation starts.
"""
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from errors import ForecasterError
from openai_chat import ChatRules, FatalAPIError, create_chat
from prompt import chat_parts, parse_answer
from supervision import fit_prompt

GPU_MEMORY_UTILIZATION = 0.9      # vllm: share of the GPU's memory vLLM takes for weights + KV cache (its default)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)   # the max_lora_rank values vLLM accepts (LoRAConfig)
TOP_LOGPROBS = 20                 # vllm/openai p_up: top-k logprobs per generated token. 20 is the most either
                                  # gives by default (vLLM's max_logprobs, OpenAI's top_logprobs cap); a model that
                                  # wrote " Up" keeps its other up/down variants far inside its top 20

# Greedy means the same on every backend: no sampling, and no penalty the checkpoint's generation_config may
# carry. temperature/top_p/top_k None clear generation_config's sampling defaults (no warning, no effect).
GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "repetition_penalty": 1.0}


class InferenceError(ForecasterError, ValueError):
    """A user mistake or an unusable input for generation: printed as one `Error:` line."""


class Generated(tuple):
    """(text, output tokens, hit max_new_tokens) with `extra`: more predictions.jsonl fields."""

    def __new__(cls, result, extra=None):
        obj = super().__new__(cls, result)
        obj.extra = extra or {}
        return obj


def stop_strings(style):
    """Every string that ends an answer in this style: its stop strings and its end-of-answer marker
    (EOS itself is the tokenizer's, added by the backend).

    >>> from prompt import get_style
    >>> stop_strings(get_style("chatml")), stop_strings(get_style("plain")), stop_strings(get_style("llama2"))
    (('<|im_end|>',), ('\\n### User:',), ())
    """
    marker = () if "{eos}" in style.end_of_answer else (style.end_of_answer,)
    return tuple(dict.fromkeys((*style.stop_strings, *marker)))


def stop_rule(tokenizer, style):
    """(end token ids, text stops): EOS and each one-token stop string stop generation by id; a stop string
    of several tokens is matched in the text (transformers' stop_strings) and cut from the answer."""
    vocab = tokenizer.get_vocab()
    strings = stop_strings(style)
    end_ids = sorted({tokenizer.eos_token_id, *(vocab[s] for s in strings if s in vocab)} - {None})
    return end_ids, [s for s in strings if s not in vocab]


def vllm_sampling_kwargs(style, max_new_tokens, temperature=0.0, top_p=1.0):
    """SamplingParams arguments with GREEDY's meaning and stop_rule's strings (vLLM stops at EOS itself)."""
    return {"temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens,
            "repetition_penalty": GREEDY["repetition_penalty"], "stop": list(stop_strings(style)) or None}


def context_length(model):
    """The model's context in tokens (max_position_embeddings), or None when its config does not say."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def plan_batches(rows, batch_size, lengths=None):
    """Batches of rows, longest prompts first, so each batch pads little and memory trouble shows at once.

    >>> plan_batches(list("abcde"), 2, lengths=[3, 9, 1, 7, 5])
    [['b', 'd'], ['e', 'a'], ['c']]
    """
    order = sorted(range(len(rows)), key=lambda i: -lengths[i]) if lengths else list(range(len(rows)))
    return [[rows[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]


class HFGenerator:
    """Batched generation with transformers: left padding, stop_rule's stop, GREEDY decoding (or seeded
    per-row sampling when temperature > 0), p_up read at the Prediction line's direction token."""

    def __init__(self, model, tokenizer, style, max_new_tokens, temperature=0.0, top_p=1.0, samples=1, seed=0,
                 bin_probs=False, p_up=True, context=None):
        self.model, self.tokenizer, self.style = model, tokenizer, style
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.samples, self.seed, self.bin_probs, self.p_up = samples, seed, bin_probs, p_up or bin_probs
        self.end_ids, self.text_stops = stop_rule(tokenizer, style)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        context = context or context_length(model)
        self.prompt_budget = max(1, context - max_new_tokens) if context else None
        self._prompt_ids = {}                    # prompt text -> ids: batches are planned by length, then encoded

    def prompt_ids(self, row):
        """The row's prompt tokens; the oldest news weeks removed only if the answer would not fit."""
        if row["prompt"] not in self._prompt_ids:
            system, user = chat_parts(row)
            self._prompt_ids[row["prompt"]] = fit_prompt(self.tokenizer, self.style, system, user,
                                                         self.prompt_budget or float("inf"))[0]
        return list(self._prompt_ids[row["prompt"]])

    def token_lengths(self, rows):
        return [len(self.prompt_ids(r)) for r in rows]

    def generate_all(self, rows, batch_size):
        """Every row's Generated, in row order, batch_size prompts per call (planned by plan_batches)."""
        lengths = self.token_lengths(rows)
        order = plan_batches(list(range(len(rows))), batch_size, lengths)
        results = [None] * len(rows)
        for batch in order:
            for k, result in zip(batch, self.generate([rows[k] for k in batch])):
                results[k] = result
        return results

    def _encode(self, rows):
        import torch
        ids = [self.prompt_ids(r) for r in rows]
        longest, pad = max(map(len, ids)), self.pad_id
        device = next(self.model.parameters()).device
        return {"input_ids": torch.tensor([[pad] * (longest - len(x)) + x for x in ids], device=device),
                "attention_mask": torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in ids], device=device)}

    def generate(self, rows):
        """[Generated (text, output tokens, hit max_new_tokens) with .extra {p_up[, p_bins][, samples]}]."""
        import torch
        from transformers import LogitsProcessorList

        from direction_probs import (DirectionProbe, RowSampler, bin_probabilities, direction_step, generation_cache,
                                     seed_for, vote)
        enc = self._encode(rows)
        n_samples = self.samples
        if n_samples > 1:                        # every example N times in the batch, each with its own seed
            enc = {k: v.repeat_interleave(n_samples, dim=0) for k, v in enc.items()}
        kwargs = dict(GREEDY, max_new_tokens=self.max_new_tokens, eos_token_id=self.end_ids, pad_token_id=self.pad_id,
                      use_cache=True)             # training turns the config's use_cache off
        sampler = None
        if self.temperature > 0:                 # seeded per (seed, id, sample): batch- and resume-independent
            sampler = RowSampler([seed_for(self.seed, r["id"], k) for r in rows for k in range(n_samples)],
                                 self.temperature, self.top_p)
        probe = DirectionProbe(self.tokenizer, sampler, record=self.p_up) if self.p_up or sampler else None
        if probe is not None:
            kwargs["logits_processor"] = LogitsProcessorList([probe])
        if self.bin_probs:
            kwargs["return_dict_in_generate"] = True     # the KV cache, to score the 12 labels from
        if self.text_stops:
            kwargs.update(stop_strings=self.text_stops, tokenizer=self.tokenizer)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
        finally:
            if was_training:                     # the training callback generates mid-training
                self.model.train()
        sequences = out.sequences if self.bin_probs else out
        prompt_len = enc["input_ids"].shape[1]
        new = sequences[:, prompt_len:].tolist()
        ends = set(self.end_ids) | {self.pad_id}
        per_sequence = []
        for j, ids in enumerate(new):
            n = next((k for k, t in enumerate(ids) if t in ends), len(ids))
            ended = n < len(ids)
            if ended and ids[n] in self.end_ids:
                n += 1                           # the end token was generated: count it
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            stopped = False
            for s in self.text_stops:
                if s in text:
                    text, stopped = text[:text.index(s)], True
            p_up = p_bins = None
            if self.p_up:
                step = direction_step(self.tokenizer, ids[:n], text)
                if step is not None and probe.is_direction_token(ids[step]):
                    p_up = probe.p_up(j, step)
                    if self.bin_probs:
                        p_bins = bin_probabilities(self.model, self.tokenizer, probe, generation_cache(out),
                                                   enc["attention_mask"][j], j, step, prompt_len, ids[step])
            per_sequence.append((text.strip(), n, not ended and not stopped and n >= self.max_new_tokens, p_up, p_bins))
        results = []
        for b in range(len(rows)):
            group = per_sequence[b * n_samples:(b + 1) * n_samples]
            pick, p_up = 0, group[0][3]
            extra = {}
            if n_samples > 1:                    # self-consistency: majority direction, p_up = up share of votes
                pick, p_up = vote([parse_answer(g[0]).direction for g in group])
                extra["samples"] = [g[0] for g in group]
            if self.p_up:
                extra["p_up"] = p_up
            if self.bin_probs:
                with_bins = [g[4] for g in group if g[4]]
                extra["p_bins"] = ({c: sum(p[c] for p in with_bins) / len(with_bins) for c in with_bins[0]}
                                   if with_bins else None)
            text, tokens, hit = group[pick][:3]
            if n_samples > 1:
                tokens = sum(g[1] for g in group)        # all N samples were generated: tokens/s counts them
            results.append(Generated((text, tokens, hit), extra))
        return results


class OpenAIGenerator:
    """Any OpenAI-compatible chat server; rows are sent as (system, user) messages, batch_size at a time.
    Request parameters follow openai_chat.ChatRules, the teacher's rules (max_completion_tokens / no
    temperature for reasoning models, learned from the first 400); a bad key, no credits, an unknown model
    or a bad request that persists stop the run with one error (rows already written are kept)."""

    def __init__(self, model_name, base_url=None, api_key=None, max_new_tokens=768, temperature=0.0, top_p=1.0,
                 timeout=300.0, max_retries=2, concurrency=8, http_client=None, logprobs=False):
        from openai import OpenAI
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                             http_client=http_client)
        self.model_name, self.max_new_tokens, self._key = model_name, max_new_tokens, api_key
        self.temperature, self.top_p, self.concurrency = temperature, top_p, concurrency
        self.rules = ChatRules()
        self.logprobs = logprobs                 # ask for top_logprobs and compute p_up (--logprobs)
        self.with_logprobs = self.without_logprobs = 0
        self._count_lock = threading.Lock()

    def _one(self, row):
        system, user = chat_parts(row)
        try:
            resp = create_chat(self.client, self.model_name, [{"role": "system", "content": system},
                                                              {"role": "user", "content": user}],
                               self.rules, self.max_new_tokens, api_key=self._key,
                               temperature=self.temperature, top_p=self.top_p,
                               **({"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.logprobs else {}))
        except FatalAPIError as exc:
            raise InferenceError(f"the model server ({self.model_name}): {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the client has many error types; the row is retried on resume
            return exc
        choice = resp.choices[0]
        tokens = resp.usage.completion_tokens if resp.usage else None
        result = ((choice.message.content or "").strip(), tokens, choice.finish_reason == "length")
        if not self.logprobs:
            return result
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        with self._count_lock:
            if content:
                self.with_logprobs += 1
            else:
                self.without_logprobs += 1
        if not content:                          # the server returned none: no p_up (run.json says why)
            return Generated(result)
        return Generated(result, {"p_up": _p_up_openai(content)})

    def describe_probabilities(self):
        """run.json's `probabilities` entry: how p_up was computed, or why it is absent."""
        if not self.logprobs:
            return {"p_up": None, "why": "not requested (--logprobs asks the server for top-k logprobs)"}
        out = {"p_up": f"top_logprobs (k={TOP_LOGPROBS}) at the Prediction line's direction token: sum P(up "
                       "variants) / (sum P(up) + sum P(down)) over the top k; null where the answer has no "
                       "Prediction direction word or no up/down variant is in the top k",
               "top_logprobs": TOP_LOGPROBS, "responses_with_logprobs": self.with_logprobs,
               "responses_without_logprobs": self.without_logprobs}
        if "logprobs" in self.rules.omitted:
            out["why"] = ("the server rejected the logprobs parameter (400), so no answer has p_up: "
                          + "; ".join(r for r in self.rules.learned if r.startswith("logprobs")))
        elif self.without_logprobs:
            out["why"] = (f"the server returned no logprobs for {self.without_logprobs} answer(s); those have "
                          "no p_up field")
        return out

    def generate(self, rows):
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(rows)))) as pool:
            return list(pool.map(self._one, rows))


def _p_up_openai(content):
    """p_up from an OpenAI chat response's logprobs.content (one entry per generated token, with
    top_logprobs); the chosen token counts among the candidates even when a server leaves it out of its top."""
    from direction_probs import direction_index, p_up_from_top_logprobs
    pieces = [c.token for c in content]
    step = direction_index(pieces)
    if step is None:
        return None
    chosen = content[step]
    candidates = {t.token: t.logprob for t in (chosen.top_logprobs or [])}
    candidates.setdefault(chosen.token, chosen.logprob)
    return p_up_from_top_logprobs(chosen.token, candidates.items())


def _p_up_vllm(completion):
    """p_up from a vLLM CompletionOutput generated with SamplingParams(logprobs=k): `logprobs` holds, per
    generated token, {token_id: Logprob(logprob, rank, decoded_token)} (the top k plus the sampled token)."""
    from direction_probs import direction_index, p_up_from_top_logprobs
    steps = getattr(completion, "logprobs", None)
    ids = list(completion.token_ids)
    if not steps or len(steps) < len(ids):
        return None
    pieces = [steps[k][t].decoded_token if t in steps[k] else None for k, t in enumerate(ids)]
    if any(p is None for p in pieces):           # detokenize=False or a malformed entry: no texts to locate in
        return None
    step = direction_index(pieces)
    if step is None:
        return None
    return p_up_from_top_logprobs(pieces[step], [(lp.decoded_token, lp.logprob) for lp in steps[step].values()])


class VLLMGenerator:
    """vLLM offline engine (GPU), with the adapter as a LoRARequest. Imported only when chosen.

    max_model_len: the longest prompt + max_new_tokens (vLLM's default is the model's whole context, 131,072
    tokens for Llama-3.1, whose KV cache alone does not fit beside the weights on a 24 GB card);
    max_lora_rank: the adapter's r rounded up to a rank vLLM accepts (vllm_lora_rank); logprobs=TOP_LOGPROBS
    gives p_up (_p_up_vllm) at no extra generation pass."""

    def __init__(self, source, style, adapter=None, dtype=None, max_new_tokens=768, temperature=0.0, top_p=1.0,
                 max_model_len=None, lora_rank=None, gpu_memory_utilization=GPU_MEMORY_UTILIZATION):
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise InferenceError("--backend vllm needs vLLM: install requirements-vllm.txt in its own "
                                 "environment on a GPU machine and run inference.py with that python") from None
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, "auto")
        engine = {"model": source, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization}
        if max_model_len:
            engine["max_model_len"] = max_model_len
        if adapter is not None:
            engine.update(enable_lora=True, max_lora_rank=lora_rank or vllm_lora_rank(adapter_rank(adapter)))
        self.engine_args = engine
        self.llm = LLM(**engine)
        self.params = SamplingParams(**vllm_sampling_kwargs(style, max_new_tokens, temperature, top_p),
                                     logprobs=TOP_LOGPROBS)
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None
        self.style = style

    def generate(self, rows):
        prompts = [self.style.format_prompt(*chat_parts(r)) for r in rows]
        outs = self.llm.generate(prompts, self.params, lora_request=self.lora)
        return [Generated((c.text.strip(), len(c.token_ids), c.finish_reason == "length"), {"p_up": _p_up_vllm(c)})
                for c in (o.outputs[0] for o in outs)]


def adapter_rank(adapter):
    """The LoRA rank of an adapter folder: r, or the largest per-module rank in rank_pattern."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return max([int(config.get("r") or 8)] + [int(v) for v in (config.get("rank_pattern") or {}).values()])


def vllm_lora_rank(r):
    """The smallest max_lora_rank vLLM accepts that holds rank r.

    >>> vllm_lora_rank(8), vllm_lora_rank(12), vllm_lora_rank(65), vllm_lora_rank(300)
    (8, 16, 128, 320)
    """
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise InferenceError(f"the adapter's LoRA rank {r} is above {VLLM_LORA_RANKS[-1]}, the largest vLLM serves; "
                         "use --backend hf")


def vllm_max_model_len(tokenizer, style, rows, max_new_tokens, model_limit=None):
    """Longest tokenized prompt + max_new_tokens: the context vLLM must hold, and no more."""
    longest = max(len(tokenizer(style.format_prompt(*chat_parts(r)))["input_ids"]) for r in rows)
    needed = longest + max_new_tokens
    if model_limit and needed > model_limit:
        raise InferenceError(f"the longest prompt ({longest} tokens) + --max_new_tokens {max_new_tokens} = {needed} "
                             f"tokens exceeds the model's context of {model_limit}; lower --max_new_tokens")
    return needed
