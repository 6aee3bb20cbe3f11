"""Direction probabilities at generation time (the hf backend of inference.py).

    probe = DirectionProbe(tokenizer)                      # a LogitsProcessor
    model.generate(**enc, logits_processor=[probe], ...)
    step = direction_step(tokenizer, new_ids, raw_text)    # where the Prediction line says up/down
    p_up = probe.p_up(row, step)

At every decoding step the probe keeps the logits of a few dozen watched tokens (the up/down variants the
tokenizer has, " Up", "Up", " up", " Down", ..., and the first tokens of the 12 label continuations) and
the step's log-normaliser; never the whole vocabulary (output_scores would store ~12 GB at 32 x 768 x 128k).
After generation, the step where the answer's Prediction line emits its direction word gives

    p_up = sum P(up variants) / (sum P(up variants) + sum P(down variants)).

With `bins=True` the 12 label continuations ("Up by 0-1%" ... "Down by more than 5%", spelled with the
emitted word's case and leading space) are scored from the generation's own KV cache cut at that step: one
batched forward of 12 short continuations per answer, not 12 passes over the prompt. p_bins is their
probability renormalised over the 12 labels.

The vllm and openai backends of inference.py get p_up from the same step, located in the generated tokens'
texts (direction_index), with the same formula over the top-k logprobs they return (p_up_from_top_logprobs).

Sampling (temperature > 0) is done here too, by RowSampler: every sequence has its own torch.Generator
seeded from (seed, example id, sample index), so a text does not depend on the batch it was generated in,
nor on whether the run was resumed. generate() then runs greedy over the sampled token (the probe leaves
only that token finite).
"""
import hashlib
import math

from prompt import _DIRECTION_RE, BIN_CODES, bin_label, parse_answer

UP_WORDS = ("up", "Up", "UP")
DOWN_WORDS = ("down", "Down", "DOWN")


def single_token_ids(tokenizer, words):
    """Ids of the words (with and without a leading space) that the tokenizer encodes as one token."""
    ids = set()
    for w in words:
        for form in (w, " " + w):
            enc = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(enc[0])
    return sorted(ids)


def label_texts(leading_space, capitalised):
    """The 12 label continuations in BIN_CODES order, e.g. ' Up by 1-2%'."""
    out = []
    for code in BIN_CODES:
        text = bin_label(code)
        out.append((" " if leading_space else "") + (text[0].upper() + text[1:] if capitalised else text))
    return out


