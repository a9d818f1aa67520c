"""Which settings a checkpoint fixes: for resuming (the same model, data and dequantizer)
and for ``task=eval|sample``, whose config is the one stored in the checkpoint with only
the command-line keys that say how to evaluate or sample on top.

A checkpoint alone is enough: its resolved config rebuilds the model, dequantizer and
data. The command line may point it at other data of the same shape (``data=...``,
``data.root=...``) and choose the device, the evaluation batch size, the seed of the
evaluation noise, ``dequant.eval_samples`` and ``sample.*``; a model or dequantizer key that
contradicts the checkpoint is refused with the key, the saved value and the given one.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flowtrain.command_line import read_command_line
from flowtrain.config import SCHEMAS, Config
from flowtrain.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# --- the rules: which settings a checkpoint fixes, for resuming and for its tasks --------

# Groups whose option a checkpoint records (checkpoint key "choices"), so that
# `task=eval ckpt=PATH data.root=...` composes against the checkpoint's own options.
RECORDED_GROUPS = ("model", "data", "dequant", "optim")
_SET_BY_CHOICES = ("model", "data", "dequant")
# Resuming continues only the run a checkpoint came from: these groups must match exactly,
# except for keys that say where the data lives rather than what it is.
_FIXED_ON_RESUME = ("model", "data", "dequant")
_WHERE_NOT_WHAT = {"data.root", "data.download"}


def _targets_with(group: str, key: str) -> tuple[str, ...]:
    """The _target_s of ``group``'s options whose schema has ``key``: an added key is
    filled in only where it exists."""
    return tuple(schema._target_ for schema in SCHEMAS[group].values()
                 if key in schema.__dataclass_fields__)


# Keys added to a group after checkpoints were written, with the value that means what
# such a checkpoint did, and the _target_s they belong to (None: any): it resumes when
# the key has that value now (data.n_val=0, the training split whole, as before the
# validation split; dequant.range=[0, 1], the only range before TarFlow's [-1, 1];
# model.conditional=false, the only kind of image model before class-conditional ones;
# data.shift=0, no translations before Glow's; model.init and dequant.init=identity, Flow++'s
# only initialization before the released one; model.drop_label=0, TarFlow's labels kept;
# model.weight_y=0, Glow without its class prediction).
_ADDED_SINCE = {"data.n_val": (0, None),
                "dequant.range": ([0.0, 1.0], ("flowtrain.dequant.UniformDequantization",)),
                "model.conditional": (False, _targets_with("model", "conditional")),
                "data.shift": (0.0, _targets_with("data", "shift")),
                "model.init": ("identity", _targets_with("model", "init")),
                "dequant.init": ("identity", _targets_with("dequant", "init")),
                "model.drop_label": (0.0, _targets_with("model", "drop_label")),
                "model.weight_y": (0.0, _targets_with("model", "weight_y"))}

# task=eval|sample: what the saved weights are, which the command line may not change;
# how to evaluate, which it may; and what belongs to this process, never to the checkpoint.
_FIXED = ("model", "dequant")
_HOW_TO_EVALUATE = {"dequant.eval_samples", "train.eval_batch_size", "seed"}
_OF_THIS_PROCESS = ("task", "ckpt", "sample", "eval", "device", "threads")


def with_checkpoint_choices(argv: list[str]) -> list[str]:
    """``argv`` with the checkpoint's model, data and dequant options put first, for
    ``task=eval|sample ckpt=PATH`` runs that do not name them, so that keys of those
    groups (``data.root=...``) compose against the options the checkpoint was trained
    with rather than the defaults. Anything unusual is left alone: the task itself then
    reports a missing or corrupt checkpoint."""
    line = read_command_line(argv)
    if (line is None or str(line.values.get("task")) not in ("eval", "sample")
            or not line.values.get("ckpt") or line.sweep):
        return argv
    choices = _stored_choices(Path(str(line.values["ckpt"])).expanduser())
    added = [f"{group}={choices[group]}" for group in _SET_BY_CHOICES
             if isinstance(choices.get(group), str) and group not in line.named]
    return [argv[0], *added, *argv[1:]]


def _stored_choices(path: Path) -> dict[str, Any]:
    import torch  # only for eval and sample runs

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any failure: compose as usual; the task explains it
        return {}
    choices = saved.get("choices") if isinstance(saved, dict) else None
    return choices if isinstance(choices, dict) else {}


def _get(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _set(tree: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = copy.deepcopy(value)


def config_differences(saved: Any, current: Any, key: str, current_is: str = "given"
                       ) -> list[str]:
    """Every leaf where two config trees differ, as "key: saved X, <current_is> Y"; shared
    with resuming (``flowtrain.build``), which says "now"."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [difference for name in sorted(saved.keys() | current.keys())
                for difference in config_differences(saved.get(name), current.get(name),
                                                     f"{key}.{name}", current_is)]
    return [] if saved == current else [f"{key}: saved {saved!r}, {current_is} {current!r}"]


def with_added_keys(saved: dict) -> dict:
    """``saved`` with each key of ``_ADDED_SINCE`` its group lacks set to what it meant."""
    completed = copy.deepcopy(saved)
    for key, (value, targets) in _ADDED_SINCE.items():
        *parents, last = key.split(".")
        group = _get(completed, ".".join(parents))
        if (isinstance(group, dict) and last not in group
                and (targets is None or group.get("_target_") in targets)):
            group[last] = copy.deepcopy(value)
    return completed


