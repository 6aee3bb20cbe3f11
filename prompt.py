"""The prompt contract: system prompt, templates, return -> bin -> label text, answer skeleton, prompt
styles per model family, and the answer parser.

Template and parser live together (one object per style) so training, inference and scoring cannot
disagree. Everything here is a pure function over plain records: no model, network or disk
(except PromptStyle.save/load, which write one small JSON file beside an adapter).
"""
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

SYSTEM_PROMPT = (
    "You are a seasoned stock market analyst. Your task is to list the positive developments and "
    "potential concerns for companies based on relevant news and basic financials from the past weeks, "
    "then provide an analysis and prediction for the companies' stock price movement for the upcoming "
    "week. Your answer format should be as follows:\n\n[Positive Developments]:\n1. ...\n\n"
    "[Potential Concerns]:\n1. ...\n\n[Prediction & Analysis]:\n...\n"
)

SECTION_HEADERS = {
    "positive": "[Positive Developments]:",
    "concerns": "[Potential Concerns]:",
    "analysis": "[Prediction & Analysis]:",
}

ANSWER_SKELETON = (
    "[Positive Developments]:\n1. ...\n\n[Potential Concerns]:\n1. ...\n\n"
    "[Prediction & Analysis]:\nPrediction: Up by 1-2%\nAnalysis: ..."
)

NO_NEWS = "No relative news reported."          # upstream wording, kept for compatibility
NO_FINANCIALS = "[Basic Financials]:\n\nNo basic financial reported."
MAX_NEWS_PER_WEEK = 5

# ---------------------------------------------------------------------------------------------
# Return -> bin -> label text
# ---------------------------------------------------------------------------------------------
BIN_CODES = [f"{d}{k}" for d in "UD" for k in ("1", "2", "3", "4", "5", "5+")]


def weekly_return(start_price, end_price):
    """r = P_t / P_{t-1} - 1.

    >>> round(weekly_return(100.0, 101.5), 4)
    0.015
    """
    if not start_price or not math.isfinite(start_price) or not math.isfinite(end_price):
        raise ValueError(f"cannot compute a weekly return from prices {start_price!r} -> {end_price!r}")
    return end_price / start_price - 1.0


def bin_return(r):
    """Bin a weekly return: direction U if r >= 0 else D; magnitude k = ceil(|100 r|), '5+' above 5.

    A return of exactly 0 is 'U1' (up by 0-1%); upstream crashes there.

    >>> [bin_return(x) for x in (0.0, 0.01, 0.0101, -0.05, -0.050001, 0.2)]
    ['U1', 'U1', 'U2', 'D5', 'D5+', 'U5+']
    """
    if r is None or not isinstance(r, (int, float)) or not math.isfinite(r):
        raise ValueError(f"weekly return must be a finite number, got {r!r}")
    direction = "U" if r >= 0 else "D"
    # round away float noise first: 1.01/1 - 1 = 0.010000000000000009 must stay in the 1-2% bin only
    # when it really exceeds 1%, so compare on a 1e-9 grid
    pct = round(abs(100.0 * r), 9)
    k = max(1, math.ceil(pct))
    return f"{direction}{k}" if k <= 5 else f"{direction}5+"


def bin_label(code):
    """Label text of a bin code, as in the public dataset.

    >>> bin_label("U1"), bin_label("D5+")
    ('up by 0-1%', 'down by more than 5%')
    """
    if code not in BIN_CODES:
        raise ValueError(f"unknown bin code {code!r}; expected one of {', '.join(BIN_CODES)}")
    direction = "up by " if code[0] == "U" else "down by "
    if code.endswith("5+"):
        return direction + "more than 5%"
    k = int(code[1])
    return f"{direction}{k - 1}-{k}%"


def label_from_return(r):
    """Label text of a weekly return.

    >>> label_from_return(-0.0123)
    'down by 1-2%'
    """
    return bin_label(bin_return(r))


BIN_LABELS = [bin_label(c) for c in BIN_CODES]


