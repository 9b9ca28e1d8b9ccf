"""A faster sampler for pairs to label on a CPU: the policy converted to CTranslate2, int8.

transformers stays the reference and the fallback: PPO rollouts, evaluation and the arena sample
with it (their log-probs must be the fp32 model's), and so does generation on a GPU, with
`engine: transformers`, or when a model cannot be converted. For pairs to label on a CPU,
CTranslate2 with int8 weights samples about 5x more tokens per second on two threads, 3-4x on one
(bench/generation.py measures both in one run, with each one's mean log-prob under the fp32 model);
on a CPU it runs one worker a thread, each on a share of the batch.
Before the conversion, SmoothQuant (training/smoothquant.py) moves the outlier activations' range
into the weights, so the int8 copy stays closer to the fp32 model.

A policy version is converted once, on its first use (LoRA adapters of its lineage merged, as
`load_policy` does), into `$PREFLOOP_HOME/engines/<key>/`, keyed by its lineage's folders and
their weights' modification times, so a version made current again reuses its conversion and a
changed base model is converted again. The folder is written whole or not at all
(labeling/atomic.py) under a file lock; only the `merged.KEPT` most recently used conversions stay.

Sampling settings are the same as the reference's: temperature and top-p over the whole
vocabulary, no repetition penalty. CTranslate2 sorts the whole vocabulary for top-p at every step,
which halves its speed, so it first keeps the TOP_K most likely tokens: SmolLM2's 95 % nucleus
held at most 1,029 tokens over 1,059 sampled steps at temperature 0.8 (median 9), so the cut
below 2,000 changes almost nothing.

On a CUDA card, `engine: vllm` samples the pairs with vLLM when it is installed (off by default;
refused with one sentence where it is missing or there is no card): the version's merged folder
(training/merged.py), a share of the card's memory (VLLM_MEMORY_SHARE), the same sampling settings.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from labeling import atomic
from labeling.command import run_command
from labeling.workspace import home
from training import merged, smoothquant

ENGINES = ("auto", "ctranslate2", "transformers", "vllm")
TOP_K = 2000
QUANTIZATION = "int8"
VLLM_MEMORY_SHARE = 0.3  # of the card's memory vLLM may take: a round may be training on the same card
VLLM_MAX_LENGTH = 4096  # prompt + answer, in tokens: a 128k context's KV cache would not fit in that share
STOP_FILE = "stop_ids.json"  # the token ids that end a response (sampling.stop_ids of the merged model)
SMOOTH_FILE = "smoothquant.json"  # {"alpha": SmoothQuant's α, or null where the architecture was not smoothed}
log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The fast engine cannot run this model; one sentence for the user."""


def available() -> bool:
    """Whether CTranslate2 is installed (it ships as a wheel in requirements.txt)."""
    return importlib.util.find_spec("ctranslate2") is not None


def auto_picks_it() -> bool:
    """Whether `engine: auto` samples with CTranslate2 here: installed, and the device is a CPU."""
    from training import device

    return available() and device.device().type == "cpu"


def engines_root() -> Path:
    return home() / "engines"


def _folder(version_id: str) -> Path:
    import ctranslate2

    return engines_root() / f"{merged.lineage_key(version_id, ctranslate2.__version__)}-{QUANTIZATION}-sq{smoothquant.ALPHA:g}"


def converted(version_id: str | None) -> Path:
    """The CTranslate2 folder of a policy version (None = the current one), converted on first use."""
    version_id = merged.resolved(version_id)
    return atomic.keep_recent(atomic.build_once(_folder(version_id), lambda folder: (folder / "model.bin").is_file(),
                                                lambda tmp: convert(version_id, tmp)), merged.KEPT)


