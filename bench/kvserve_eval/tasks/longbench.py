"""LongBench (v1, English datasets) through the serving API.

Each row of a LongBench JSONL file (fields `input`, `context`, `answers`, `dataset`,
`all_classes`, `_id`, ...) is one item: its prompt is the dataset's LongBench template
filled with the row, sent once with greedy decoding under the sweep's compression
setting, and the answer is scored with `metrics.score` (the dataset's metric, maximised
over the reference answers, as LongBench's scorer does).

How the prompt is built, following LongBench's own prediction script:
  * Template: `DATASET_PROMPT[dataset]` (LongBench's per-dataset prompt formats).
  * Truncation: a formatted prompt longer than `max_context_tokens` model tokens loses its
    middle; the first half and the last half of the token budget are kept (so the
    instruction at the start and the question at the end survive). Tokens are counted
    with the GGUF's own tokenizer (bench/haystack.py), as the server counts them. The cut
    falls on pre-tokenizer word boundaries, so the kept parts may be a word short of the
    halves, never over the budget.
  * Chat template: LongBench wraps the prompt in the model's chat template for chat
    models, except for the few-shot and code datasets (trec, triviaqa, samsum, lcc,
    repobench-p), whose prompts are continuations. SmolLM2-Instruct is a chat model, so
    the other datasets go to POST /v1/chat/completions as one user message (the server
    applies the GGUF's chat template), and those five go to POST /v1/completions as raw
    text.
  * Output length: `DATASET_MAXLEN[dataset]` new tokens (LongBench's limits), unless the
    `max_new_tokens` option overrides it.

The default budget of 7500 prompt tokens is LongBench's for 8K-context models: with the
chat template's ~30 tokens and up to 512 new tokens it stays inside SmolLM2's 8192.

lcc and repobench-p have templates and output limits here, but metrics.py has no code
similarity metric, so rows of those datasets are refused up front with a clear error.

Item: one row; item_id is the row's `_id` (or a hash of its input and context);
setting "dataset=<name>"; metric the dataset's metric name from metrics.py ("qa_f1",
"rouge_l", "classification", "retrieval", "count").
"""

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import List, Optional, Sequence

from kvserve_eval import metrics, taskutil
from kvserve_eval.tasks.base import EvalContext, ItemResult, Task
from kvserve_eval.util import csv_list

# LongBench's prompt formats for its English datasets ({context} and {input} are the row's
# fields). Kept exactly as LongBench has them, typos included ("asconcisely"), so the
# prompts are the benchmark's.
DATASET_PROMPT = {
    "narrativeqa": (
        "You are given a story, which can be either a novel or a movie script, and a "
        "question. Answer the question asconcisely as you can, using a single phrase if "
        "possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the "
        "question based on the story asconcisely as you can, using a single phrase if "
        "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"),
    "qasper": (
        "You are given a scientific article and a question. Answer the question as "
        "concisely as you can, using a single phrase or sentence if possible. If the "
        "question cannot be answered based on the information in the article, write "
        "\"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or "
        "\"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer "
        "the question based on the above article as concisely as you can, using a single "
        "phrase or sentence if possible. If the question cannot be answered based on the "
        "information in the article, write \"unanswerable\". If the question is a yes/no "
        "question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any "
        "explanation.\n\nQuestion: {input}\n\nAnswer:"),
    "multifieldqa_en": (
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the "
        "following question based on the above text, only give me the answer and do not "
        "output any other words.\n\nQuestion: {input}\nAnswer:"),
    "hotpotqa": (
        "Answer the question based on the given passages. Only give me the answer and do "
        "not output any other words.\n\nThe following are given passages.\n{context}\n\n"
        "Answer the question based on the given passages. Only give me the answer and do "
        "not output any other words.\n\nQuestion: {input}\nAnswer:"),
    "2wikimqa": (
        "Answer the question based on the given passages. Only give me the answer and do "
        "not output any other words.\n\nThe following are given passages.\n{context}\n\n"
        "Answer the question based on the given passages. Only give me the answer and do "
        "not output any other words.\n\nQuestion: {input}\nAnswer:"),
    "musique": (
        "Answer the question based on the given passages. Only give me the answer and do "
        "not output any other words.\n\nThe following are given passages.\n{context}\n\n"
        "Answer the question based on the given passages. Only give me the answer and do "
        "not output any other words.\n\nQuestion: {input}\nAnswer:"),
    "gov_report": (
        "You are given a report by a government agency. Write a one-page summary of the "
        "report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\n"
        "Summary:"),
    "qmsum": (
        "You are given a meeting transcript and a query containing a question or "
        "instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}"
        "\n\nNow, answer the query based on the above meeting transcript in one or more "
        "sentences.\n\nQuery: {input}\nAnswer:"),
    "multi_news": (
        "You are given several news passages. Write a one-page summary of all news. \n\n"
        "News:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:"),
    "trec": (
        "Please determine the type of the question below. Here are some examples of "
        "questions.\n\n{context}\n{input}"),
    "triviaqa": (
        "Answer the question based on the given passage. Only give me the answer and do "
        "not output any other words. The following are some examples.\n\n{context}\n\n"
        "{input}"),
    "samsum": (
        "Summarize the dialogue into a few short sentences. The following are some "
        "examples.\n\n{context}\n\n{input}"),
    "passage_count": (
        "There are some paragraphs below sourced from Wikipedia. Some of them may be "
        "duplicates. Please carefully read these paragraphs and determine how many unique "
        "paragraphs there are after removing duplicates. In other words, how many "
        "non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the "
        "final count of unique paragraphs after removing duplicates. The output format "
        "should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer "
        "is: "),
    "passage_retrieval_en": (
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine "
        "which paragraph the abstract is from.\n\n{context}\n\nThe following is an "
        "abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract "
        "is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\n"
        "The answer is: "),
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

# LongBench's generation limits (new tokens) per dataset.
DATASET_MAXLEN = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32,
    "2wikimqa": 32, "musique": 32, "gov_report": 512, "qmsum": 512, "multi_news": 512,
    "trec": 64, "triviaqa": 32, "samsum": 128, "passage_count": 32,
    "passage_retrieval_en": 32, "lcc": 64, "repobench-p": 64,
}