def seed_for(seed, example_id, sample_index=0):
    """A 63-bit generator seed from (seed, example id, sample index): stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}|{example_id}|{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def direction_char(text):
    """Character offset of the direction word on the answer's Prediction line (as parse_answer reads
    it), or None when the answer has no direction or states it without a word (a bare sign).

    >>> t = "[Prediction & Analysis]:\\nPrediction: Down by 2-3%\\nAnalysis: x"
    >>> t[direction_char(t):direction_char(t) + 4]
    'Down'
    """
    parsed = parse_answer(text)
    if parsed.direction is None or not parsed.prediction:
        return None
    start = text.find(parsed.analysis) if parsed.analysis else 0
    pos = text.find(parsed.prediction, max(start, 0))
    if pos < 0:
        pos = text.find(parsed.prediction)
    if pos < 0:
        return None
    m = _DIRECTION_RE.search(parsed.prediction)
    return pos + m.start() if m else None


def _token_at(char, n, prefix_len):
    """The smallest k < n with prefix_len(k + 1) > char (the token holding character `char`), else None."""
    if char is None:
        return None
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if prefix_len(mid + 1) > char:
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < n else None


def direction_step(tokenizer, ids, text):
    """Index into `ids` (the generated tokens) of the token that starts the Prediction line's direction
    word, where `text` = tokenizer.decode(ids) (possibly cut at a stop string); None without one."""
    return _token_at(direction_char(text), len(ids),
                     lambda k: len(tokenizer.decode(ids[:k], skip_special_tokens=True)))


def direction_index(pieces):
    """The same step from the generated tokens' texts (vLLM's decoded_token, an OpenAI server's
    logprobs.content[i].token), located in their concatenation; None without one.

    >>> direction_index(["Prediction", ":", " Down", " by", " 2", "-3%"]), direction_index(["No", " call"])
    (2, None)
    """
    ends, total = [], 0
    for piece in pieces:
        total += len(piece)
        ends.append(total)
    return _token_at(direction_char("".join(pieces)), len(pieces), lambda k: ends[k - 1] if k else 0)


def word_direction(piece):
    """'up' / 'down' when a token's text is one of the up/down variants the hf probe watches (the word, with
    or without one leading space), else None.

    >>> word_direction(" Up"), word_direction("down"), word_direction(" Upward"), word_direction("  up")
    ('up', 'down', None, None)
    """
    word = piece[1:] if piece.startswith(" ") else piece
    return "up" if word in UP_WORDS else "down" if word in DOWN_WORDS else None


def p_up_from_top_logprobs(emitted, candidates):
    """p_up at the direction step from a top-k list: sum P(up variants) / (sum P(up) + sum P(down)) over
    `candidates` [(token text, logprob)] (distinct tokens: vLLM's dict, an OpenAI server's top_logprobs);
    None unless the emitted token's text is itself an up/down variant (as the hf probe requires) and some
    variant is in the list.

    >>> round(p_up_from_top_logprobs(" Up", [(" Up", math.log(.6)), ("Up", math.log(.1)),
    ...                                      (" Down", math.log(.2)), (" Flat", math.log(.1))]), 12)
    0.777777777778
    >>> p_up_from_top_logprobs(" U", [(" U", -0.1), (" Up", -3.0)]) is None
    True
    """
    if emitted is None or word_direction(emitted) is None:
        return None
    mass = {"up": 0.0, "down": 0.0}
    for text, logprob in candidates:
        side = word_direction(text) if text is not None and logprob is not None else None
        if side:
            mass[side] += math.exp(logprob)
    total = mass["up"] + mass["down"]
    return mass["up"] / total if total > 0 else None


def vote(directions):
    """(index of the scored sample, p_up) for self-consistency: the first sample with the majority
    direction (a tie goes to the first sample that has a direction); p_up = up share of the votes
    (None when no sample has a direction, and then the first sample is scored).

    >>> vote(["down", "up", "up"]), vote([None, "down", "up"]), vote([None, None])
    ((1, 0.6666666666666666), (1, 0.5), (0, None))
    """
    votes = [d for d in directions if d in ("up", "down")]
    if not votes:
        return 0, None
    ups = votes.count("up")
    downs = len(votes) - ups
    winner = "up" if ups > downs else "down" if downs > ups else votes[0]
    return directions.index(winner), ups / len(votes)


def _logits_processor_base():
    from transformers import LogitsProcessor
    return LogitsProcessor


class RowSampler:
    """Temperature / top-p sampling with one torch.Generator per sequence (seeded from seed_for)."""

    def __init__(self, seeds, temperature, top_p=1.0):
        self.seeds, self.temperature, self.top_p = list(seeds), temperature, top_p
        self.generators = None

    def __call__(self, scores):
        import torch
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p >= self.top_p      # the smallest set reaching top_p is kept
            sorted_p = sorted_p.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.stack([torch.multinomial(probs[b], 1, generator=g)[0]
                            for b, g in enumerate(self.generators)])


class DirectionProbe(_logits_processor_base()):
    """LogitsProcessor: records the watched tokens' logits and the log-normaliser at every step, and (with a
    RowSampler) replaces sampling by a per-sequence seeded draw."""

    def __init__(self, tokenizer, sampler=None, record=True):
        import torch
        self.tokenizer, self.sampler, self.record = tokenizer, sampler, record
        self.up_ids = single_token_ids(tokenizer, UP_WORDS)
        self.down_ids = single_token_ids(tokenizer, DOWN_WORDS)
        firsts = set()
        for space in (True, False):
            for cap in (True, False):
                for text in label_texts(space, cap):
                    firsts.add(tokenizer(text, add_special_tokens=False)["input_ids"][0])
        self.watched = sorted(set(self.up_ids) | set(self.down_ids) | firsts)
        self.position = {t: k for k, t in enumerate(self.watched)}
        self._watched_tensor = torch.tensor(self.watched)
        self.logits, self.norms = [], []

    def __call__(self, input_ids, scores):
        import torch
        if self.record:
            idx = self._watched_tensor.to(scores.device)
            self.logits.append(scores[:, idx].float())
            self.norms.append(torch.logsumexp(scores.float(), dim=-1))
        if self.sampler is not None:
            chosen = self.sampler(scores)
            forced = torch.full_like(scores, float("-inf"))
            forced.scatter_(1, chosen[:, None], 0.0)
            return forced
        return scores

    def logprob(self, row, step, token_id):
        """log P(token_id) at a step (token_id must be watched)."""
        return float(self.logits[step][row, self.position[token_id]] - self.norms[step][row])

    def p_up(self, row, step):
        """Up share of the up/down variants' probability at a step (None when out of range)."""
        import torch
        if step is None or step >= len(self.logits):
            return None
        lg = self.logits[step][row]
        up = torch.logsumexp(lg[[self.position[t] for t in self.up_ids]], 0)
        down = torch.logsumexp(lg[[self.position[t] for t in self.down_ids]], 0)
        return float(torch.sigmoid(up - down))

    def is_direction_token(self, token_id):
        return token_id in self.up_ids or token_id in self.down_ids


