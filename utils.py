"""Scoring forecaster answers: the answer parser and `calc_metrics` (the functions users import).

    from utils import parse_answer, calc_metrics
    m = calc_metrics(outputs, reference_answers, latencies=secs, labels=realised_labels)
    m["binary_accuracy"], m["mse"], m["rouge"]["analysis"]["rougeL"]

Differences from upstream FinGPT-Forecaster's `calc_metrics`, on purpose:
- one parser (prompt.parse_answer, the prompt contract's) that reads <think> blocks, leading prose and
  [..]:, ### .., **..** headers, decimals, two-digit numbers and "more than 5%";
- nothing is dropped silently: `binary_accuracy` is over all n pairs (an answer with no direction counts
  as wrong) and `format_failures` says how many answers broke the format; the upstream-style figure over
  parsed pairs only is kept beside it as `binary_accuracy_parsed`;
- accuracy is against the realised `labels` when given (the week's actual move), not only against the
  reference answer's Prediction line; agreement with the reference is reported as `reference_agreement`.
"""
import statistics

from prompt import ParsedAnswer, bin_midpoint, label_to_code, parse_answer

__all__ = ["parse_answer", "ParsedAnswer", "score_pair", "calc_metrics", "rouge_f1", "SECTIONS",
           "ROUGE_TYPES"]

SECTIONS = ("positive", "concerns", "analysis")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer  # rouge-score directly: evaluate.load("rouge") downloads
        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return _SCORER


def rouge_f1(reference, prediction):
    """ROUGE-1/2/L F1 of one prediction against one reference (rouge-score, stemming on).

    >>> rouge_f1("revenue grew strongly", "revenue grew")["rouge1"]
    0.8
    """
    scores = _scorer().score(reference or "", prediction or "")
    return {k: scores[k].fmeasure for k in ROUGE_TYPES}


def _truth(label, reference):
    """(direction, signed bin midpoint) of the ground truth: the realised label when given, else the
    reference answer's Prediction."""
    if label is not None:
        code = label_to_code(label)
        return ("up" if code[0] == "U" else "down"), bin_midpoint(code)
    return reference.direction, reference.magnitude


def score_pair(answer, gt, label=None, rouge=True):
    """Score one answer against its reference answer `gt` (and the realised `label`, when known).

    Returns a plain dict: direction/bin_code/magnitude of the answer, truth_direction/truth_magnitude,
    correct (bool, None when the truth is unknown), agrees_with_reference (None when the reference has
    no direction), format_ok, problems, and rouge {section: {rouge1, rouge2, rougeL}} for the sections
    the reference has (a section missing from the answer scores 0).
    """
    pa, pg = parse_answer(answer), parse_answer(gt)
    try:
        truth_dir, truth_mag = _truth(label, pg)
    except ValueError as exc:
        raise ValueError(f"label {label!r}: {exc}") from None
    out = {
        "direction": pa.direction, "bin_code": pa.bin_code, "magnitude": pa.magnitude,
        "truth_direction": truth_dir, "truth_magnitude": truth_mag,
        "reference_direction": pg.direction,
        "correct": None if truth_dir is None else pa.direction == truth_dir,
        "agrees_with_reference": None if pg.direction is None else pa.direction == pg.direction,
        "format_ok": pa.ok, "problems": list(pa.problems),
    }
    if rouge:
        out["rouge"] = {s: rouge_f1(getattr(pg, s), getattr(pa, s)) for s in SECTIONS if getattr(pg, s)}
    return out


def _mean(values):
    return statistics.fmean(values) if values else None