# Datasets LongBench sends without the chat template (few-shot continuations and code).
NO_CHAT_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lcc", "repobench-p"})

DEFAULT_FILES = ("longbench/multifieldqa_en.sample12.jsonl",)  # relative to ctx.data_dir
DEFAULT_MAX_CONTEXT_TOKENS = 7500


def base_dataset(name: str) -> str:
    """LongBench-E files name their dataset "<name>_e"; they use <name>'s template."""
    if name not in DATASET_PROMPT and name.endswith("_e") and name[:-2] in DATASET_PROMPT:
        return name[:-2]
    return name


def uses_chat(dataset: str) -> bool:
    """True when LongBench applies the chat template to this dataset's prompts."""
    return base_dataset(dataset) not in NO_CHAT_DATASETS


def format_prompt(row: dict) -> str:
    """The dataset's LongBench prompt filled with the row's context and input."""
    dataset = base_dataset(row["dataset"])
    if dataset not in DATASET_PROMPT:
        raise ValueError(f"no LongBench prompt template for dataset {row['dataset']!r}; "
                         f"known: {sorted(DATASET_PROMPT)}")
    # str.format would trip on braces inside the context (code, LaTeX); substitute the two
    # fields only, input first so a "{context}" inside the question is left alone.
    template = DATASET_PROMPT[dataset]
    head, sep, tail = template.partition("{context}")
    question = row.get("input") or ""
    if not sep:
        return template.replace("{input}", question)
    return (head.replace("{input}", question) + (row.get("context") or "")
            + tail.replace("{input}", question))


def truncate_middle(text: str, budget: int, tokenizer) -> tuple:
    """(text, n_tokens, truncated): `text` cut to at most `budget` model tokens by
    dropping its middle.

    The head keeps the longest run of leading pre-tokenizer words with at most budget // 2
    tokens, the tail the longest run of trailing words that fits the rest of the budget.
    Joining the two may merge the words at the seam into different tokens, so the result
    is re-counted and the tail shortened word by word until it fits.
    """
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    n_tokens = tokenizer.count(text)
    if n_tokens <= budget:
        return text, n_tokens, False
    words = tokenizer.word_token_counts(text)
    bos = n_tokens - sum(n for _, _, n in words)  # 1 when the model adds a BOS, else 0
    room = budget - bos
    half = room // 2
    head_end, head_tokens, i = 0, 0, 0
    while i < len(words) and head_tokens + words[i][2] <= half:
        head_tokens += words[i][2]
        head_end = words[i][1]
        i += 1
    first_head_free = i
    j, tail_tokens = len(words), 0
    while j > first_head_free and tail_tokens + words[j - 1][2] <= room - head_tokens:
        tail_tokens += words[j - 1][2]
        j -= 1
    while True:
        tail_start = words[j][0] if j < len(words) else len(text)
        result = text[:head_end] + text[tail_start:]
        count = tokenizer.count(result)
        if count <= budget or j >= len(words):
            return result, count, True
        j += 1


