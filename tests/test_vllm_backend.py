"""inference.py --backend vllm end to end on CPU, with the `vllm` module replaced by a stub that records the
LLM(...), SamplingParams(...) and LoRARequest(...) arguments (vLLM's wheels are CUDA builds): the engine gets
max_model_len = the longest tokenized prompt + --max_new_tokens, max_lora_rank = the adapter's r rounded up
to a rank vLLM accepts, and --gpu_memory_utilization. The stub's outputs carry vLLM-shaped logprobs (per
generated token {token_id: Logprob(logprob, rank, decoded_token)}, the top k plus the sampled token), from
which p_up is computed at the Prediction line's direction token."""
import json
import math
import sys
import types
from dataclasses import dataclass

import pytest

import dataset_io
import generation
import inference
import models
from prompt import get_style, split_public_prompt


@dataclass
class Logprob:
    """vllm.logprobs.Logprob (vllm/logprobs.py): the shape CompletionOutput.logprobs entries have."""
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


STUB_PIECES = ["[Prediction & Analysis]:", "\n", "Prediction", ":", " Up", " by", " 1", "-", "2", "%", "\n",
               "Analysis: stub"]


def completion(pieces, alternatives=None):
    """A CompletionOutput-like object: token i is `pieces[i]` (id 100 + i, logprob log 0.9, rank 1) unless
    `alternatives` = {i: [(text, p), ...]} gives that step's top-k list (the first entry is the sampled token)."""
    ids, steps = [100 + i for i in range(len(pieces))], []
    for i, piece in enumerate(pieces):
        top = (alternatives or {}).get(i, [(piece, 0.9)])
        step = {ids[i]: Logprob(math.log(top[0][1]), 1, top[0][0])}
        step.update({500 + j: Logprob(math.log(p), j + 1, text) for j, (text, p) in enumerate(top[1:], start=1)})
        steps.append(step)
    return types.SimpleNamespace(text="".join(pieces), token_ids=ids, finish_reason="stop", logprobs=steps)


class Recorder:
    def __init__(self):
        self.llm, self.sampling, self.lora, self.prompts = [], [], [], []
        self.script = []            # completions to return, in order, before the default one


@pytest.fixture
def vllm_stub(monkeypatch):
    calls = Recorder()

    class LLM:
        def __init__(self, **kwargs):
            calls.llm.append(kwargs)

        def generate(self, prompts, params, lora_request=None):
            calls.prompts.extend(prompts)
            return [types.SimpleNamespace(outputs=[calls.script.pop(0) if calls.script else completion(STUB_PIECES)])
                    for _ in prompts]

    def sampling_params(**kwargs):
        calls.sampling.append(kwargs)
        return kwargs

    def lora_request(*args):
        calls.lora.append(args)
        return args

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, sampling_params
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lora_request
    lora.request = request
    vllm.lora = lora
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def make_adapter(folder, r):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "smollm2-135m", "r": r,
                                                            "lora_alpha": 16, "peft_type": "LORA"}))
    return folder


def longest_prompt_tokens(dataset, split="test"):
    rows, _, _, _ = dataset_io.read_split(str(dataset), split)
    tokenizer = models.load_tokenizer("smollm2-135m")
    style = get_style(models.MODELS["smollm2-135m"].prompt_style)
    return max(len(tokenizer(style.format_prompt(*split_public_prompt(r["prompt"])))["input_ids"]) for r in rows)


def test_vllm_backend_sizes_the_engine_to_the_prompts_and_the_adapter(vllm_stub, tmp_path, tiny_forecast_dataset,
                                                                     embedded_model_dir):
    adapter = make_adapter(tmp_path / "adapter", r=12)
    out = tmp_path / "run"
    code = inference.main(["--backend", "vllm", "--adapter", str(adapter), "--dataset", str(tiny_forecast_dataset),
                           "--out", str(out), "--max_new_tokens", "40", "--gpu_memory_utilization", "0.75",
                           "--quiet"])
    assert code == 0
    (engine,) = vllm_stub.llm
    assert engine["model"] == str(embedded_model_dir)
    assert engine["max_model_len"] == longest_prompt_tokens(tiny_forecast_dataset) + 40
    assert engine["enable_lora"] is True and engine["max_lora_rank"] == 16       # r=12 rounded up
    assert engine["gpu_memory_utilization"] == 0.75
    assert vllm_stub.sampling == [{"temperature": 0.0, "top_p": 1.0, "max_tokens": 40,
                                   "stop": list(get_style("chatml").stop_strings) or None,
                                   "repetition_penalty": 1.0, "logprobs": inference.TOP_LOGPROBS}]
    assert vllm_stub.lora == [("adapter", 1, str(adapter))]
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == len(vllm_stub.prompts) == 4
    assert all(row["output_tokens"] == 12 and not row["hit_max_new_tokens"] for row in lines)
    assert json.loads((out / "run.json").read_text())["backend"] == "vllm"


