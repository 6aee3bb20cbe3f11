"""Fake Finnhub and OpenAI-compatible servers on 127.0.0.1 for the real clients to talk to.

Each server runs in a daemon thread on a free port; behaviour is driven by plain attributes the test
sets (scripted failures, latency, answers). Everything they serve is made up (Finnhub's terms forbid
redistributing its data), but they fail the way the real services do:
  Finnhub: at most `news_cap` (250) newest items per company-news call; no news dated before
           `today` - 365 days (free plan); 401 {"error": "Invalid API key"} for a token not in
           `valid_tokens`; 403 on financials-reported when `reported_status` = 403; {} for profile2 of
           a symbol it does not know.
  OpenAI:  `reasoning` models answer 400 to `max_tokens` and to a temperature/top_p other than 1, with
           OpenAI's error bodies (param, code); `quota_exhausted` answers 429 insufficient_quota; a key
           not in `valid_keys` gets 401; `forbidden` gets 403; a model not in `known_models` gets 404;
           `logprobs` = "offer" answers `logprobs: true` with logprobs.content (one entry per word-ish token,
           `top` = {token: [(text, p), ...]} its top_logprobs), "ignore" returns none, "reject" answers 400."""
import hashlib
import json
import math
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd


class _Server:
    def __init__(self):
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.lock = threading.Lock()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.handle(self, "GET")

            def do_POST(self):
                server.handle(self, "POST")

        return Handler

    @staticmethod
    def send(handler, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


class FakeFinnhub(_Server):
    """/stock/profile2, /company-news, /stock/metric, /stock/financials-reported.

    `script` = list of failures for the next calls: 429, 500, "malformed", ("sleep", seconds).
    `fail_every` = (n, status): every n-th call fails with status. News: `news_per_day` items for each
    weekday (`busy` = {symbol: items per weekday} overrides it; none in `quiet_weeks`), newest first, at
    most `news_cap` per response, none before `today` - `horizon_days`. `profiles` = {symbol: fields}
    merged into profile2; `reported` = {symbol: financials-reported rows}."""

    def __init__(self, symbols=("AAA", "BBB"), news_per_day=2, news_cap=250, today="2024-06-30",
                 horizon_days=365):
        super().__init__()
        self.symbols = set(symbols)
        self.news_per_day, self.news_cap, self.busy = news_per_day, news_cap, {}
        self.today, self.horizon_days = today, horizon_days
        self.quiet_weeks = set()
        self.valid_tokens, self.reported_status = None, None
        self.profiles, self.reported = {}, {}
        self.script, self.fail_every = [], None
        self.calls, self.tokens, self.n = Counter(), set(), 0
        self.news_requests = []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/api/v1"

    def handle(self, h, method):
        parsed = urlparse(h.path)
        params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        path = "/" + parsed.path.split("/api/v1", 1)[-1].lstrip("/")
        with self.lock:
            self.n += 1
            self.calls[path] += 1
            self.tokens.add(params.get("token"))
            failure = self.script.pop(0) if self.script else None
            if failure is None and self.fail_every and self.n % self.fail_every[0] == 0:
                failure = self.fail_every[1]
        if isinstance(failure, tuple) and failure[0] == "sleep":
            time.sleep(failure[1])
        elif failure == "malformed":
            return self.send(h, 200, b"{not json", "application/json")
        elif isinstance(failure, int):
            return self.send(h, failure, {"error": "scripted failure"})
        if self.valid_tokens is not None and params.get("token") not in self.valid_tokens:
            return self.send(h, 401, {"error": "Invalid API key"})
        symbol = params.get("symbol", "")
        if path == "/stock/profile2":
            body = {} if symbol not in self.symbols else {
                "name": f"{symbol} Holdings", "finnhubIndustry": "Widgets", "ipo": "2001-02-03",
                "country": "US", "exchange": "NASDAQ", "currency": "USD", "estimateCurrency": "USD",
                "ticker": symbol, "marketCapitalization": 123456.0, "shareOutstanding": 999.0,
                **self.profiles.get(symbol, {})}
        elif path == "/company-news":
            with self.lock:
                self.news_requests.append((symbol, params["from"], params["to"]))
            body = self.news(symbol, params["from"], params["to"])
        elif path == "/stock/metric":
            body = self.metrics(symbol)
        elif path == "/stock/financials-reported":
            if self.reported_status:
                return self.send(h, self.reported_status, {"error": "You don't have access to this resource."})
            body = {"symbol": symbol, "data": self.reported.get(symbol, [
                {"endDate": "2023-09-30 00:00:00", "filedDate": "2023-10-27 00:00:00", "quarter": 3, "year": 2023}])}
        else:
            return self.send(h, 404, {"error": "no such endpoint"})
        self.send(h, 200, body)

    def news(self, symbol, start, end):
        """Newest first, stopping at the cap (so a busy year costs the server O(cap), not O(year))."""
        if symbol not in self.symbols:
            return []
        horizon = pd.Timestamp(self.today) - pd.Timedelta(days=self.horizon_days)
        per_day = self.busy.get(symbol, self.news_per_day)
        items = []
        for day in reversed(pd.bdate_range(max(pd.Timestamp(start), horizon), end)):
            sunday = (day - pd.Timedelta(days=(day.dayofweek + 1) % 7)).strftime("%Y-%m-%d")
            if sunday in self.quiet_weeks:
                continue
            for k in reversed(range(per_day)):   # spread over 08:00-22:00 UTC of the same day
                items.append({"datetime": int(day.timestamp()) + 8 * 3600 + k * (14 * 3600 // per_day),
                              "headline": f"{symbol} headline {day.date()} #{k}",
                              "summary": f"Made-up summary {k}.", "source": "fake", "url": "http://127.0.0.1/none"})
                if len(items) >= self.news_cap:
                    return items
        return items

    @staticmethod
    def metrics(symbol):
        quarters = ["2023-03-31", "2023-06-30", "2023-09-30", "2023-12-31", "2024-03-31"]
        return {"symbol": symbol, "metric": {}, "series": {
            "quarterly": {"eps": [{"period": q, "v": 1.0 + i / 10} for i, q in enumerate(quarters)],
                          "currentRatio": [{"period": q, "v": 1.5} for q in quarters]},
            "annual": {"eps": [{"period": "2022-12-31", "v": 4.0}, {"period": "2023-12-31", "v": 4.4}]}}}


GOOD_ANSWER = ("[Positive Developments]:\n1. Orders grew.\n2. New product.\n\n[Potential Concerns]:\n"
               "1. Costs rose.\n\n[Prediction & Analysis]:\nThe balance of news supports the move.")


class FakeOpenAI(_Server):
    """POST /v1/chat/completions. `answers` = list of contents to return in order before falling back
    to `default_answer`; `delay_s` per request. Counts requests per prompt (hash of the user message);
    `bodies` keeps the parameter names of every request, `errors` the status of every refused one."""

    def __init__(self, default_answer=GOOD_ANSWER, delay_s=0.0):
        super().__init__()
        self.default_answer, self.delay_s = default_answer, delay_s
        self.answers, self.asked, self.auth = [], Counter(), set()
        self.finish_reasons = []
        self.reasoning, self.quota_exhausted, self.bad_request, self.forbidden = False, False, None, False
        self.valid_keys, self.known_models = None, None
        self.bodies, self.errors = [], Counter()
        self.logprobs, self.top = "offer", {}

    def refusal(self, h, body):
        """(status, error object) the real service would answer with, or None."""
        key = (h.headers.get("Authorization") or "").removeprefix("Bearer ")
        if self.valid_keys is not None and key not in self.valid_keys:
            return 401, {"message": f"Incorrect API key provided: {key[:3]}***{key[-4:]}. You can find your "
                         "API key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error",
                         "param": None, "code": "invalid_api_key"}
        if self.known_models is not None and body.get("model") not in self.known_models:
            return 404, {"message": f"The model `{body.get('model')}` does not exist or you do not have access "
                         "to it.", "type": "invalid_request_error", "param": None, "code": "model_not_found"}
        if self.forbidden:
            return 403, {"message": f"Project does not have access to model `{body.get('model')}`.",
                         "type": "invalid_request_error", "param": None, "code": "model_not_found"}
        if self.quota_exhausted:
            return 429, {"message": "You exceeded your current quota, please check your plan and billing details.",
                         "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}
        if self.logprobs == "reject" and "logprobs" in body:
            return 400, {"message": "Unsupported parameter: 'logprobs' is not supported with this model.",
                         "type": "invalid_request_error", "param": "logprobs", "code": "unsupported_parameter"}
        if self.bad_request:
            return 400, {"message": self.bad_request, "type": "invalid_request_error", "param": "messages",
                         "code": None}
        if self.reasoning:
            if "max_tokens" in body:
                return 400, {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                             "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                             "param": "max_tokens", "code": "unsupported_parameter"}
            for name in ("temperature", "top_p"):
                if body.get(name, 1) != 1:
                    return 400, {"message": f"Unsupported value: '{name}' does not support {body[name]} with this "
                                 "model. Only the default (1) value is supported.", "type": "invalid_request_error",
                                 "param": name, "code": "unsupported_value"}
        return None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def handle(self, h, method):
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length) or b"{}")
        user = body["messages"][-1]["content"]
        refused = self.refusal(h, body)
        with self.lock:
            self.bodies.append(sorted(k for k in body if k not in ("messages", "model")))
            if refused:
                self.errors[refused[0]] += 1
        if refused:
            return self.send(h, refused[0], {"error": refused[1]})
        with self.lock:
            self.asked[hashlib.sha256(user.encode()).hexdigest()] += 1
            self.auth.add(h.headers.get("Authorization"))
            content = self.answers.pop(0) if self.answers else self.default_answer
            finish = self.finish_reasons.pop(0) if self.finish_reasons else "stop"
        if self.delay_s:
            time.sleep(self.delay_s)
        logprobs = None
        if body.get("logprobs") and self.logprobs == "offer":
            logprobs = {"content": [self.token_logprobs(t, body.get("top_logprobs") or 0)
                                    for t in re.findall(r"\s*\S+|\s+", content)]}
        self.send(h, 200, {
            "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": logprobs,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": (len(user) + len(content)) // 4}})

    def token_logprobs(self, token, k):
        """One logprobs.content entry: the token (p 0.9 unless `top` lists it) and its top k alternatives."""
        top = self.top.get(token, [(token, 0.9)])
        chosen = dict(top).get(token, 0.9)
        return {"token": token, "logprob": math.log(chosen), "bytes": list(token.encode()),
                "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in top[:k]]}