def calc_metrics(answers, gts, latencies=None, labels=None, rouge=True):
    """Metrics of model answers against reference answers.

    answers, gts: lists of answer texts (model outputs, reference answers), same length.
    latencies: optional seconds per answer. labels: optional realised labels ("up by 1-2%", ...).
    Returns a dict:
      n                       pairs scored
      parsed                  answers with a predicted direction
      format_failures         answers that break the format (a section missing or no direction)
      binary_accuracy         direction right, over all n (no direction = wrong); truth = labels when
                              given, else the reference's Prediction; pairs whose truth is unknown are
                              left out and counted in `truth_unknown`
      binary_accuracy_parsed  the same over answers with a direction only (upstream-compatible)
      reference_agreement     direction equal to the reference answer's, over pairs where the reference
                              has one (no direction = disagree)
      mse, mse_coverage       mean squared error of signed bin midpoints (percent points) over pairs where
                              both sides have a magnitude, and the share of n that is
      rouge                   {positive|concerns|analysis: {rouge1, rouge2, rougeL}}: mean F1 over pairs
                              whose reference has the section (missing in the answer = 0)
      latency_s               {mean, median} when latencies are given
    Raises ValueError on mismatched lengths or an unknown label (user mistakes, not model output).
    """
    answers, gts = list(answers), list(gts)
    if len(answers) != len(gts):
        raise ValueError(f"calc_metrics: {len(answers)} answers but {len(gts)} references")
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(answers):
            raise ValueError(f"calc_metrics: {len(answers)} answers but {len(labels)} labels")
    if latencies is not None:
        latencies = [float(x) for x in latencies]
        if len(latencies) != len(answers):
            raise ValueError(f"calc_metrics: {len(answers)} answers but {len(latencies)} latencies")
    pairs = [score_pair(a, g, None if labels is None else labels[i], rouge=rouge)
             for i, (a, g) in enumerate(zip(answers, gts))]
    return summarize_pairs(pairs, latencies=latencies)


def summarize_pairs(pairs, latencies=None):
    """calc_metrics' dict from score_pair results (comparison.py reuses the per-pair records)."""
    n = len(pairs)
    known = [p for p in pairs if p["correct"] is not None]
    parsed_known = [p for p in known if p["direction"] is not None]
    with_ref = [p for p in pairs if p["agrees_with_reference"] is not None]
    sq = [(p["magnitude"] - p["truth_magnitude"]) ** 2 for p in pairs
          if p["magnitude"] is not None and p["truth_magnitude"] is not None]
    out = {
        "n": n,
        "parsed": sum(p["direction"] is not None for p in pairs),
        "format_failures": sum(not p["format_ok"] for p in pairs),
        "binary_accuracy": _mean([float(p["correct"]) for p in known]),
        "binary_accuracy_parsed": _mean([float(p["correct"]) for p in parsed_known]),
        "reference_agreement": _mean([float(p["agrees_with_reference"]) for p in with_ref]),
        "mse": _mean(sq),
        "mse_coverage": len(sq) / n if n else None,
    }
    if n - len(known):
        out["truth_unknown"] = n - len(known)
    if pairs and "rouge" in pairs[0]:
        out["rouge"] = {}
        for s in SECTIONS:
            rows = [p["rouge"][s] for p in pairs if s in p["rouge"]]
            out["rouge"][s] = {k: _mean([r[k] for r in rows]) for k in ROUGE_TYPES}
    if latencies is not None:
        out["latency_s"] = {"mean": _mean(latencies),
                            "median": statistics.median(latencies) if latencies else None}
    return out


def fmt(x, spec=".3f"):
    """A number for a table cell; "—" for a missing value.

    >>> fmt(0.51234), fmt(None), fmt(3, "d")
    ('0.512', '—', '3')
    """
    return "—" if x is None else format(x, spec)


def fmt_p(p):
    """A p-value for a table cell.

    >>> fmt_p(0.0004), fmt_p(0.25), fmt_p(None)
    ('<0.001', '0.250', '—')
    """
    return "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def format_metrics(m):
    """A few human-readable lines of a calc_metrics dict (what upstream's notebook printed)."""
    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)
    lines = [f"n={m['n']}  parsed={m['parsed']}  format failures={m['format_failures']}",
             f"Binary accuracy: {f(m['binary_accuracy'])} (parsed only: {f(m['binary_accuracy_parsed'])})  |  "
             f"Mean squared error: {f(m['mse'])} (coverage {f(m['mse_coverage'], '.0%')})  |  "
             f"Agreement with reference: {f(m['reference_agreement'])}"]
    for s, name in zip(SECTIONS, ("Positive Developments", "Potential Concerns", "Prediction & Analysis")):
        if "rouge" in m:
            r = m["rouge"][s]
            lines.append(f"Rouge F1 of {name}: " + ", ".join(f"{k} {f(r[k])}" for k in ROUGE_TYPES))
    if "latency_s" in m:
        lines.append(f"Latency: mean {f(m['latency_s']['mean'], '.2f')} s, median "
                     f"{f(m['latency_s']['median'], '.2f')} s")
    return "\n".join(lines)
