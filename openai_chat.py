"""Calling any OpenAI-compatible chat server: one set of rules for the teacher (teachers.py) and for
`inference.py --backend openai`.

Parameters. Reasoning models (OpenAI's o-series, gpt-5) reject `max_tokens` (they want
`max_completion_tokens`) and any `temperature`/`top_p` other than their default, with a 400 whose error
names the parameter; older servers may reject `max_completion_tokens`. `ChatRules` starts with the widely
understood spelling, learns from the first such 400 (renames the token limit, drops the named sampling
parameter), re-sends, and keeps what it learned for the rest of the run; `describe()` is what a run
records in its manifest. `logprobs`/`top_logprobs` (asked for by `inference.py --logprobs`) are learned the
same way: a server that rejects either gets neither from then on, and the run records why it has no p_up.

Errors. `FatalAPIError` means no request can succeed and the run must stop at once: a rejected key
(401), no access (403), an unknown model or URL (404), no credits (429 `insufficient_quota`, which is
not a rate limit) and a bad request that learning cannot fix. A prompt longer than the model's context
is that prompt's own failure (ValueError). Everything else (timeouts, 5xx, ordinary 429s) is left to
the client's own retries and then to the caller.
"""
import os
import re
import sys
import threading

from errors import ForecasterError

TOKEN_LIMIT_NAMES = ("max_tokens", "max_completion_tokens")
SAMPLING_NAMES = ("temperature", "top_p")
LOGPROB_NAMES = ("logprobs", "top_logprobs")     # optional: left out together when a server rejects either
MAX_LEARNING_ROUNDS = 5     # one per learnable parameter (token limit, temperature, top_p, logprobs), plus one


class FatalAPIError(ForecasterError, RuntimeError):
    """No request to this server can succeed: stop the run (keep what was written)."""


def openai_api_key():
    """OPENAI_API_KEY, or upstream's OPENAI_KEY."""
    return os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_KEY")


def _redact(text, secret):
    text = str(text)
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"(sk-[A-Za-z0-9_-]{2})[A-Za-z0-9_*-]{6,}", r"\1***", text)   # keys a server echoes back


class ChatRules:
    """Which request parameters a server accepts, learned from its 400s; shared by a run's threads."""

    def __init__(self, token_limit="max_tokens"):
        self.token_limit = token_limit
        self.omitted = set()
        self._rejected = set()         # token-limit spellings the server refused
        self.learned = []              # one line per rule learned, for the manifest and the log
        self._lock = threading.Lock()

    def params(self, max_tokens, **sampling):
        """Keyword arguments for chat.completions.create under the current rules."""
        with self._lock:
            out = {self.token_limit: max_tokens}
            out.update({k: v for k, v in sampling.items() if v is not None and k not in self.omitted})
        return out

    def learn(self, exc, sent):
        """Adapt to a 400 that names parameters we sent. True if the request is worth re-sending (a
        rule changed, or another thread already changed it), False if the 400 is about something else."""
        named = _named_parameters(exc, sent)
        if not named:
            return False
        with self._lock:
            for name in named:
                if name in TOKEN_LIMIT_NAMES:
                    other = TOKEN_LIMIT_NAMES[1 - TOKEN_LIMIT_NAMES.index(name)]
                    if self.token_limit == name:
                        if other in self._rejected:
                            return False          # both spellings rejected: nothing left to try
                        self._rejected.add(name)
                        self.token_limit = other
                        self._note(f"{other} instead of {name}", exc)
                elif name in LOGPROB_NAMES:
                    if not self.omitted.issuperset(LOGPROB_NAMES):
                        self.omitted.update(LOGPROB_NAMES)
                        self._note("logprobs and top_logprobs left out (the server does not offer them)", exc)
                elif name not in self.omitted:
                    self.omitted.add(name)
                    self._note(f"{name} left out (the model accepts only its default)", exc)
        return True

    def _note(self, rule, exc):
        self.learned.append(f"{rule}: {_message(exc)[:160]}")
        print(f"note: the server rejected a parameter; using {rule} for the rest of the run", file=sys.stderr)

    def describe(self):
        with self._lock:
            return {"token_limit_parameter": self.token_limit, "omitted": sorted(self.omitted),
                    "learned": list(self.learned)}


def _message(exc):
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(exc, "message", "") or exc)


def _named_parameters(exc, sent):
    """Parameters of `sent` that a 400 names: its `param` field, else whole words in its message."""
    param = getattr(exc, "param", None)
    if param in sent:
        return [param]
    text = _message(exc)
    return [name for name in sent if name in TOKEN_LIMIT_NAMES + SAMPLING_NAMES + LOGPROB_NAMES
            and re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", text)]


def fatal_reason(exc, api_key=None):
    """A one-line reason when `exc` means no request can succeed, else None."""
    import openai
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.AuthenticationError):
        return "the server rejected the API key (401): check OPENAI_API_KEY (or OPENAI_KEY) and the base URL"
    if isinstance(exc, openai.PermissionDeniedError):
        return f"no access (403): {_redact(_message(exc), api_key)[:200]}"
    if isinstance(exc, openai.NotFoundError):
        return f"unknown model or URL (404): check the model name and the base URL ({_redact(_message(exc), api_key)[:160]})"
    if isinstance(exc, openai.RateLimitError) and "insufficient_quota" in (
            f"{getattr(exc, 'code', '')} {getattr(exc, 'type', '')} {_message(exc)}"):
        return "no credits left (429 insufficient_quota): add credits or use another key; retrying cannot help"
    if status == 400 and not _is_context_overflow(exc):
        return f"the server rejects the request (400): {_redact(_message(exc), api_key)[:240]}"
    return None


def _is_context_overflow(exc):
    text = f"{getattr(exc, 'code', '')} {_message(exc)}".lower()
    return "context_length" in text or "maximum context length" in text or "too many tokens" in text


def create_chat(client, model, messages, rules, max_tokens, api_key=None, **sampling):
    """client.chat.completions.create under `rules`, learning from 400s that name a parameter.
    Raises FatalAPIError when no request can succeed, ValueError for a prompt over the context length;
    other errors (after the client's own retries) propagate unchanged."""
    import openai
    for _ in range(MAX_LEARNING_ROUNDS):
        params = rules.params(max_tokens, **sampling)
        try:
            return client.chat.completions.create(model=model, messages=messages, **params)
        except openai.BadRequestError as exc:
            if rules.learn(exc, params):
                continue
            if _is_context_overflow(exc):
                raise ValueError(f"prompt too long for the model: {_redact(_message(exc), api_key)[:200]}") from None
            raise FatalAPIError(fatal_reason(exc, api_key)) from None
        except openai.APIStatusError as exc:
            reason = fatal_reason(exc, api_key)
            if reason:
                raise FatalAPIError(reason) from None
            raise
    raise FatalAPIError(f"the server kept rejecting the request parameters ({rules.describe()['learned']})")