def _cache_keyword(model):
    """`cache` (transformers >= 5.2x) or `past_key_values` (older), whichever the model's forward takes."""
    import inspect
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def generation_cache(output):
    """The KV cache of a generate() output (return_dict_in_generate=True), under either attribute name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def bin_probabilities(model, tokenizer, probe, cache, attention_mask, row, step, prompt_len, direction_token):
    """{bin code: p} over the 12 labels for one generated sequence, scored from the generation's KV cache
    cut after the tokens before `step`. attention_mask: the row's prompt mask (left padding zeros);
    prompt_len: the padded prompt length; direction_token: the id emitted at `step` (its spelling sets the
    labels' case and leading space)."""
    import torch
    from transformers import DynamicCache
    word = tokenizer.decode([direction_token])
    texts = label_texts(word.startswith(" "), word.strip()[:1].isupper())
    conts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    n, width = len(conts), max(len(c) for c in conts)
    keep = prompt_len + step                          # cache positions before the direction token
    sub = DynamicCache()
    for layer_idx, layer in enumerate(cache.layers):
        k = layer.keys[row:row + 1, :, :keep].expand(n, -1, -1, -1)
        v = layer.values[row:row + 1, :, :keep].expand(n, -1, -1, -1)
        sub.update(k, v, layer_idx)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([c + [pad] * (width - len(c)) for c in conts], device=attention_mask.device)
    cont_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in conts], device=attention_mask.device)
    prefix_mask = torch.cat([attention_mask[None, :], attention_mask.new_ones(1, step)], dim=1).expand(n, -1)
    start = int(attention_mask.sum()) + step
    positions = torch.arange(start, start + width, device=attention_mask.device)[None, :].expand(n, -1)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.cat([prefix_mask, cont_mask], dim=1),
                       position_ids=positions, use_cache=True, **{_cache_keyword(model): sub}).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    scores = []
    for j, c in enumerate(conts):
        first = probe.logprob(row, step, c[0]) if c[0] in probe.position else float("-inf")
        rest = sum(float(logp[j, t - 1, c[t]]) for t in range(1, len(c)))
        scores.append(first + rest)
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return {code: w / total for code, w in zip(BIN_CODES, weights)}