def bin_midpoint(code):
    """Signed magnitude used for MSE: lower bin edge + 0.5 (0-1% -> 0.5 ... more than 5% -> 5.5).

    >>> bin_midpoint("U1"), bin_midpoint("D3"), bin_midpoint("U5+")
    (0.5, -2.5, 5.5)
    """
    if code not in BIN_CODES:
        raise ValueError(f"unknown bin code {code!r}")
    k = 6 if code.endswith("5+") else int(code[1])
    return (1 if code[0] == "U" else -1) * (k - 0.5)


def label_to_code(label):
    """Inverse of bin_label, tolerant of case and of 'Up by 1-2%' / 'up 10%' forms.

    >>> label_to_code("Up by 1-2%"), label_to_code("down by more than 5%")
    ('U2', 'D5+')
    """
    direction = _direction_of(label)
    magnitude = _magnitude_of(label)
    if direction is None or magnitude is None:
        raise ValueError(f"cannot read a bin from label {label!r}")
    return _code_from(direction, magnitude)


def _code_from(direction, midpoint):
    """Bin code of a direction and an unsigned bin midpoint (0.5 ... 5.5, from _magnitude_of)."""
    k = math.ceil(midpoint)
    return ("U" if direction == "up" else "D") + (str(k) if k <= 5 else "5+")


# ---------------------------------------------------------------------------------------------
# Rendering a prompt from structured records
# ---------------------------------------------------------------------------------------------
COMPANY_TEMPLATE = (
    "[Company Introduction]:\n\n{name} is a leading entity in the {industry} sector. Incorporated and "
    "publicly traded since {ipo}, the company has established its reputation as one of the key players "
    "in the market.{market_cap_sentence}\n\n{name} operates primarily in the {country}, trading under the "
    "ticker {ticker} on the {exchange}. As a dominant force in the {industry} space, the company "
    "continues to innovate and drive progress within the industry."
)


def render_company_intro(profile, as_of=None):
    """Company introduction. Market cap and shares are point-in-time values the caller computes
    (price x shares at `as_of`); when absent the sentence is omitted rather than showing today's value
    for every past week (an upstream defect)."""
    sentence = ""
    if profile.get("market_cap") is not None and profile.get("shares_outstanding") is not None:
        when = f"As of {as_of}" if as_of else "As of today"
        sentence = (f" {when}, {profile['name']} has a market capitalization of "
                    f"{profile['market_cap']:.2f} in {profile.get('currency', 'USD')}, with "
                    f"{profile['shares_outstanding']:.2f} shares outstanding.")
    return COMPANY_TEMPLATE.format(
        name=profile["name"], industry=profile["industry"], ipo=profile["ipo"],
        country=profile["country"], ticker=profile["ticker"], exchange=profile["exchange"],
        market_cap_sentence=sentence)


def render_news(item):
    return f"[Headline]: {item['headline']}\n[Summary]: {item['summary']}\n"


def render_week(week, name):
    """One past week: the price sentence, then at most MAX_NEWS_PER_WEEK news items."""
    p0, p1 = week["start_price"], week["end_price"]
    if p1 > p0:
        move = f"increased from {p0:.2f} to {p1:.2f}"
    elif p1 < p0:
        move = f"decreased from {p0:.2f} to {p1:.2f}"
    else:
        move = f"was unchanged at {p1:.2f}"
    head = (f"From {week['start']} to {week['end']}, {name}'s stock price {move}. "
            "Company news during this period are listed below:\n\n")
    news = week.get("news") or []
    if len(news) > MAX_NEWS_PER_WEEK:
        raise ValueError(f"week {week['start']} has {len(news)} news items; sample at most "
                         f"{MAX_NEWS_PER_WEEK} before rendering")
    body = "\n".join(render_news(n) for n in news).rstrip("\n") if news else NO_NEWS
    return head + body


def render_financials(financials, name):
    """Basic financials block. `financials` = {'period': quarter end, 'available': first date it may be
    shown, 'metrics': {attr: value}} or None."""
    if not financials or not financials.get("metrics"):
        return NO_FINANCIALS
    lines = "\n".join(f"{k}: {v}" for k, v in financials["metrics"].items())
    return (f"Some recent basic financials of {name}, for the fiscal quarter ended "
            f"{financials['period']}, are presented below:\n\n[Basic Financials]:\n\n{lines}")


