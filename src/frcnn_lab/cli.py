"""What every Hydra entry point shares: ``@hydra_main("<config name>")`` in place of ``@hydra.main(...)``.

A user error ends the command with one ``error: ...`` line on stderr (and at most one ``hint: ...`` line) and exit
code ``USER_ERROR_EXIT_CODE`` (2): a ``UserError`` raised by the task (a missing or unreadable checkpoint, bad data,
an output that exists, an impossible value), a required key left unset, and what Hydra refuses while composing the
config (a value of the wrong type, a key that does not exist, an unknown option, an override it cannot parse).
A start refused that way leaves no run folder behind (``runs.folders.remove_refused_run_dir``). With
``HYDRA_FULL_ERROR=1`` every error raises as it is, with its full traceback (exit code 1).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from frcnn_lab.config import CONFIG_DIR
from frcnn_lab.errors import ConfigError, UserError, exit_for_user_error
from frcnn_lab.runs.folders import remove_refused_run_dir

FULL_ERROR = "HYDRA_FULL_ERROR"
T = TypeVar("T")

_set_here = False
"""Whether this process set HYDRA_FULL_ERROR itself, for composition only (hydra_main)."""


def full_error() -> bool:
    """Whether the user asked for full tracebacks (Hydra's own switch)."""
    return os.environ.get(FULL_ERROR) == "1" and not _set_here


def _unset_full_error() -> None:
    global _set_here
    if _set_here:
        os.environ.pop(FULL_ERROR, None)
        _set_here = False


def hydra_main(config_name: str) -> Callable[[Callable[[DictConfig], T]], Callable[[], None]]:
    """``hydra.main`` for ``conf/<config_name>.yaml``, with user errors as one line and exit code 2 (see above)."""

    def decorate(task: Callable[[DictConfig], T]) -> Callable[[], None]:
        @functools.wraps(task)
        def task_with_user_errors(cfg: DictConfig) -> T:
            _unset_full_error()  # the task's own failures keep Hydra's report (and its child processes the env)
            try:
                if missing := sorted(OmegaConf.missing_keys(cfg)):
                    raise ConfigError(f"required keys without a value: {', '.join(missing)}",
                                      hint="set " + " ".join(f"{key}=..." for key in missing) + " on the command line")
                return task(cfg)
            except UserError as error:
                if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
                    remove_refused_run_dir(HydraConfig.get().runtime.output_dir)
                if full_error():
                    raise
                exit_for_user_error(error)

        hydra_task = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(
            task_with_user_errors)

        @functools.wraps(task)
        def main() -> None:
            global _set_here
            if os.environ.get(FULL_ERROR) == "1":
                return hydra_task()
            # Hydra then raises what it refuses while composing instead of printing it over several lines.
            os.environ[FULL_ERROR], _set_here = "1", True
            try:
                hydra_task()
            except (CompactHydraException, OmegaConfBaseException) as error:
                if not _set_here:  # raised after a task ran (a later job of a sweep): Hydra's to report
                    raise
                _unset_full_error()
                exit_for_user_error(*composition_error(error))
            finally:
                _unset_full_error()

        return main

    return decorate


KINDS = {"Integer": "an integer", "Float": "a number", "bool": "true or false"}


def composition_error(error: BaseException) -> tuple[str, str | None]:
    """What Hydra refused while composing -> (the error line, a hint or None)."""
    cause, text = error.__cause__, str(error)
    if isinstance(error, MissingConfigException) and "Could not find '" in text:
        group = re.search(r"Available options in '([^']+)'", text)
        if group and error.options:
            return (f"could not find the option {error.missing_cfg_file!r}; the options of {group[1]} are "
                    f"{', '.join(error.options)}"), None
        return f"could not find the option {error.missing_cfg_file!r}", "add --help to the command to list the options"
    if isinstance(error, OverrideParseException):
        message, _, rest = error.message.partition("\n")
        return f"cannot parse the override {error.override!r}: {message}", rest.strip() or None
    override = re.match(r"Could not override '([^']+)'", text)
    if override and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return unknown_key(override[1], cause)
    merging = re.match(r"Error merging override (\S+)", text)
    if merging and isinstance(cause, ValidationError):
        return wrong_type(merging[1], cause), None
    if isinstance(cause, OmegaConfBaseException):
        text = f"{first_line(text)}\n{cause.msg}"
    return gist(text), None


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def gist(text: str) -> str:
    """Hydra's and OmegaConf's message over several lines -> one: the first (with the next when it ends in ':'),
    the exception's name dropped, and the full key."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    head = lines[0] if lines else text
    if head.endswith(":") and len(lines) > 1:
        head = f"{head} {lines[1]}"
    head = re.sub(r"\b\w+ raised while composing config: ", "", head)
    key = next((line.removeprefix("full_key: ") for line in lines if line.startswith("full_key: ")), None)
    return f"{head} (key {key})" if key and key not in head else head


def unknown_key(key: str, cause: OmegaConfBaseException) -> tuple[str, str | None]:
    """``rpn.num_roi=50`` -> 'rpn.num_roi is not a config key; did you mean rpn.num_rois?' (difflib's closest key)."""
    keys = config_keys(cause.parent_node._get_root()) if cause.parent_node is not None else []
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return f"{key} is not a config key; did you mean {close[0]}?", None
    return f"{key} is not a config key", "add --cfg job to the command to print every key with its value"


def config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config (mappings only: list items are no keys)."""
    if not isinstance(node, DictConfig):
        return []
    keys = []
    for name in node:
        key = f"{prefix}{name}"
        keys.append(key)
        keys += config_keys(node._get_node(name), f"{key}.")
    return keys


def wrong_type(override: str, cause: ValidationError) -> str:
    """``trainer.max_epochs=1.5`` -> 'trainer.max_epochs=1.5: trainer.max_epochs takes an integer, e.g. ...=3'."""
    key = str(cause.full_key) or override.split("=", 1)[0]
    wanted = next((kind for word, kind in KINDS.items() if re.search(rf"\b{word}\b", first_line(cause.msg))), None)
    if wanted is None:
        return f"{override}: {first_line(cause.msg)}"
    current = cause.child_node._value() if cause.child_node is not None else None
    shown = str(current).lower() if isinstance(current, bool) else current  # as written on the command line
    example = "" if current is None else f", e.g. {key}={shown}"
    return f"{override}: {key} takes {wanted}{example}"
