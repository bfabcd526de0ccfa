"""Finds the tasks in kvserve_eval/tasks and turns their options into dicts.

A task is one module `kvserve_eval/tasks/<name>.py` defining `TASK`, an instance of a
`base.Task` subclass whose `name` is the module's name; adding a task is adding that
file. `base` and modules starting with "_" are not tasks. Modules are imported only
when asked for, so a broken task file does not stop the others from running.

Options: a task declares its command-line options in `add_arguments` (all prefixed
`--<name>-`). The same parser turns a grid file's {"lengths": [2048, 4096]} into the
values the command line would give (`options_from_grid`), so both paths validate and
convert alike, and defaults come from one place.
"""

import argparse
import importlib
import os
import pkgutil

from .tasks import base

_PACKAGE = "kvserve_eval.tasks"
_TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")


class RegistryError(Exception):
    """A task that does not exist or does not follow the contract."""


def task_names():
    """Names of the task modules present, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules([_TASKS_DIR])
                  if m.name != "base" and not m.name.startswith("_"))


def load_task(name):
    """The TASK of kvserve_eval/tasks/<name>.py; RegistryError if missing or malformed."""
    if name not in task_names():
        raise RegistryError(f"no task {name!r}; known: {', '.join(task_names())}")
    module = importlib.import_module(f"{_PACKAGE}.{name}")
    task = getattr(module, "TASK", None)
    if not isinstance(task, base.Task):
        raise RegistryError(f"{module.__file__} defines no TASK (a base.Task instance)")
    if task.name != name:
        raise RegistryError(f"{module.__file__}: TASK.name is {task.name!r}, "
                            f"expected the module name {name!r}")
    return task


def load_tasks(names=None):
    """{name: TASK} for `names` (default: every task module), in the order given."""
    return {name: load_task(name) for name in (task_names() if names is None else names)}


# --- options ----------------------------------------------------------------------------

def _prefix(task):
    return task.name.replace("-", "_") + "_"


def task_parser(task):
    """A parser holding only the task's options."""
    parser = argparse.ArgumentParser(prog=f"kvserve-eval ({task.name} options)", add_help=False)
    task.add_arguments(parser)
    return parser


def options_from_namespace(task, namespace):
    """{option name without prefix: value} of the task's options in a parsed namespace."""
    prefix = _prefix(task)
    return {k[len(prefix):]: v for k, v in vars(namespace).items() if k.startswith(prefix)}


def default_options(task):
    return options_from_namespace(task, task_parser(task).parse_args([]))


def _option_actions(task, parser):
    prefix = _prefix(task)
    return {a.dest[len(prefix):]: a for a in parser._actions if a.dest.startswith(prefix)}


def options_from_grid(task, grid_options):
    """The task's options with a grid file's values applied over the defaults.

    Each value goes through the task's own parser as the command line would give it:
    a list becomes "a,b,c" (or separate words for nargs="+"/"*"), a bool turns a
    store_true/store_false flag on or off. Unknown names raise RegistryError listing the
    known ones; a value the parser rejects raises RegistryError with its message.
    """
    parser = task_parser(task)
    actions = _option_actions(task, parser)
    argv = []
    for key, value in (grid_options or {}).items():
        action = actions.get(key.replace("-", "_"))
        if action is None:
            raise RegistryError(f"task {task.name}: unknown option {key!r}; known: "
                                f"{', '.join(sorted(actions))}")
        flag = action.option_strings[-1]
        if action.nargs == 0:  # store_true / store_false / store_const
            if bool(value) == bool(action.const):
                argv.append(flag)
            continue
        if isinstance(value, (list, tuple)):
            if action.nargs in ("+", "*"):
                argv += [flag, *map(str, value)]
            else:
                argv.append(f"{flag}={','.join(map(str, value))}")
        else:
            argv.append(f"{flag}={value}")
    try:
        namespace, rest = parser.parse_known_args(argv)
    except SystemExit as e:  # argparse reports and exits on a bad value
        raise RegistryError(f"task {task.name}: bad option value in {argv}") from e
    if rest:
        raise RegistryError(f"task {task.name}: options not understood: {rest}")
    return options_from_namespace(task, namespace)
