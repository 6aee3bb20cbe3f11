"""Teachers: who writes the reference answers of a dataset.

A teacher answers a request {id, system, user, record, label, mode} with answer text in the forecaster
format. data_pipeline.py validates every answer, retries bad ones, journals good ones and inserts the
Prediction line for hindsight answers; a teacher only writes text.

`OfflineTeacher` is deterministic and extractive: it writes the exact answer format from the
prompt's own content (news headlines, weekly price moves, the financials block) — no model, no network.
  hindsight: the analysis supports the realised label (the pipeline inserts 'Prediction: <label>').
  blind:     predicts last week's direction and size (momentum), never sees the outcome.
"""
from prompt import label_from_return

_UPBEAT = ("jump", "52-week high", "new product", "expands", "partnership")
_DOWNBEAT = ("slide", "52-week low", "falls")


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


TEACHERS = {"offline": OfflineTeacher}