@dataclasses.dataclass
class PreparedItem:
    row: dict
    dataset: str
    item_id: str
    prompt: str            # after middle truncation, before any chat template
    prompt_tokens: int     # our count of `prompt` (the server adds the chat template's)
    truncated: bool
    chat: bool
    max_new_tokens: int


def item_id_of(row: dict) -> str:
    if row.get("_id"):
        return str(row["_id"])
    digest = hashlib.sha1()
    digest.update((row.get("input") or "").encode("utf-8"))
    digest.update(b"\0")
    digest.update((row.get("context") or "").encode("utf-8"))
    return digest.hexdigest()[:24]


def read_rows(path: str, limit: Optional[int] = None) -> List[dict]:
    """The JSON rows of a LongBench JSONL file (the first `limit` if given)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not JSON: {e}") from None
            for field in ("context", "answers", "dataset"):
                if field not in row:
                    raise ValueError(f"{path}:{line_no}: row has no {field!r} field")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def check_dataset(dataset: str) -> None:
    """Fails early for a dataset this task cannot prompt or score."""
    name = base_dataset(dataset)
    if name not in DATASET_PROMPT:
        raise ValueError(f"LongBench dataset {dataset!r} is not supported; English datasets: "
                         f"{sorted(DATASET_PROMPT)}")
    try:
        metrics.metric_for(name)
    except ValueError:
        raise ValueError(f"LongBench dataset {dataset!r} has no metric in "
                         "kvserve_eval/metrics.py (code similarity is not implemented)"
                         ) from None


def prepare(rows: Sequence[dict], tokenizer, max_context_tokens: int,
            max_new_tokens: Optional[int] = None) -> List[PreparedItem]:
    items = []
    for row in rows:
        dataset = row["dataset"]
        check_dataset(dataset)
        prompt, n_tokens, truncated = truncate_middle(format_prompt(row), max_context_tokens,
                                                      tokenizer)
        items.append(PreparedItem(
            row=row, dataset=dataset, item_id=item_id_of(row), prompt=prompt,
            prompt_tokens=n_tokens, truncated=truncated, chat=uses_chat(dataset),
            max_new_tokens=max_new_tokens or DATASET_MAXLEN[base_dataset(dataset)]))
    return items


# --- Talking to the server --------------------------------------------------------------


def _response_text(response: dict, chat: bool) -> str:
    choice = response["choices"][0]
    if chat:
        return (choice.get("message") or {}).get("content") or ""
    return choice.get("text") or ""


def _error_of(response) -> Optional[str]:
    if isinstance(response, dict) and response.get("error"):
        error = response["error"]
        return error.get("message", json.dumps(error)) if isinstance(error, dict) else str(error)
    if not isinstance(response, dict) or not response.get("choices"):
        return f"unexpected response: {str(response)[:300]}"
    return None


def chat_completion(client, messages, max_tokens, kv_compression=None, temperature=0.0,
                    **extra) -> dict:
    """POST /v1/chat/completions through `client`: its own `chat` method when it has one,
    else a plain JSON POST to client.url. Returns the parsed body; a failure comes back as
    {"error": {...}} (never raises for a failed request)."""
    if hasattr(client, "chat"):
        return client.chat(messages, max_tokens=max_tokens, kv_compression=kv_compression,
                           temperature=temperature, **extra)
    from kvserve_eval.client import http_json
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if getattr(client, "model", None):
        body["model"] = client.model
    if kv_compression is not None:
        body["kv_compression"] = kv_compression
    body.update(extra)
    try:
        status, parsed = http_json(client.url + "/v1/chat/completions", body,
                                   timeout=getattr(client, "timeout", 600.0))
    except OSError as e:
        return {"error": {"message": f"{type(e).__name__}: {e}", "status": None}}
    if not isinstance(parsed, dict):
        return {"error": {"message": f"response is not JSON: {str(parsed)[:300]}",
                          "status": status}}
    if status != 200 and "error" not in parsed:
        return {"error": {"message": json.dumps(parsed)[:300], "status": status}}
    return parsed


def send(client, item: PreparedItem, kv_compression: Optional[dict]) -> dict:
    """One greedy request for `item`; the parsed response (or {"error": ...})."""
    if item.chat:
        return chat_completion(client, [{"role": "user", "content": item.prompt}],
                               max_tokens=item.max_new_tokens, kv_compression=kv_compression)
    return client.complete(item.prompt, max_tokens=item.max_new_tokens,
                           kv_compression=kv_compression, temperature=0.0)


def evaluate(client, item: PreparedItem, kv_compression: Optional[dict],
             task_name: str = "longbench") -> ItemResult:
    """Sends one item and scores it; a failed request scores 0 with extra["error"]."""
    row = item.row
    answers = row.get("answers") or []
    extra = {"dataset": item.dataset, "route": "chat" if item.chat else "completion",
             "answers": answers, "prompt_tokens": item.prompt_tokens,
             "truncated": item.truncated, "max_new_tokens": item.max_new_tokens}
    for field in ("length", "_id"):
        if field in row:
            extra[field] = row[field]
    metric = metrics.metric_for(base_dataset(item.dataset))
    start = time.monotonic()
    try:
        response = send(client, item, kv_compression)
        error = _error_of(response)
    except Exception as e:  # the request failed; the item fails, the sweep goes on
        response, error = None, f"{type(e).__name__}: {e}"
    extra["seconds"] = round(time.monotonic() - start, 3)
    result = ItemResult(task=task_name, setting=f"dataset={item.dataset}",
                        item_id=item.item_id, metric=metric, value=0.0, extra=extra)
    if error is not None:
        extra["error"] = error
        extra["prediction"] = ""
        return result
    prediction = _response_text(response, item.chat)
    extra["prediction"] = prediction
    usage = response.get("usage") or {}
    if "prompt_tokens" in usage:
        extra["server_prompt_tokens"] = usage["prompt_tokens"]
    if "completion_tokens" in usage:
        extra["completion_tokens"] = usage["completion_tokens"]
    if usage.get("kv_compression_ratio") is not None:
        result.kv_ratio = float(usage["kv_compression_ratio"])
    if usage.get("kv_bytes") is not None:
        result.kv_bytes = int(usage["kv_bytes"])
    result.value = metrics.score(base_dataset(item.dataset), prediction, answers,
                                 row.get("all_classes"))
    return result


def _load_tokenizer(model_path: str):
    # haystack.py lives in bench/, beside this package.
    bench_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    import haystack  # noqa: E402
    return haystack.load_tokenizer(model_path)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in value.split(",") if part]
    return list(value)


class LongBenchTask(Task):
    name = "longbench"

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--longbench-files", type=csv_list(str), default=None,
            help="comma-separated LongBench JSONL files (relative paths are taken from the "
                 "data dir first, then the working directory) [default: "
                 + ",".join(DEFAULT_FILES) + "]")
        parser.add_argument(
            "--longbench-max-context-tokens", type=int, default=DEFAULT_MAX_CONTEXT_TOKENS,
            help="prompt budget in model tokens; longer prompts lose their middle "
                 "[default: %(default)s]")
        parser.add_argument(
            "--longbench-max-new-tokens", type=int, default=None,
            help="new tokens per answer [default: LongBench's per-dataset limit]")
        parser.add_argument(
            "--longbench-limit", type=int, default=None,
            help="rows per file [default: all]")

    @staticmethod
    def resolve_files(files, data_dir: str) -> List[str]:
        paths = []
        for name in _as_list(files) or list(DEFAULT_FILES):
            candidates = [name] if os.path.isabs(name) else [os.path.join(data_dir, name), name]
            for candidate in candidates:
                if os.path.isfile(candidate):
                    paths.append(candidate)
                    break
            else:
                raise FileNotFoundError(f"LongBench file {name!r} not found (looked at "
                                        f"{', '.join(candidates)})")
        return paths

    def run(self, ctx: EvalContext, options: dict) -> list:
        max_context = int(options.get("max_context_tokens") or DEFAULT_MAX_CONTEXT_TOKENS)
        max_new = options.get("max_new_tokens")
        limit = options.get("limit")
        rows = []
        for path in self.resolve_files(options.get("files"), ctx.data_dir):
            rows.extend(read_rows(path, int(limit) if limit else None))
        items = prepare(rows, _load_tokenizer(ctx.model_path), max_context,
                        int(max_new) if max_new else None)
        ctx.log(f"longbench: {len(items)} rows ({sum(i.truncated for i in items)} truncated "
                f"to {max_context} tokens) under {ctx.setting.label}")
        kv_compression = ctx.setting.kv_compression()
        results = taskutil.run_items(
            ctx, self.name, items,
            lambda item: [evaluate(ctx.client, item, kv_compression, self.name)])
        failed = sum(1 for r in results if "error" in r.extra)
        if failed:
            ctx.log(f"longbench: {failed} of {len(results)} requests failed")
        return results


TASK = LongBenchTask()