def test_vllm_p_up_is_the_up_share_of_the_top_k_at_the_direction_token(vllm_stub, tmp_path, tiny_forecast_dataset,
                                                                       embedded_model_dir):
    up = completion(STUB_PIECES, {4: [(" Up", 0.5), (" Down", 0.2), ("Up", 0.1), (" up", 0.05), (" Flat", 0.1),
                                      (" DOWN", 0.05)]})
    down = completion(["Prediction", ":", " Down", " by", " 2-3%"], {2: [(" Down", 0.6), (" Up", 0.3)]})
    no_line = completion(["[Analysis]:", " no", " call", " this", " week"])
    split_word = completion(["Prediction", ":", " U", "p", " by", " 1-2%"], {2: [(" U", 0.5), (" D", 0.4)]})
    vllm_stub.script = [up, down, no_line, split_word]
    out = tmp_path / "run"
    assert inference.main(["--backend", "vllm", "--dataset", str(tiny_forecast_dataset), "--out", str(out),
                           "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    p_ups = [row["p_up"] for row in rows]                  # rows follow the prompts' order (one vllm chunk)
    assert p_ups[0] == pytest.approx((0.5 + 0.1 + 0.05) / (0.5 + 0.1 + 0.05 + 0.2 + 0.05), abs=1e-12)
    assert p_ups[1] == pytest.approx(0.3 / 0.9, abs=1e-12)
    assert p_ups[2] is None                                # no Prediction direction word
    assert p_ups[3] is None                                # the word split over tokens: no up/down variant in the top k
    probabilities = json.loads((out / "run.json").read_text())["probabilities"]
    assert probabilities["top_logprobs"] == inference.TOP_LOGPROBS and "top-k logprobs" in probabilities["p_up"]


def test_vllm_p_up_is_null_without_logprobs(vllm_stub, tmp_path, tiny_forecast_dataset, embedded_model_dir):
    plain = completion(STUB_PIECES)
    plain.logprobs = None                                  # an engine that returned none
    vllm_stub.script = [plain]
    out = tmp_path / "run"
    assert inference.main(["--backend", "vllm", "--dataset", str(tiny_forecast_dataset), "--out", str(out),
                           "--limit", "1", "--quiet"]) == 0
    (row,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert row["p_up"] is None and row["output"].endswith("Analysis: stub")


def test_vllm_backend_without_adapter_enables_no_lora(vllm_stub, tmp_path, tiny_forecast_dataset, embedded_model_dir):
    assert inference.main(["--backend", "vllm", "--dataset", str(tiny_forecast_dataset), "--out", str(tmp_path / "r"),
                           "--max_new_tokens", "16", "--quiet"]) == 0
    (engine,) = vllm_stub.llm
    assert "enable_lora" not in engine and "max_lora_rank" not in engine
    assert engine["gpu_memory_utilization"] == inference.GPU_MEMORY_UTILIZATION
    assert engine["max_model_len"] == longest_prompt_tokens(tiny_forecast_dataset) + 16
    assert vllm_stub.lora == []


@pytest.mark.parametrize("r, rank", [(1, 8), (8, 8), (16, 16), (64, 64), (65, 128), (256, 256), (300, 320),
                                     (512, 512)])
def test_lora_rank_is_rounded_up_to_a_rank_vllm_accepts(r, rank):
    assert generation.vllm_lora_rank(r) == rank


def test_lora_rank_above_vllms_largest_is_one_error_line(vllm_stub, tmp_path, tiny_forecast_dataset,
                                                           embedded_model_dir, capsys):
    adapter = make_adapter(tmp_path / "adapter", r=1024)
    code = inference.main(["--backend", "vllm", "--adapter", str(adapter), "--dataset", str(tiny_forecast_dataset),
                           "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("Error: ") and "1024" in err[0]
    assert vllm_stub.llm == []


def test_gpu_memory_utilization_outside_0_1_is_refused(capsys, tiny_forecast_dataset, tmp_path):
    code = inference.main(["--backend", "vllm", "--dataset", str(tiny_forecast_dataset), "--out", str(tmp_path),
                           "--gpu_memory_utilization", "1.5"])
    assert code == 1 and "--gpu_memory_utilization 1.5" in capsys.readouterr().err


def test_prompts_that_cannot_fit_the_models_context_are_one_error_line(vllm_stub, tmp_path, tiny_forecast_dataset,
                                                                        embedded_model_dir, capsys):
    limit = models.MODELS["smollm2-135m"].arch_config["max_position_embeddings"]
    code = inference.main(["--backend", "vllm", "--dataset", str(tiny_forecast_dataset), "--out", str(tmp_path / "r"),
                           "--max_new_tokens", str(limit), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("Error: ") and f"context of {limit}" in err[0]
    assert vllm_stub.llm == []