def neutral_instruction(symbol, curday, period):
    """The instruction used for training and inference prompts (no label)."""
    return (f"Based on all the information before {curday}, let's first analyze the positive "
            f"developments and potential concerns for {symbol}. Come up with 2-4 most important factors "
            "respectively and keep them concise. Most factors should be inferred from company related "
            f"news. Then make your prediction of the {symbol} stock price movement for next week "
            f"({period}). Provide a summary analysis to support your prediction.")


TEACHER_MODES = ("hindsight", "blind")


def teacher_instruction(symbol, curday, period, mode, label=None):
    """Instruction for the teacher LLM.

    hindsight (upstream): states the realised label and asks for an analysis supporting it; the answer
    then gets 'Prediction: <label>' inserted and the training prompt uses neutral_instruction.
    blind: the teacher is not told the outcome and must predict (honest for evaluating teachers).
    """
    head = (f"Based on all the information before {curday}, let's first analyze the positive "
            f"developments and potential concerns for {symbol}. Come up with 2-4 most important factors "
            "respectively and keep them concise. Most factors should be inferred from company related "
            "news. ")
    if mode == "hindsight":
        if not label:
            raise ValueError("hindsight teacher mode needs the realised label")
        return head + (f"Then let's assume your prediction for next week ({period}) is {label}. Provide a "
                       "summary analysis to support your prediction. The prediction result need to be "
                       "inferred from your analysis at the end, and thus not appearing as a "
                       "foundational factor of your analysis.")
    if mode == "blind":
        return head + (f"Then make your prediction of the {symbol} stock price movement for next week "
                       f"({period}). Start the [Prediction & Analysis] section with one line of the form "
                       "'Prediction: Up by 1-2%' (bins 0-1%, 1-2%, 2-3%, 3-4%, 4-5%, more than 5%), then "
                       "'Analysis:' and a summary analysis to support your prediction.")
    raise ValueError(f"unknown teacher mode {mode!r}; choose one of {', '.join(TEACHER_MODES)}")


def render_prompt(record, instruction):
    """The user part of a prompt from a structured record:

    record = {symbol, curday, period, profile{...}, weeks[{start,end,start_price,end_price,news[]}],
              financials{period, available, metrics} | None, as_of (for market cap) | None}
    """
    name = record["profile"]["name"]
    if not record["weeks"]:
        raise ValueError(f"{record['symbol']} {record['period']}: a prompt needs at least one past week")
    parts = [render_company_intro(record["profile"], record.get("as_of"))]
    parts += [render_week(w, name) for w in record["weeks"]]
    parts.append(render_financials(record.get("financials"), name))
    return "\n\n".join(parts) + "\n\n" + instruction


def insert_prediction(answer, label):
    """Hindsight post-processing (upstream): put 'Prediction: <Label>' at the top of the analysis
    section so the answer carries the realised label. An answer without the section header is
    off-format (raises ValueError): appending one would file its analysis under the concerns."""
    pred = "Prediction: " + label[0].upper() + label[1:]
    pattern = re.compile(r"^[ \t#*]*\[?Prediction\s*(?:&|and)\s*Analysis\]?[ \t*]*:?[ \t*]*\n?", re.I | re.M)
    match = pattern.search(answer)
    if not match:
        raise ValueError("off-format answer: no [Prediction & Analysis] header")
    rest = re.sub(r"^\s*Prediction\s*:[^\n]*\n?", "", answer[match.end():], flags=re.I)  # a guessed one
    rest = re.sub(r"^\s*Analysis\s*:\s*", "", rest, flags=re.I)
    return answer[:match.start()] + f"[Prediction & Analysis]:\n{pred}\nAnalysis: " + rest.lstrip()


# ---------------------------------------------------------------------------------------------
# Prompt styles: how (system, user, answer) become one training/inference string per model family
# ---------------------------------------------------------------------------------------------
_LLAMA2_RE = re.compile(r"^\s*(?:<s>)?\s*\[INST\]\s*<<SYS>>\s*\n?(.*?)\n?<</SYS>>\s*\n*(.*?)\s*\[/INST\]\s*$",
                        re.S)