def convert(version_id: str | None, out: Path, smooth: bool = True) -> None:
    """Merge the version (load_policy, in fp32), smooth it (training/smoothquant.py; `smooth` False:
    not, as bench/generation.py compares), save it beside `out`, convert that to int8."""
    import ctranslate2
    import torch

    from labeling.store import builtin_prompts  # loads SQLAlchemy
    from training import model as models, sampling

    model, tokenizer = models.load_policy(version_id, torch.float32)
    stop = sampling.stop_ids(model, tokenizer)
    smoothed = smooth and smoothquant.smooth(model, smoothquant.calibration_sequences(
        tokenizer, builtin_prompts()[-smoothquant.CALIBRATION_PROMPTS:]))  # the last ones: benches answer the first
    merged_hf = out.with_name(out.name + "-hf")
    try:
        model.save_pretrained(merged_hf, safe_serialization=True)
        tokenizer.save_pretrained(merged_hf)
        del model
        try:
            ctranslate2.converters.TransformersConverter(str(merged_hf)).convert(str(out), quantization=QUANTIZATION)
        except (ValueError, NotImplementedError) as error:  # e.g. an architecture it has no converter for
            raise EngineError(f"CTranslate2 cannot convert this model ({error}); "
                              "set the generator's engine to transformers.") from error
    finally:
        shutil.rmtree(merged_hf, ignore_errors=True)
    tokenizer.save_pretrained(out)  # its files sit beside CTranslate2's model.bin and config.json
    config = json.loads((out / "config.json").read_text())  # CTranslate2 cannot load a null token
    config.update({k: tokenizer.eos_token for k in ("bos_token", "unk_token") if config.get(k) is None})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / STOP_FILE).write_text(json.dumps(stop))
    (out / SMOOTH_FILE).write_text(json.dumps({"alpha": smoothquant.ALPHA if smoothed else None}))


def prepare(version_id: str | None) -> Path | None:
    """Convert a policy version (None = the current one) ahead of its first pairs, so they do not
    wait for the conversion: after a round made it current, or before the server starts. Returns
    the folder, or None where the generator would not use CTranslate2 or the conversion failed
    (logged, never an error for the round that made the version: the generator falls back)."""
    from training.jobs import Cancelled

    if not auto_picks_it():
        return None
    try:
        return converted(version_id)
    except Cancelled:
        raise
    except Exception as error:  # noqa: BLE001 - see above
        log.warning("The model was not converted for CTranslate2: %s", error)
        return None


def sampler_record(model) -> dict:
    """How pairs from `model` (a `Sampler`, a `VllmSampler` or a transformers model) were sampled,
    stored with each response beside the sampling settings."""
    if isinstance(model, Sampler):
        return {"engine": "ctranslate2", "quantization": QUANTIZATION, "top_k": model.top_k,
                "smoothquant": model.smoothquant}
    if isinstance(model, VllmSampler):
        return {"engine": "vllm", "dtype": model.dtype}
    return {"engine": "transformers"}


