"""The contract between kvserve-eval and its tasks.

A task is one module in this package that defines a subclass of `Task` named `TASK`
(an instance) - adding a task is adding one file; `registry.load_tasks()` finds it.
The tool owns the server and the compression setting; a task only builds its items,
sends them through `ctx.client` (the real HTTP API, as users get it) and scores them.

Every scored unit is an `ItemResult`. The sweep aggregates results that share
(policy, ratio, task, setting, metric) into one CSV row: the mean of `value` with a
bootstrap 95% confidence interval over items, and pairs items across policies by
`item_id` for the significance tests. So `item_id` must name the same input under every
policy (same prompt, same seed), and `setting` groups items whose mean means something
("length=4096,depth=0.50"); the sweep adds a setting "all" over every item of the task.
"""

import abc
import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Setting:
    """One compression setting of the grid: policy "none" runs at ratio 1.0."""

    policy: str
    ratio: float

    def kv_compression(self, **extra) -> Optional[dict]:
        """The request's "kv_compression" object; None for policy none without extras."""
        if self.policy == "none" and not extra:
            return None
        body = {"policy": self.policy, "ratio": self.ratio}
        body.update(extra)
        return body

    @property
    def label(self) -> str:
        return "none" if self.policy == "none" else f"{self.policy}@{self.ratio:g}"


@dataclasses.dataclass
class ItemResult:
    task: str       # Task.name
    setting: str    # "key=value,..." of the task parameters this item belongs to
    item_id: str    # names the same input under every policy (pairs items across policies)
    metric: str     # "accuracy", "f1", "rouge_l", "nll", ...; higher-is-better unless in
                    # LOWER_IS_BETTER
    value: float    # this item's value of the metric
    kv_ratio: Optional[float] = None  # achieved usage.kv_compression_ratio, if reported
    kv_bytes: Optional[int] = None    # usage.kv_bytes, if reported
    extra: dict = dataclasses.field(default_factory=dict)  # prediction, answer, timings...

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Metrics where smaller is better (the significance test's direction and the plots'
# axes follow this). "nll" items also yield a derived "perplexity" row: exp of the mean
# and of the CI bounds.
LOWER_IS_BETTER = frozenset(
    {"nll", "perplexity", "ttft_s", "ttft_p50_s", "ttft_p95_s", "tpot_s", "step_s"})


@dataclasses.dataclass
class EvalContext:
    """What a task gets for one run under one setting."""

    client: Any            # kvserve_eval.client.Client bound to a ready server
    setting: Setting
    data_dir: str          # ../shared/data (read-only)
    model_path: str        # the GGUF the server runs (for the Python tokenizer)
    seed: int              # base seed of the sweep
    concurrency: int       # requests in flight at a time
    server: Any = None     # kvserve_eval.server.ServerLauncher when the tool started the
                           # server (capacity restarts it with its own pool); else None
    log: Any = print       # progress messages (to stderr)


class Task(abc.ABC):
    name: str = ""
    # True when the task measures time or load (capacity): the sweep runs it alone,
    # after the quality tasks, on a server of its own.
    exclusive: bool = False

    @abc.abstractmethod
    def add_arguments(self, parser) -> None:
        """Adds this task's options, each prefixed with `--<name>-` (e.g. --passkey-lengths)."""

    @abc.abstractmethod
    def run(self, ctx: EvalContext, options: dict) -> list:
        """Runs every item under ctx.setting; returns [ItemResult].

        `options` maps the task's option names without prefix ("lengths") to values, from
        the command line or from the sweep's grid file. Deterministic for ctx.seed.
        A request that fails is a failed item (value 0 for accuracy-like metrics), noted
        in extra["error"], never a crash of the sweep.
        """
