"""Would llama.cpp sample pairs faster than CTranslate2 on this CPU? (issue 19's ≥ 3× target)

The default model ships as a GGUF, so llama.cpp could run it as it is. This measures llama.cpp's
batched decoding (one sequence per row, every row one token per `llama_decode`, as prefloop's
generator batches both sides of each prompt) beside the batched transformers generator and the
CTranslate2 int8 sampler the app uses, in the same run and on the same prompts, at prefloop's
sampling settings (temperature 0.8, top-p 0.95 after a top-k of 2,000, as training/engine.py does).
llama.cpp reads the shipped Q4_1 file and the same weights requantized by llama.cpp itself to each
type in `--types` (written once into --work). Quality is not measured here: speed decides first.

    python bench/llamacpp.py [--prompts 16] [--max-new-tokens 64] [--types q4_1 q4_0 q8_0 f16] [--threads 2]

Needs llama-cpp-python, which prefloop does not install (no wheel on PyPI for this machine; it
builds from source in about 6 minutes on 2 cores): `pip install llama-cpp-python diskcache`.
Last line printed: JSON with tokens/s of each and the best llama.cpp type's rate over CTranslate2's
and over transformers'.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generation import prefloop_run  # noqa: E402
from labeling.store import builtin_prompts  # noqa: E402
from training import engine, jobs, sampling  # noqa: E402
from training import model as models  # noqa: E402
from training.generate import chat_texts  # noqa: E402

TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "f16": "LLAMA_FTYPE_MOSTLY_F16",
         "f32": "LLAMA_FTYPE_ALL_F32"}


def requantized(source: Path, kind: str, work: Path, threads: int) -> Path:
    """The GGUF requantized to `kind` by llama.cpp (written once); the shipped file for q4_1."""
    import llama_cpp as L

    if kind == "q4_1":
        return source
    out = work / f"{source.stem}-{kind}.gguf"
    if not out.is_file():
        params = L.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = getattr(L, TYPES[kind]), True, threads
        if L.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not requantize {source} to {kind}")
    return out


def llamacpp_run(path: Path, tokenizer, texts: list[str], stop: set[int], max_new_tokens: int, threads: int) -> tuple[int, float]:
    """(new tokens, seconds) of one sampled continuation per text, all rows decoded together; the
    seconds count the tokenizing, as the other engines' do, not the loading."""
    import llama_cpp as L

    tokenizing = time.perf_counter()
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    tokenizing = time.perf_counter() - tokenizing
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    params = L.llama_context_default_params()
    params.n_seq_max, params.n_ctx = len(ids), len(ids) * (max(map(len, ids)) + max_new_tokens)
    params.n_batch, params.n_ubatch = sum(map(len, ids)), 512
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = False  # measured faster here for rows that share no prefix
    ctx = L.llama_init_from_model(model, params)
    if not ctx:  # e.g. more rows than llama.cpp's limit of sequences
        raise RuntimeError(f"llama.cpp could not make a context for {len(ids)} rows")
    samplers = []
    for row in range(len(ids)):
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        for part in (L.llama_sampler_init_top_k(engine.TOP_K), L.llama_sampler_init_temp(0.8),
                     L.llama_sampler_init_top_p(0.95, 1), L.llama_sampler_init_dist(row)):
            L.llama_sampler_chain_add(chain, part)
        samplers.append(chain)
    batch = L.llama_batch_init(max(sum(map(len, ids)), len(ids)), 0, 1)
    start = time.perf_counter()
    k, where = 0, {}
    for row, prompt in enumerate(ids):  # every prompt in one batch; logits at each one's last token
        for pos, token in enumerate(prompt):
            batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.seq_id[k][0] = token, pos, 1, row
            batch.logits[k] = pos == len(prompt) - 1
            where[row] = k
            k += 1
    batch.n_tokens = k
    if L.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed on the prompts")
    out, pos, active = [[] for _ in ids], [len(p) for p in ids], list(range(len(ids)))
    while active:
        going = []
        for row in active:
            token = L.llama_sampler_sample(samplers[row], ctx, where[row])
            out[row].append(token)
            if token not in stop and len(out[row]) < max_new_tokens:
                going.append(row)
        for j, row in enumerate(going):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.seq_id[j][0] = out[row][-1], pos[row], 1, row
            batch.logits[j], where[row] = 1, j
            pos[row] += 1
        batch.n_tokens, active = len(going), going
        if going and L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed while sampling")
    seconds = time.perf_counter() - start + tokenizing
    L.llama_batch_free(batch)
    for chain in samplers:
        L.llama_sampler_free(chain)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return sum(map(len, out)), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts; two rows each, all in one batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--types", nargs="+", default=["q4_1", "q4_0", "q8_0", "f16"], choices=["q4_1", *TYPES])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every engine (default: PREFLOOP_THREADS or all cores)")
    parser.add_argument("--work", default="bench-workspace/llamacpp", help="folder for the requantized files")
    args = parser.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        print(json.dumps({"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python diskcache)"}))
        return 0
    import llama_cpp as L

    threads = jobs.set_threads(args.threads)
    L.llama_backend_init()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    files = {kind: requantized(models.default_gguf(), kind, work, threads) for kind in args.types}
    model, tokenizer = models.load_policy("base")
    fast, fast_tokenizer, _ = engine.load_generator("base", "ctranslate2", threads)
    prompts = [[{"role": "user", "content": text}] for text in builtin_prompts()[:args.prompts]]
    texts = [text for text in chat_texts(tokenizer, prompts) for _ in (0, 1)]  # both sides of each prompt, as rows
    stop = set(sampling.stop_ids(model, tokenizer))  # what ends an answer in prefloop's generator
    rates: dict[str, list[float]] = {}
    for rep in range(2):  # each engine twice, in turns, so load from elsewhere falls on all alike
        for name, (m, tok) in (("transformers", (model, tokenizer)), ("ctranslate2", (fast, fast_tokenizer))):
            n, s, _ = prefloop_run(m, tok, prompts, args.max_new_tokens, 2 * len(prompts))
            rates.setdefault(name, []).append(n / s)
        for kind, path in files.items():
            n, s = llamacpp_run(path, tokenizer, texts, stop, args.max_new_tokens, threads)
            rates.setdefault(f"llamacpp_{kind}", []).append(n / s)
        print(f"turn {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " tokens/s", file=sys.stderr)
    best = {k: max(v) for k, v in rates.items()}
    top = max((k for k in best if k.startswith("llamacpp_")), key=best.get)
    print(json.dumps({"tokens_per_s": {k: round(v, 1) for k, v in best.items()}, "best_llamacpp": top,
                      "over_ctranslate2": round(best[top] / best["ctranslate2"], 2),
                      "over_transformers": round(best[top] / best["transformers"], 2),
                      "rows": len(texts), "threads": threads, "llama_cpp": L.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
