"""An AI judge beside the people: a language model compares the two responses of each labeling
pair under the workspace's rubric (labeling/suggestions.py) and its verdict is stored as a
suggestion, never as a judgment.

    python -m training judge [--model FOLDER] [--limit N]           # a local causal LM (default: the base model)
    python -m training judge --url http://host:8000/v1 --endpoint-model NAME   # any OpenAI-compatible server

A local judge reads its verdict from the next-token probabilities of "A" and "B" after the
question, so it never has to be parsed; an endpoint is asked for JSON {"winner", "reason"}. Each
pair is judged twice with the sides swapped, and a verdict that changes with the side is stored as
a tie saying so: small judges prefer a position far more often than a response (Zheng et al. 2023,
"Judging LLM-as-a-judge"). Network errors, server errors and malformed answers are retried, then
stored as an error for that pair, which the next run tries again; the job never stops for one pair.
Each verdict is stored as it comes, so a cancelled run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labeling import suggestions
from training import jobs, preferences, runner
from training.metrics import preferred_probability

URL_ENV, KEY_ENV = "PREFLOOP_JUDGE_URL", "PREFLOOP_JUDGE_KEY"
JSON_ANSWER = ('Which answer is better? Reply with JSON only: {"winner": "A" or "B" or "tie", '
               '"reason": "one sentence"}.')
LETTER_ANSWER = "Which answer is better, A or B? Reply with the letter only."
FLIPPED = "The verdict changed when the two answers swapped places, so it is stored as a tie."


@dataclass
class JudgeConfig:
    """Judge the labeling pairs with a language model and store its verdicts as suggestions."""

    model: str = field(default="", metadata={"basic": True,
        "help": "Local judge: a model folder (empty = the base model)."})
    url: str = field(default="", metadata={"basic": True,
        "help": f"An OpenAI-compatible endpoint (…/v1) instead of a local model (empty = ${URL_ENV}); "
                f"its key is read from ${KEY_ENV} and never stored."})
    endpoint_model: str = field(default="", metadata={"basic": True,
        "help": "The model name the endpoint serves."})
    limit: int = field(default=0, metadata={"min": 0, "basic": True,
        "help": "Pairs to judge (0 = every pair this judge has not judged)."})
    max_chars: int = field(default=2000, metadata={"min": 100, "help": "Longest text of each response shown to the judge."})
    retries: int = field(default=3, metadata={"min": 0, "help": "Retries of an endpoint call that failed or answered nonsense."})
    timeout: float = field(default=60.0, metadata={"above": 0, "help": "Seconds an endpoint call may take."})
    backoff: float = field(default=1.0, metadata={"min": 0, "help": "Seconds before the first retry (doubling after)."})


class JudgeError(RuntimeError):
    """The judge could not give a verdict on one pair; stored with that pair, one sentence."""


@dataclass(frozen=True)
class Verdict:
    winner: str  # "first", "second" or "tie": of the two responses in the order they were shown
    p_first: float | None  # P(the first is better) when the judge gives one
    reason: str


class Judge(Protocol):
    name: str

    def verdict(self, rubric: str, messages: list[dict], first: str, second: str) -> Verdict: ...


def question(rubric: str, messages: list[dict], first: str, second: str, ask: str, max_chars: int) -> str:
    """The text a judge reads: the rubric, the conversation, the two answers as A and B, the question."""
    def cut(text: str) -> str:
        return text if len(text) <= max_chars else text[:max_chars] + " […]"

    conversation = "\n\n".join(f"{m['role'].upper()}: {cut(m['content'])}" for m in messages)
    return (f"{rubric.strip()}\n\n[Conversation]\n{conversation}\n\n[Answer A]\n{cut(first)}\n\n"
            f"[Answer B]\n{cut(second)}\n\n{ask}")


def both_ways(judge: Judge, rubric: str, messages: list[dict], a: str, b: str) -> tuple[str, float | None, str]:
    """(outcome of response a / b, P(a is better) or None, reason): the judge asked with a shown
    first, then b; a verdict that changes with the side is a tie."""
    one, two = judge.verdict(rubric, messages, a, b), judge.verdict(rubric, messages, b, a)
    first = {"first": "a", "second": "b", "tie": "tie"}[one.winner]
    second = {"first": "b", "second": "a", "tie": "tie"}[two.winner]
    p = None if one.p_first is None or two.p_first is None else (one.p_first + 1 - two.p_first) / 2
    if first == second:
        return first, p, one.reason  # the first ask's: its Answer A was response a
    return "tie", p, FLIPPED


# ---------------------------------------------------------------- a local causal LM


class LocalJudge:
    """A causal LM from a folder; its verdict is P("A") against P("B") as the next token."""

    def __init__(self, folder: Path, max_chars: int = 2000):
        from training import model as models

        self.name = f"local:{folder.name}"
        self.model, self.tokenizer = models.load_model(folder).eval(), models.load_tokenizer(folder)
        self.max_chars = max_chars
        self.letters = {letter: self._token_ids(letter) for letter in "AB"}

    def _token_ids(self, letter: str) -> list[int]:
        ids = {seq[0] for text in (letter, " " + letter)
               if len(seq := self.tokenizer.encode(text, add_special_tokens=False)) == 1}
        if not ids:
            raise JudgeError(f"The judge model's tokenizer has no single token for '{letter}'; pick another model.")
        return sorted(ids)

    def verdict(self, rubric: str, messages: list[dict], first: str, second: str) -> Verdict:
        import torch

        text = question(rubric, messages, first, second, LETTER_ANSWER, self.max_chars)
        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                    add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None) or ids.shape[1]
        ids = ids[:, -limit:].to(self.model.device)  # the question is at the end: keep it
        with torch.no_grad():
            logp = self.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
        a, b = (torch.logsumexp(logp[self.letters[k]], 0).item() for k in "AB")
        p_first = preferred_probability(a - b)
        return Verdict("first" if p_first >= 0.5 else "second", p_first,
                       "From the judge's next-token probabilities of 'A' and 'B', both ways round.")


# ---------------------------------------------------------------- an OpenAI-compatible endpoint


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises the 3xx as an HTTPError: recorded, never followed


class EndpointJudge:
    """POST {url}/chat/completions; the answer's JSON {"winner", "reason"} is the verdict."""

    def __init__(self, url: str, model: str, config: JudgeConfig):
        self.url, self.model, self.config = url.rstrip("/"), model, config
        parts = urllib.parse.urlsplit(self.url)
        self.name = f"endpoint:{model or 'default'}@{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        # a redirect would carry the key to wherever it points: none are followed
        self.opener = urllib.request.build_opener(NoRedirects)

    def _call(self, text: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": text}]}).encode()
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(KEY_ENV):
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url + "/chat/completions", body, headers)
        with self.opener.open(request, timeout=self.config.timeout) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    def verdict(self, rubric: str, messages: list[dict], first: str, second: str) -> Verdict:
        text = question(rubric, messages, first, second, JSON_ANSWER, self.config.max_chars)
        problem = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff * 2 ** (attempt - 1))
            try:
                return parse_answer(self._call(text))
            except urllib.error.HTTPError as exc:
                problem = f"the endpoint answered HTTP {exc.code}"
                if exc.code < 500 and exc.code != 429:  # a wrong key or model does not get better by asking again
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                problem = f"the endpoint could not be reached ({getattr(exc, 'reason', exc)})"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                problem = f"the endpoint's answer was not a verdict ({exc})"
        raise JudgeError(f"{self.url}: {problem}, after {attempt + 1} tries.")