def _override_value(value: Any) -> str:
    """``value`` as a command-line override writes it ([0.0,1.0], not [0.0, 1.0])."""
    if isinstance(value, list):
        return "[" + ",".join(str(item) for item in value) + "]"
    return str(value)


def check_same_setup(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume into a different model, data set or dequantizer; warn when the
    optimizer settings changed, since its saved state (learning rate included) wins. A
    key the run predates is named with the value that resumes it (a preset that sets it
    now, such as experiment=glow_cifar10's data.shift, would otherwise refuse the run's
    own resume command)."""
    completed = with_added_keys(saved)
    differences = [
        difference for group in _FIXED_ON_RESUME
        for difference in config_differences(completed.get(group), current.get(group), group,
                                             current_is="now")
        if difference.split(":")[0] not in _WHERE_NOT_WHAT]
    if differences:
        predated = [f"{key}={_override_value(_get(completed, key))}" for key in _ADDED_SINCE
                    if _get(saved, key) is None and _get(completed, key) is not None
                    and any(difference.startswith(f"{key}:") for difference in differences)]
        hint = (f" This run predates {', '.join(p.split('=')[0] for p in predated)}: add "
                f"{' '.join(predated)} to resume it." if predated else "")
        raise CheckpointError(f"{path} was trained with another setup: "
                              f"{'; '.join(differences[:5])}. Resume with the same "
                              f"model, data and dequant settings, or start a new run.{hint}")
    optim_changes = config_differences(saved.get("optim"), current.get("optim"), "optim",
                                       current_is="now")
    if optim_changes:
        log.warning("optimizer settings differ from the checkpoint (%s); the saved optimizer "
                    "state, learning rate included, is what continues.",
                    "; ".join(optim_changes))


def check_held_out(saved: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """``eval.split=val`` must measure the examples the run held out. On the data set it
    trained on, only its own ``data.n_val`` carves them: another count carves another set,
    which can hold examples the model trained on. (Other data was never trained on.)"""
    if cfg.eval.split != "val":
        return
    stored = with_added_keys(saved.get("config") or {}).get("data") or {}
    given = OmegaConf.to_container(cfg.data, resolve=True)
    if stored.get("_target_") != given.get("_target_") or stored.get("n_val") == given.get(
            "n_val"):
        return
    fix = ("it held out none: use eval.split=test" if stored.get("n_val") == 0
           else f"give data.n_val={stored.get('n_val')}, or leave it out")
    raise CheckpointError(f"eval.split=val: {path} was trained with data.n_val="
                          f"{stored.get('n_val')}, and only that split holds examples it "
                          f"never trained on (given data.n_val={given.get('n_val')}); {fix}.")


def checkpoint_config(saved: dict[str, Any], cfg: DictConfig, typed: list[str],
                      path: Path) -> DictConfig:
    """The checkpoint's stored config, with the overrides in ``typed`` (what the user
    wrote, as Hydra records it) that may change applied from the composed ``cfg``."""
    stored = saved.get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path} holds no config to rebuild its model from.")
    choices = saved.get("choices") or {}
    given = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    # keys added since it was written, with what they meant then (model.init=identity for
    # an older Flow++: today's default would build another network than its weights fit)
    completed = with_added_keys(stored)
    merged = copy.deepcopy(completed)
    contradictions, ignored = [], []
    for override in OverridesParser.create().parse_overrides(typed):
        key = override.key_or_group
        group = key.split(".")[0]
        if group in _OF_THIS_PROCESS:
            continue
        if override.is_delete():
            raise ConfigError(f"~{key}: task={cfg.task.value} cannot delete keys from the "
                              f"checkpoint's config; set them instead ({key}=...)")
        if key in _HOW_TO_EVALUATE:
            _set(merged, key, _get(given, key))
        elif key == "data":
            if override.value() != choices.get("data"):  # another data set: all its keys
                merged["data"] = copy.deepcopy(given["data"])
        elif group == "data":
            _set(merged, key, _get(given, key))
        elif key in _FIXED:
            if choices.get(key) is not None:
                if override.value() != choices[key]:
                    contradictions.append(f"{key}: saved {choices[key]}, "
                                          f"given {override.value()}")
            else:  # an older checkpoint without its options: compare every key
                contradictions += config_differences(completed.get(key), given.get(key), key)
        elif group in _FIXED:
            contradictions += config_differences(_get(completed, key), _get(given, key), key)
        else:
            ignored.append(key)
    if contradictions:
        listed = "; ".join(contradictions[:5])
        raise CheckpointError(
            f"{path} was trained with other settings than the command line gives: {listed}. "
            f"task={cfg.task.value} rebuilds the model and dequantizer exactly as saved; drop "
            f"those overrides (data, dequant.eval_samples, train.eval_batch_size, seed, "
            f"device, threads, eval.split and sample.* may change).")
    if ignored:
        log.warning("ignored by task=%s (the checkpoint's own settings stay): %s",
                    cfg.task.value, ", ".join(ignored))
    for key in _OF_THIS_PROCESS:
        merged[key] = copy.deepcopy(given[key])
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), merged)
    except OmegaConfBaseException as error:
        raise CheckpointError(f"{path} stores a config this flowtrain cannot read: "
                              f"{str(error).splitlines()[0]}") from error
