"""The one sampler: prefloop's settings alone decide the samples, whatever the model's generation_config says."""
import torch

from tests.tiny_models import make_tiny_policy
from training import sampling
from training.model import load_model, load_tokenizer

PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "user", "content": "Write a short poem about the sea."}]]


def _sample(model, tok, seed=0):
    ids, mask = sampling.encode_chats(tok, PROMPTS)
    return sampling.sample(model, tok, ids, mask, max_new_tokens=12, temperature=1.0, seed=seed)


def test_samples_ignore_the_models_own_generation_config(tmp_path):
    folder = make_tiny_policy(tmp_path / "tiny")
    tok = load_tokenizer(folder)
    plain = load_model(folder).eval()
    penalised = load_model(folder).eval()
    penalised.generation_config.repetition_penalty = 50.0  # as SmolLM2's hub config sets 1.05
    penalised.generation_config.no_repeat_ngram_size = 1
    penalised.generation_config.top_k = 3
    ours, _ = _sample(plain, tok)
    theirs, _ = _sample(penalised, tok)
    assert torch.equal(ours, theirs)
    assert penalised.generation_config.repetition_penalty == 50.0  # restored after the call
    # and the model's own settings would have changed the draws: the test can fail
    enc = sampling.encode_chats(tok, PROMPTS)
    torch.manual_seed(0)
    leaked = penalised.generate(input_ids=enc[0], attention_mask=enc[1], do_sample=True, max_new_tokens=12,
                                temperature=1.0, top_k=0)[:, enc[0].shape[1]:]
    assert not torch.equal(leaked[:, :ours.shape[1]], ours[:, :leaked.shape[1]])


def test_response_mask_keeps_the_first_stop_token_and_decode_drops_it(tmp_path):
    folder = make_tiny_policy(tmp_path / "tiny")
    tok = load_tokenizer(folder)
    eos = tok.eos_token_id
    a, b = tok("Paris", add_special_tokens=False)["input_ids"], tok("sea", add_special_tokens=False)["input_ids"]
    width = max(len(a), len(b)) + 2
    rows = [a + [eos] + [tok.pad_token_id] * (width - len(a) - 1), b + [eos] * (width - len(b))]
    ids = torch.tensor(rows)
    mask = sampling.response_mask(ids, [eos])
    assert mask.sum(-1).tolist() == [len(a) + 1, len(b) + 1]
    assert sampling.decode(tok, ids, mask) == ["Paris", "sea"]


def test_an_answer_ended_when_its_kept_tokens_hold_a_stop_token_even_the_last_one_allowed():
    from training.sampling import ended

    response = torch.tensor([[5, 2, 2, 2],   # ended early; padded with the stop token
                             [5, 6, 7, 8],   # cut at the cap
                             [5, 6, 7, 2],   # its stop token was the last one allowed
                             [5, 6, 0, 0]])  # padding that is no stop token, outside what was kept
    kept = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert ended(response, kept, [2]).tolist() == [True, False, True, False]
    assert ended(response, torch.zeros_like(kept), [2]).tolist() == [False] * 4  # a stop token not kept does not count
