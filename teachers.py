"""Teachers: who writes the reference answers of a dataset.

A teacher answers a request {id, system, user, record, label, mode} with answer text in the forecaster
format. data_pipeline.py validates every answer, retries bad ones, journals good ones and inserts the
Prediction line for hindsight answers; a teacher only writes text.

`OfflineTeacher` is deterministic and extractive: it writes the exact answer format from the
prompt's own content (news headlines, weekly price moves, the financials block) — no model, no network.
  hindsight: the analysis supports the realised label (the pipeline inserts 'Prediction: <label>').
  blind:     predicts last week's direction and size (momentum), never sees the outcome.
"""
import os
import threading

from openai_chat import ChatRules, FatalAPIError, create_chat, openai_api_key  # noqa: F401 (re-exported)
from prompt import label_from_return

_UPBEAT = ("jump", "52-week high", "new product", "expands", "partnership")
_DOWNBEAT = ("slide", "52-week low", "falls")


class TeacherFatalError(FatalAPIError):
    """No answer can succeed (bad key, no credits, unknown model, a bad request that persists): stop
    the run, keep the journal."""


def _clip(text, limit=110):
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


class OfflineTeacher:
    name = "offline"
    model = "offline-extractive-v1"

    def answer(self, request):
        record, mode = request["record"], request["mode"]
        weeks = record["weeks"]
        positives, concerns = [], []
        for week in weeks:
            p0, p1 = week["start_price"], week["end_price"]
            move = (p1 / p0 - 1) * 100
            fact = f"Shares moved {move:+.1f}% in the week of {week['start']} ({p0:.2f} to {p1:.2f})."
            (positives if move >= 0 else concerns).append(fact)
            for item in week.get("news") or []:
                head = item["headline"].lower()
                if any(w in head for w in _UPBEAT):
                    positives.append(_clip(item["headline"]) + ".")
                elif any(w in head for w in _DOWNBEAT):
                    concerns.append(_clip(item["headline"]) + ".")
        metrics = (record.get("financials") or {}).get("metrics") or {}
        if "quarterReturn" in metrics:
            q = metrics["quarterReturn"]
            target = concerns if str(q).startswith("-") else positives
            target.append(f"The latest reported quarter returned {q}.")
        if "dailyVolatility" in metrics:
            concerns.append(f"Daily volatility of {metrics['dailyVolatility']} in the latest quarter "
                            "adds uncertainty.")
        positives = positives[-3:] or ["No clearly favourable development in the recent news."]
        concerns = concerns[-3:] or ["No clearly unfavourable development in the recent news."]

        total = (weeks[-1]["end_price"] / weeks[0]["start_price"] - 1) * 100
        last = weeks[-1]["end_price"] / weeks[-1]["start_price"] - 1
        summary = (f"Over the past {len(weeks)} week(s) {record['symbol']} moved {total:+.1f}%, with "
                   f"{len(positives)} favourable and {len(concerns)} unfavourable factors listed.")
        if mode == "hindsight":
            balance = "favourable" if request["label"].startswith("up") else "unfavourable"
            analysis = (f"{summary} Weighing these, the {balance} factors dominate for the week of "
                        f"{record['period']}.")
            prediction_block = analysis   # the pipeline inserts 'Prediction: <label>' above it
        else:
            guess = label_from_return(last)
            analysis = (f"{summary} Last week's move of {last * 100:+.1f}% is taken as the best guide, so "
                        "the prediction follows the recent momentum.")
            prediction_block = f"Prediction: {guess[0].upper() + guess[1:]}\nAnalysis: {analysis}"
        return ("[Positive Developments]:\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(positives, 1))
                + "\n\n[Potential Concerns]:\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(concerns, 1))
                + "\n\n[Prediction & Analysis]:\n" + prediction_block)


# USD per 1M tokens (input, output), list prices when written; override with --price_in/--price_out.
PRICES_PER_M_TOKENS = {
    "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00), "gpt-4.1-nano": (0.10, 0.40), "o4-mini": (1.10, 4.40),
    "deepseek-chat": (0.27, 1.10),
}
CHARS_PER_TOKEN = 4.0          # rough English average, for estimates only
EXPECTED_ANSWER_TOKENS = 550   # public dataset answers: 1.3k-3.1k characters


def estimate_cost(requests, model, max_tokens, price_in=None, price_out=None):
    """(prompt tokens, completion tokens, USD or None) estimated before any call."""
    prompt_tokens = int(sum(len(r["system"]) + len(r["user"]) for r in requests) / CHARS_PER_TOKEN)
    completion_tokens = len(requests) * min(max_tokens, EXPECTED_ANSWER_TOKENS)
    table = PRICES_PER_M_TOKENS.get(model)
    p_in = price_in if price_in is not None else (table[0] if table else None)
    p_out = price_out if price_out is not None else (table[1] if table else None)
    cost = None if p_in is None or p_out is None else (prompt_tokens * p_in + completion_tokens * p_out) / 1e6
    return prompt_tokens, completion_tokens, cost


class OpenAITeacher:
    """Any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, llama.cpp server) via the openai client.
    Thread-safe: data_pipeline runs several requests at once. Request parameters follow
    openai_chat.ChatRules (max_completion_tokens / no temperature for reasoning models, learned from the
    first 400 and kept for the run). A truncated answer (finish_reason 'length') raises, so the pipeline
    retries it instead of keeping half an answer; a bad key, no credits, an unknown model or a bad request
    that persists raise TeacherFatalError, which stops the run."""
    name = "openai"

    def __init__(self, model, base_url=None, api_key=None, temperature=0.7, max_tokens=1024,
                 timeout_s=120.0, max_retries=3, http_client=None):
        from openai import OpenAI
        api_key = api_key or openai_api_key()
        if not api_key:
            raise ValueError("the openai teacher needs a key: set OPENAI_API_KEY (or OPENAI_KEY) in the "
                             "environment or .env; local servers accept any non-empty value")
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self._key = api_key
        self.client = OpenAI(api_key=api_key, base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
                             timeout=timeout_s, max_retries=max_retries, http_client=http_client)
        self.rules = ChatRules()
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        self._lock = threading.Lock()

    def answer(self, request):
        try:
            response = create_chat(self.client, self.model,
                                   [{"role": "system", "content": request["system"]},
                                    {"role": "user", "content": request["user"]}],
                                   self.rules, self.max_tokens, api_key=self._key, temperature=self.temperature)
        except FatalAPIError as exc:
            raise TeacherFatalError(f"teacher {self.model}: {exc}") from None
        with self._lock:
            self.usage["requests"] += 1
            if response.usage:
                self.usage["prompt_tokens"] += response.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += response.usage.completion_tokens or 0
        choice = response.choices[0]
        if choice.finish_reason == "length":
            raise ValueError(f"truncated answer (hit {self.rules.token_limit}={self.max_tokens})")
        return choice.message.content or ""

    def request_parameters(self):
        """What the server was sent, for build.json (learned rules included)."""
        return {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature,
                **self.rules.describe()}


TEACHERS = {"offline": OfflineTeacher, "openai": OpenAITeacher}