class Sampler:
    """`sample_rows` of training/generate.py on a CTranslate2 generator: one sampled continuation
    per text, (response, new tokens with the stop token, stopped at a stop token).

    On a CPU it runs one worker a thread, each on a share of the texts: SmolLM2's matrices are too
    small to split well over threads (an ad hoc check on 2 threads: 455-469 tokens/s for two workers
    against 298-308 for one; bench/generation.py measures the result against transformers). The
    workers share the weights. Shares are contiguous and even in size, so the two sides of a prompt
    (rows 2k and 2k+1) are sampled by one worker: CTranslate2 keeps a random generator per thread,
    seeded on its first draw from the seed set then, so two fresh workers draw the same numbers, and
    one prompt's two sides split over them would come out the same. Rows at the same place in two
    shares (other prompts) draw alike until the workers' streams part. Which worker takes which
    share is a race, and a worker's generator is seeded once: the seed stored with these pairs does
    not reproduce them (transformers' does)."""

    def __init__(self, folder: Path, tokenizer, stop: list[int], threads: int):
        import ctranslate2

        from training import device

        where = device.device().type  # the seam's choice; "auto" comes here only on a CPU
        if where not in ("cpu", "cuda"):
            raise EngineError(f"CTranslate2 runs on a CPU or a CUDA GPU, not on {where}; "
                              "set the generator's engine to transformers.")
        self.workers = max(1, threads) if where == "cpu" else 1
        self.generator = ctranslate2.Generator(str(folder), device=where, compute_type=QUANTIZATION,
                                               intra_threads=threads if self.workers == 1 else 1,
                                               inter_threads=self.workers)
        self.tokenizer, self.stop = tokenizer, stop
        self.smoothquant = json.loads((folder / SMOOTH_FILE).read_text())["alpha"]
        # on a GPU CTranslate2's top-p takes at most 1,024 candidates
        self.top_k = min(TOP_K if where == "cpu" else 1024, len(json.loads((folder / "vocabulary.json").read_text())))

    def __call__(self, texts: list[str], *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int) -> list[tuple[str, int, bool]]:
        import ctranslate2

        ctranslate2.set_random_seed(seed)
        tokens = [self.tokenizer.convert_ids_to_tokens(self.tokenizer(t, add_special_tokens=False)["input_ids"])
                  for t in texts]
        share = max(2, 2 * -(-len(tokens) // (2 * self.workers)))  # even: rows 2k and 2k+1 on one worker
        jobs = [self.generator.generate_batch(
            tokens[start:start + share], max_length=max_new_tokens, sampling_topk=self.top_k, sampling_topp=top_p,
            sampling_temperature=temperature, repetition_penalty=1.0, include_prompt_in_result=False,
            end_token=self.stop, return_end_token=True, asynchronous=True) for start in range(0, len(tokens), share)]
        rows = []
        for result in (job.result() for shares in jobs for job in shares):
            ids = result.sequences_ids[0]
            eos = bool(ids) and ids[-1] in self.stop
            text = self.tokenizer.decode(ids[:-1] if eos else ids, skip_special_tokens=True).strip()
            rows.append((text, len(ids), eos))
        return rows


def vllm_problem(remedy: str = "set the generator's engine to auto") -> str | None:
    """Why vLLM cannot sample here, in one sentence ending with `remedy`, or None."""
    from training import device

    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed (pip install vllm); {remedy}."
    where = device.device().type
    if where != "cuda":
        return f"vLLM samples on a CUDA GPU, and the device is the {where}; {remedy}."
    return None


class VllmSampler:
    """`sample_rows` of training/generate.py on vLLM (on request, `engine: vllm`, on a CUDA card):
    the version's merged folder (training/merged.py) loaded in the device's dtype, each text sampled
    with its own seed, prompts passed as token ids so no special token is added twice.

    PPO's rollouts may sample with it too (`rollout_engine: vllm`): `sync` loads the policy's weights
    before each rollout, `sample_ids` returns token ids; the log-probs PPO trains on are transformers'.
    Evaluation and the arena sample with transformers."""

    def __init__(self, folder: Path, tokenizer, stop: list[int]):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # its model in this process: `sync` reaches it
        from vllm import LLM

        from training import device

        self.dtype = device.DTYPE_NAMES[device.dtype()]
        context = json.loads((folder / "config.json").read_text()).get("max_position_embeddings") or VLLM_MAX_LENGTH
        self.llm = LLM(model=str(folder), tokenizer=str(folder), dtype=str(device.dtype()).removeprefix("torch."),
                       gpu_memory_utilization=VLLM_MEMORY_SHARE, max_model_len=min(context, VLLM_MAX_LENGTH), seed=0)
        self.tokenizer, self.stop = tokenizer, stop

    def __call__(self, texts: list[str], *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int) -> list[tuple[str, int, bool]]:
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": self.tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed + i,
                                 stop_token_ids=self.stop, skip_special_tokens=True) for i in range(len(texts))]
        return [self.row(out.outputs[0]) for out in self.llm.generate(prompts, params, use_tqdm=False)]

    def sample_ids(self, query_ids, query_mask, *, max_new_tokens: int, temperature: float, pad: int):
        """`sampling.sample` for PPO's rollouts: top-p 1 and top-k off (the full distribution, as PPO's
        ratio assumes), each row's stop token kept, rows right-padded with `pad`.

        Shape: query_ids, query_mask (B, Q) left-padded -> response_ids (B, R), response_mask (B, R)."""
        import torch
        from vllm import SamplingParams

        from training import device

        prompts = [{"prompt_token_ids": ids[mask.bool()].tolist()} for ids, mask in zip(query_ids, query_mask)]
        params = SamplingParams(n=1, temperature=temperature, top_p=1.0, top_k=-1, max_tokens=max_new_tokens,
                                stop_token_ids=self.stop, skip_special_tokens=True)
        rows = [self.ids(out.outputs[0]) or [self.stop[0]] for out in self.llm.generate(prompts, params, use_tqdm=False)]
        width = max(len(ids) for ids in rows)
        response_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        response_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            response_ids[i, :len(ids)], response_mask[i, :len(ids)] = torch.tensor(ids), 1
        return device.place((response_ids, response_mask))

    def sync(self, peft_model) -> None:
        """Load the policy's current weights (its adapter added, `merged_weights`) into vLLM, as TRL's
        colocated trainers do, and drop vLLM's cached prefixes computed with the old ones."""
        self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(merged_weights(peft_model))
        self.llm.reset_prefix_cache()

    def ids(self, completion) -> list[int]:
        """A completion's new token ids, ending with its stop token when it stopped at one (vLLM
        versions differ on whether `token_ids` keep it)."""
        ids = list(completion.token_ids)
        if completion.finish_reason == "stop" and (not ids or ids[-1] not in self.stop):
            ids.append(self.stop[0])
        return ids

    def row(self, completion) -> tuple[str, int, bool]:
        """(response, new tokens with the stop token, stopped at a stop token) of one completion; a
        stop token as the last allowed token ends it too."""
        ids = self.ids(completion)
        return completion.text.strip(), len(ids), bool(ids) and ids[-1] in self.stop