def split_public_prompt(prompt):
    """Split a public-dataset prompt ('[INST]<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}[/INST]') back into
    (system, user) for re-templating. A prompt without the markers is taken as the user part with our
    SYSTEM_PROMPT.

    >>> split_public_prompt("[INST]<<SYS>>\\nBe brief.\\n<</SYS>>\\n\\nHello[/INST]")
    ('Be brief.', 'Hello')
    """
    m = _LLAMA2_RE.match(prompt)
    if m:
        return m.group(1).strip("\n"), m.group(2).strip()
    return SYSTEM_PROMPT, prompt.strip()


def chat_parts(row):
    """(system, user) of a dataset row, as training and inference both template it (an empty system part
    becomes SYSTEM_PROMPT).

    >>> chat_parts({"prompt": "[INST]<<SYS>>\\n\\n<</SYS>>\\n\\nHello[/INST]"})[0] == SYSTEM_PROMPT
    True
    """
    system, user = split_public_prompt(row["prompt"])
    return system or SYSTEM_PROMPT, user


def wrap_public_prompt(system, user):
    """The public dataset's storage form (Llama-2 markers, no spaces inside them)."""
    return f"[INST]<<SYS>>\n{system}\n<</SYS>>\n\n{user}[/INST]"


@dataclass(frozen=True)
class PromptStyle:
    """One model family's chat format. `prompt_template` renders everything up to the first answer
    token (including any prefill, such as R1's empty think block); the answer is followed by
    `end_of_answer` ("{eos}" = the tokenizer's EOS token)."""
    name: str
    description: str
    prompt_template: str
    end_of_answer: str = "{eos}"
    stop_strings: tuple = ()

    def format_prompt(self, system, user):
        return self.prompt_template.format(system=system, user=user)

    def format_answer(self, answer, eos_token=""):
        return answer + self.end_of_answer.format(eos=eos_token or "")

    def format(self, system, user, answer=None, eos_token=""):
        text = self.format_prompt(system, user)
        return text if answer is None else text + self.format_answer(answer, eos_token)

    def parse(self, text):
        return parse_answer(text)

    def to_dict(self):
        return asdict(self)

    def save(self, directory):
        path = Path(directory) / "prompt_style.json"
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @staticmethod
    def load(directory):
        data = json.loads((Path(directory) / "prompt_style.json").read_text())
        data["stop_strings"] = tuple(data.get("stop_strings", ()))
        return PromptStyle(**data)