def parse_answer(content: str) -> Verdict:
    """A verdict from an answer holding JSON {"winner": "A" | "B" | "tie", "reason": ...} (the first
    object that parses; text around it is ignored); ValueError otherwise."""
    decoder, text, answer = json.JSONDecoder(), content or "", None
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            answer = decoder.raw_decode(text, start)[0]
            break
        except ValueError:
            continue
    if not isinstance(answer, dict):
        raise ValueError("no JSON object in it")
    winner = str(answer.get("winner", "")).strip().lower()
    if winner not in ("a", "b", "tie"):
        raise ValueError(f"winner {answer.get('winner')!r} is none of A, B, tie")
    reason = str(answer.get("reason") or "").strip()[:1000]
    return Verdict({"a": "first", "b": "second", "tie": "tie"}[winner], None, reason)


# ---------------------------------------------------------------- the job


def check_url(url: str) -> str:
    """`url` if prefloop may send a key there: https anywhere, plain http only to this machine; no
    user or password in it (they would be stored with the job's settings)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JudgeError(f"The judge URL {url!r} is not an http(s) address such as http://localhost:8000/v1.")
    if parts.username or parts.password or parts.query:
        raise JudgeError("The judge URL carries a user, password or query; give the key in PREFLOOP_JUDGE_KEY instead.")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise JudgeError(f"The judge URL {url!r} is plain http to another machine; use https, so the key and the "
                         f"pairs do not cross the network in the clear.")
    return url


def make_judge(config: JudgeConfig) -> Judge:
    url = config.url or ("" if config.model else os.environ.get(URL_ENV, ""))  # a model named here wins
    if url:
        return EndpointJudge(check_url(url), config.endpoint_model, config)
    from training import model as models

    folder = models.check_model_folder(Path(config.model).expanduser(), "judge model") if config.model \
        else models.base_model_path()
    judge = LocalJudge(folder, config.max_chars)
    if folder == models.converted_model_dir().resolve():  # the default model's folder is called "base"
        judge.name = f"local:{models.GGUF_FILE.split('.')[0]}"
    else:  # two folders of one name, or a model retrained in place, are different judges
        weights = sorted(folder.glob("*.safetensors"))
        stamp = "|".join(f"{w.resolve()}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
        judge.name = f"local:{folder.name}-{hashlib.sha256(stamp.encode()).hexdigest()[:8]}"
    return judge


def run(config: JudgeConfig, reporter: jobs.Reporter | None = None, judge: Judge | None = None) -> dict[str, Any]:
    """Judge every labeling pair this judge has no verdict on under the current rubric (at most
    `config.limit`), storing each as it comes; then its agreement with people."""
    from labeling import agreement

    reporter = reporter or jobs.Reporter(None)
    judge = judge or make_judge(config)
    version, rubric = suggestions.rubric()
    todo = suggestions.pairs_to_judge(judge.name, version, config.limit or None)
    reporter.start(len(todo))
    counts = {"a": 0, "b": 0, "tie": 0, "error": 0}
    for step, pair in enumerate(todo, 1):
        try:
            outcome, p, reason = both_ways(judge, rubric, pair.messages, pair.a, pair.b)
        except JudgeError as exc:
            outcome, p, reason = "error", None, str(exc)
        try:
            suggestions.store(pair.pair_id, "ai", judge.name, outcome, p, reason, rubric_version=version)
        except suggestions.SuggestionError:  # the pair was deleted while it was judged
            outcome = "error"
        counts[outcome] += 1
        reporter.step(step, {"errors": counts["error"], "ties": counts["tie"]})
    gate = agreement.gate(judge.name, version)
    return {"judge": judge.name, "rubric": version, "judged": len(todo) - counts["error"], **counts,
            "kappa_with_people": gate["kappa"], "pairs_with_people": gate["judge"]["pairs"], "gate_open": gate["open"]}


def main(argv: list[str]) -> int:
    """`python -m training judge [--model FOLDER | --url URL --endpoint-model NAME] [--limit N] [--job-id N]`."""
    def work(config, reporter, **_):
        try:
            judge = make_judge(config)
        except JudgeError as exc:
            raise preferences.NotReady(str(exc)) from None
        return run(config, reporter, judge)

    return runner.run_main(argv, JudgeConfig, work, "python -m training judge")