SAMPLERS = (Sampler, VllmSampler)  # engines generate.py calls with texts, as it calls sample_rows


def merged_weights(peft_model):
    """(name, tensor) of a PeftModel's weights with its LoRA adapter added, under the base model's
    parameter names, one layer's delta at a time, the model untouched: merging in place and back
    (`merge_adapter`) in bf16 would leave the frozen weights a rounding error off after every sync.
    In bf16 the sum is rounded again, so vLLM samples from the policy to bf16's precision."""
    from peft.tuners.lora import LoraLayer

    adapted = {f"{name}.base_layer.weight": module for name, module in peft_model.named_modules()
               if isinstance(module, LoraLayer) and module.active_adapters}
    for name, param in peft_model.named_parameters():
        if ".lora_" in name:
            continue
        value = param.data
        if name in adapted:
            module = adapted[name]
            value = (value.float() + module.get_delta_weight(module.active_adapters[0]).float()).to(value.dtype)
        yield name.removeprefix("base_model.model.").replace(".base_layer", ""), value


def load_generator(version_id: str | None, engine: str, threads: int):
    """(model, tokenizer, engine used) of a policy version for `generate_pairs`: a `Sampler`, or
    the transformers model. `engine` "auto" picks CTranslate2 on a CPU when it is installed and
    converts the model, else transformers; "vllm" (a `VllmSampler`) is only ever taken when asked."""
    from training import model as models
    from training.jobs import Cancelled

    if engine not in ENGINES:
        raise EngineError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}.")
    if engine == "vllm":
        if problem := vllm_problem():
            raise EngineError(problem)
        from training import sampling

        folder = merged.folder(version_id)
        tokenizer = models.load_tokenizer(folder)
        return VllmSampler(folder, tokenizer, sampling.folder_stop_ids(folder, tokenizer)), tokenizer, "vllm"
    wanted = engine == "ctranslate2" or (engine == "auto" and auto_picks_it())
    if engine == "ctranslate2" and not available():
        raise EngineError("CTranslate2 is not installed (pip install ctranslate2); "
                          "set the generator's engine to auto or transformers.")
    if wanted:
        try:
            folder = converted(version_id)
            tokenizer = models.load_tokenizer(folder)
            stop = json.loads((folder / STOP_FILE).read_text())
            return Sampler(folder, tokenizer, stop, threads), tokenizer, "ctranslate2"
        except Cancelled:
            raise
        except Exception as error:  # noqa: BLE001 - "auto" falls back to the reference on any failure
            if engine == "ctranslate2":
                raise error if isinstance(error, EngineError) else EngineError(
                    f"CTranslate2 failed on this model ({type(error).__name__}: {error}); "
                    "set the generator's engine to transformers.") from error
            log.warning("Generating with transformers: %s", error)
    model, tokenizer = models.load_policy(version_id)
    return model, tokenizer, "transformers"


def main(argv: list[str]) -> int:
    """`python -m training prepare`: what `make run` does before the server starts: convert the
    base model (training/model.py) and the current policy for CTranslate2, once, so the first
    pairs do not wait for either. Prints {"model": folder, "engine": folder or null}."""
    from training import model as models
    from training.device import DeviceError

    def work() -> dict:
        if argv:
            raise EngineError(f"`python -m training prepare` takes no options, not {' '.join(argv)!r}.")
        base = models.base_model_path()
        folder = prepare(None)
        return {"model": str(base), "engine": str(folder) if folder else None}

    return run_command(work, {(EngineError, models.ModelPathError, DeviceError): 2})