PROMPT_STYLES = {
    "llama2": PromptStyle(
        "llama2", "Llama-2 [INST]<<SYS>> markers as in the public dataset and upstream; plain text to "
        "any tokenizer, so also safe for base models",
        "[INST]<<SYS>>\n{system}\n<</SYS>>\n\n{user}[/INST]", "{eos}"),
    "chatml": PromptStyle(
        "chatml", "ChatML (<|im_start|>/<|im_end|>): Qwen2.5 and SmolLM2 instruct models",
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n", "<|im_end|>", ("<|im_end|>",)),
    "llama3": PromptStyle(
        "llama3", "Llama-3 Instruct header tokens; only for *Instruct* checkpoints, whose header "
        "embeddings are trained",
        "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|><|start_header_id|>user"
        "<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>", ("<|eot_id|>",)),
    "plain": PromptStyle(
        "plain", "plain text sections, no special tokens: for base models",
        "### System:\n{system}\n\n### User:\n{user}\n\n### Answer:\n", "{eos}", ("\n### User:",)),
    "deepseek-r1": PromptStyle(
        "deepseek-r1", "DeepSeek-R1-Distill: the answer is trained after an empty think block, and the "
        "same empty block is prefilled at inference",
        "{system}<｜User｜>{user}<｜Assistant｜><think>\n\n</think>\n\n", "<｜end▁of▁sentence｜>",
        ("<｜end▁of▁sentence｜>",)),
}


def get_style(name):
    if isinstance(name, PromptStyle):
        return name
    if name not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {name!r}; known styles: {', '.join(PROMPT_STYLES)}")
    return PROMPT_STYLES[name]


# ---------------------------------------------------------------------------------------------
# Parsing an answer
# ---------------------------------------------------------------------------------------------
@dataclass
class ParsedAnswer:
    positive: str = ""
    concerns: str = ""
    analysis: str = ""
    prediction: str = ""          # the prediction phrase as written, e.g. "Up by 1-2%"
    direction: str = None         # "up" | "down" | None
    magnitude: float = None       # signed bin midpoint (0.5 ... 5.5) or None
    bin_code: str = None
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        """All three sections present and a direction found."""
        return not self.problems


_THINK_RE = re.compile(r"<think>.*?</think>", re.S | re.I)
_HEADER_PATTERNS = {
    "positive": r"(?:key\s+|main\s+)?positive\s+developments?",
    "concerns": r"(?:potential|key|main)\s+concerns?|concerns",
    "analysis": r"prediction\s*(?:&|and)\s*analysis|analysis\s*(?:&|and)\s*prediction|summary\s+analysis",
}
_BARE_ANALYSIS = r"prediction"      # only as a header alone on its line: 'Prediction: Up...' is content
_COLON = r"[:：]"                     # full-width colon from Chinese-trained models (Qwen)
# a header at the start of a line in [..]:, ### .., 1. .., **..** or bare 'Header:' form
_HEADER_PREFIX = r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\d+[.)][ \t]*)?(?:\*\*|__)?[ \t]*\[?[ \t]*(?:\*\*)?"
_HEADER_ALONE = (r"(?:\*\*)?[ \t]*\]?[ \t]*(?:\*\*|__)?[ \t]*" + _COLON + r"?[ \t]*(?:\*\*|__)?[ \t]*(?=\n|$)")
_HEADER_INLINE = (r"(?:\*\*)?[ \t]*\]?[ \t]*(?:\*\*|__)?[ \t]*" + _COLON + r"[ \t]*(?:\*\*|__)?[ \t]*(?=\S)")
_UP_WORDS = r"up|upward|increase[sd]?|rise|rising|rises|gain|gains|higher|bullish|positive|grow|climb"
_DOWN_WORDS = (r"down|downward|decrease[sd]?|decline[sd]?|declining|fall|falls|falling|drop|drops|lower|"
               r"bearish|negative")
_DIRECTION_RE = re.compile(rf"\b(?:(?P<up>{_UP_WORDS})|(?P<down>{_DOWN_WORDS}))\b", re.I)
_SIGN_RE = re.compile(r"(?<![\w.])(?P<sign>[-−+])\s*\d")
_NUM = r"(\d+(?:\.\d+)?)"
_PCT = r"\s*(?:%|percent\b|pct\b)"
_MORE_THAN_5_RE = re.compile(
    rf"(?:more\s+than|over|above|greater\s+than|exceed\w*|>)\s*5(?:\.0+)?{_PCT}|5\s*\+{_PCT}|5{_PCT}\s*\+", re.I)
_RANGE_RE = re.compile(rf"{_NUM}(?:{_PCT})?\s*(?:-|–|—|to)\s*[-−+]?{_NUM}{_PCT}", re.I)
_SINGLE_RE = re.compile(rf"{_NUM}{_PCT}", re.I)
_PREDICTION_LINE_RE = re.compile(rf"^[ \t*_#>-]*prediction[ \t*_]*{_COLON}[ \t*_]*(?P<rest>.*)$", re.I | re.M)
_MOVE_VERBS = rf"{_UP_WORDS}|{_DOWN_WORDS}"
_UP_DOWN_BY_RE = re.compile(
    rf"\b(?:{_MOVE_VERBS})\w*\s+(?:by\s+)?(?:about\s+|around\s+|roughly\s+|approximately\s+)?"
    rf"(?:more\s+than\s+5{_PCT}|{_NUM}(?:{_PCT})?\s*(?:-|–|to)\s*{_NUM}{_PCT}|{_NUM}{_PCT})", re.I)


def _direction_of(text):
    m = _DIRECTION_RE.search(text or "")
    if m:
        return "up" if m.group("up") else "down"
    m = _SIGN_RE.search(text or "")       # '-2% to -3%' with no direction word
    if m:
        return "up" if m.group("sign") == "+" else "down"
    return None


def _magnitude_of(text):
    """Unsigned percentage bin midpoint from 'more than 5%', '1-2%', '2.5%' or '10%' forms."""
    text = text or ""
    if _MORE_THAN_5_RE.search(text):
        return 5.5
    m = _RANGE_RE.search(text)
    if m:
        size = (float(m.group(1)) + float(m.group(2))) / 2       # '2-3%' -> 2.5 -> the 2-3% bin
    else:
        m = _SINGLE_RE.search(text)
        if not m:
            return None
        size = float(m.group(1))
    k = max(1, math.ceil(round(size, 9)))        # on a 1e-9 grid, as bin_return
    return min(k, 6) - 0.5                       # 6 = the 'more than 5%' bin


def _find_headers(text):
    """(start, content start) of the first header of each section, in document order. Compound
    headers may carry content on their own line after a colon; a bare 'Prediction' header may not."""
    found = {}
    for key, pat in _HEADER_PATTERNS.items():
        forms = [_HEADER_PREFIX + f"(?:{pat})" + _HEADER_ALONE, _HEADER_PREFIX + f"(?:{pat})" + _HEADER_INLINE]
        if key == "analysis":
            forms.append(_HEADER_PREFIX + _BARE_ANALYSIS + _HEADER_ALONE)
        start = found.get("concerns", (0, 0))[1] if key == "analysis" else 0
        matches = [m for m in (re.compile(f, re.I | re.M).search(text, start) for f in forms) if m]
        if matches:
            m = min(matches, key=lambda m: m.start())
            found[key] = (m.start(), m.end())
    return found


def _prediction_phrase(scope):
    m = _PREDICTION_LINE_RE.search(scope)
    phrase = m.group("rest").strip() if m and m.group("rest").strip() else ""
    if phrase:
        return phrase
    m2 = _UP_DOWN_BY_RE.search(scope)
    if m2:
        return m2.group(0)
    if m:  # 'Prediction:' then the verdict on the next line
        following = scope[m.end():].strip().splitlines()
        return following[0] if following else ""
    return ""


def parse_answer(text):
    """Parse a forecaster answer into sections, direction and signed magnitude.

    Tolerates <think> blocks, leading prose and [..]:, ### .., **..** or bare headers. Never raises on
    model output: what is missing is listed in `.problems`.

    >>> p = parse_answer("[Positive Developments]:\\n1. A\\n\\n[Potential Concerns]:\\n1. B\\n\\n"
    ...                  "[Prediction & Analysis]:\\nPrediction: Down by 2-3%\\nAnalysis: C")
    >>> p.direction, p.magnitude, p.bin_code, p.ok
    ('down', -2.5, 'D3', True)
    """
    result = ParsedAnswer()
    text = _THINK_RE.sub("", text or "")
    if "</think>" in text.lower():      # the opening tag was in the prompt prefill
        text = re.sub(r"^.*</think>", "", text, flags=re.S | re.I)
    if "<think>" in text.lower():       # cut off while still thinking: nothing after it is an answer
        text = text[:text.lower().index("<think>")]
    text = text.replace("\r\n", "\n")
    headers = _find_headers(text)
    order = sorted(headers.items(), key=lambda kv: kv[1][0])
    for i, (key, (_, end)) in enumerate(order):
        stop = order[i + 1][1][0] if i + 1 < len(order) else len(text)
        setattr(result, key, text[end:stop].strip())
    # answers missing the analysis header (3 in the public test split): take from the Prediction line
    if not result.analysis:
        after = headers.get("concerns", (0, 0))[1]
        pred_match = _PREDICTION_LINE_RE.search(text, after)
        if pred_match:
            result.analysis = text[pred_match.start():].strip()
            if "concerns" in headers:
                result.concerns = text[headers["concerns"][1]:pred_match.start()].strip()
    for key in ("positive", "concerns", "analysis"):
        if not getattr(result, key):
            result.problems.append(f"missing {key} section")
    # the prediction: a 'Prediction:' line, else an 'up/down by X%' phrase — in the analysis section
    # first, then anywhere (some models state the prediction before the sections)
    for scope in ([result.analysis] if result.analysis else []) + [text]:
        phrase = _prediction_phrase(scope)
        if phrase:
            break
    result.prediction = phrase.strip(" *_")
    result.direction = _direction_of(result.prediction)
    if result.direction is None:
        result.problems.append("no predicted direction")
    else:
        size = _magnitude_of(result.prediction)
        if size is not None:
            result.magnitude = size if result.direction == "up" else -size
            result.bin_code = _code_from(result.direction, size)
    return result
