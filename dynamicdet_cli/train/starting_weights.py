"""Starting weights: what a model is initialised from before training (not its architecture).

A starting point is named by a *spec*, one of:
- a local file: a dynamicdet checkpoint, a torchvision Faster R-CNN, Mask R-CNN, FCOS or RetinaNet state
  dict, or a torchvision ResNet state dict (what `torch.save(model.state_dict(), ...)` writes);
- `torchvision:NAME`, resolved through torchvision's own weights API: NAME is a weights enum
  entry (`ResNet50_Weights.IMAGENET1K_V2`, `FasterRCNN_ResNet50_FPN_Weights.COCO_V1`, `.DEFAULT`
  allowed) or a model name (`resnet50`, `fasterrcnn_resnet50_fpn`: its DEFAULT weights).

Named weights are fetched by torch.hub, as torchvision's model builders fetch them
(`Weights.get_state_dict(check_hash=True)`): the file lands in TORCH_HOME/hub/checkpoints
under the name of its URL, a download is checked against the hash prefix in that name, and a
file already there is used as it is, with no network call. Offline, the one-line error names
the file torchvision expected and the folder to put it in.

Two ways in:
- `load_backbone_weights(model, spec, backbone_cfg)`: ResNet weights into both backbones
  (the recipe's model.backbone.weights, `build --backbone-weights`);
- `load_init_weights(model, spec)`: `train-detectors --init`; a torchvision detector goes into
  BOTH detectors (backbone, FPN, and RPN and RoI heads or the one-stage head), a dynamicdet checkpoint tensor by tensor where
  shapes match (so a model trained on other classes gives everything but the class layers).
`initialise(model, init, backbone_cfg)` is what training calls: --init, else the recipe's.
"""

from __future__ import annotations

import difflib
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision

from dynamicdet_cli.checkpoint.store import load_checkpoint
from dynamicdet_cli.core.errors import DynamicDetError, missing_file
from dynamicdet_cli.model.backbone import load_resnet_state

PREFIX = "torchvision:"
_RESNET = re.compile(r"ResNet(\d+)_Weights")  # torchvision's ImageNet ResNets (not Wide_ResNet)
_FASTER_RCNN = ("FasterRCNN_ResNet50_FPN_Weights", "FasterRCNN_ResNet50_FPN_V2_Weights")
_NOT_WEIGHTS = "not a weights file (torch.save writes a zip archive, and this is none), or a damaged one"
_LOAD_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError)


# -- naming ---------------------------------------------------------------------------------

def torchvision_weights(spec: str):
    """The torchvision WeightsEnum entry `spec` (torchvision:NAME) names; one-line error if none."""
    name = spec[len(PREFIX):].strip()
    try:
        if "." in name:
            return torchvision.models.get_weight(name)
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        pass
    hint = ""
    if "." not in name:
        close = difflib.get_close_matches(name, torchvision.models.list_models(), n=1)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
    raise DynamicDetError(f"{spec}: not a torchvision weights name{hint} (write e.g. "
                          f"{PREFIX}ResNet50_Weights.IMAGENET1K_V2 or {PREFIX}fasterrcnn_resnet50_fpn)")


def cached_file(weights) -> Path:
    """Where torch.hub keeps (or would keep) the file of `weights`: TORCH_HOME/hub/checkpoints/NAME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def fetch(spec: str, weights) -> dict:
    """The state dict of torchvision `weights`, from the hub cache or downloaded into it."""
    path = cached_file(weights)
    was_there = path.is_file()
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except _LOAD_ERRORS as err:
        if was_there or path.is_file():
            raise DynamicDetError(f"{spec}: the cached file {path} is damaged ({type(err).__name__}); "
                                  "delete it and run again") from None
        reason = str(getattr(err, "reason", "") or err).splitlines()[0][:120] or type(err).__name__
        raise DynamicDetError(f"{spec}: cannot download {weights.url} ({reason}); offline or behind a "
                              f"firewall, put that file as {path.name} in {path.parent} and run again") from None


# -- reading --------------------------------------------------------------------------------

def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise missing_file(path, f"{path}: weights file not found")
    try:
        with warnings.catch_warnings():  # torch warns of a foreign pickle's protocol, then fails: the error says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # legacy (pre-zip) torch files are read above; this is neither
            raise DynamicDetError(f"{path}: {_NOT_WEIGHTS}") from None
        raise DynamicDetError(f"{path}: refused: it carries pickled Python objects, not plain weights") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError):
        # the weights-only unpickler fails on text or random bytes with whatever it tripped on
        what = "truncated or corrupt weights file" if zipfile.is_zipfile(path) else _NOT_WEIGHTS
        raise DynamicDetError(f"{path}: {what}") from None
    if not isinstance(state, dict):
        raise DynamicDetError(f"{path}: not a state dict or dynamicdet checkpoint")
    if isinstance(state.get("state_dict"), dict) and state.get("format") != "dynamicdet":
        state = state["state_dict"]  # training scripts often wrap the weights
    return state


def _check_name(spec: str, weights, backbone_cfg, allow_detector: bool) -> None:
    """Refuse before downloading weights that cannot fit the recipe's backbones."""
    family = type(weights).__name__
    resnet = _RESNET.fullmatch(family)
    wanted = "ResNet or Faster R-CNN ResNet-50 FPN" if allow_detector else "ResNet"
    if not (resnet or (allow_detector and family in _FASTER_RCNN)):
        raise DynamicDetError(f"{spec}: {family} do not fit this model; give {wanted} weights "
                              f"(e.g. {PREFIX}ResNet50_Weights.IMAGENET1K_V2)")
    depth = int(resnet.group(1)) if resnet else 50
    if backbone_cfg is not None and (backbone_cfg.kind != "resnet" or backbone_cfg.depth != depth):
        have = f"ResNet-{backbone_cfg.depth}" if backbone_cfg.kind == "resnet" else backbone_cfg.kind
        raise DynamicDetError(f"{spec}: weights for a ResNet-{depth}, the recipe's backbone is {have} "
                              "(model.backbone.kind / depth)")


def read_spec(spec: str, backbone_cfg=None, allow_detector: bool = True) -> dict:
    """The state dict a spec names (a file, or torchvision:NAME checked against `backbone_cfg`)."""
    if spec.startswith(PREFIX):
        weights = torchvision_weights(spec)
        _check_name(spec, weights, backbone_cfg, allow_detector)
        return fetch(spec, weights)
    return _read_file(Path(spec).expanduser())


# -- loading --------------------------------------------------------------------------------

def load_backbone_weights(model, spec: str, backbone_cfg=None) -> str:
    """Load ResNet weights named by `spec` into both backbones of `model`; a one-line report."""
    if backbone_cfg is not None and backbone_cfg.kind != "resnet":
        # say first what is wrong with the spec itself (a missing file, an unknown name), then the kind
        torchvision_weights(spec) if spec.startswith(PREFIX) else _read_file(Path(spec).expanduser())
        raise DynamicDetError(f"{spec}: backbone weights load into ResNet backbones only, and the recipe's "
                              f"backbone is {backbone_cfg.kind} (model.backbone.kind); build it with "
                              "--backbone-weights '' (fresh)")
    state = read_spec(spec, backbone_cfg, allow_detector=False)
    loaded = sum(load_resnet_state(b, state, spec) for b in (model.backbone1, model.backbone2))
    return f"backbones initialised from {spec}: {loaded} tensors"


def _torchvision_detector_to_ours(state: dict, head: str, backbone: str, backbone_has_stem: bool) -> dict:
    """Rename one torchvision FasterRCNN / FCOS / RetinaNet state dict into one of our detectors' names."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone.body."):
            rest = key[len("backbone.body."):]
            if rest.startswith(("conv1.", "bn1.")):
                if backbone_has_stem:
                    out[f"{backbone}.stem.{0 if rest.startswith('conv1.') else 1}.{rest.split('.', 1)[1]}"] = value
            elif rest.startswith("layer"):
                stage, tail = rest[len("layer"):].split(".", 1)
                out[f"{backbone}.stages.{stage}.{tail}"] = value
        elif key.startswith("backbone.fpn."):
            out[f"{head}.neck.{key[len('backbone.fpn.'):]}"] = value
        elif key.startswith(("rpn.", "roi_heads.", "head.")):
            out[f"{head}.{key}"] = value
    return out


def _load_matching(model: torch.nn.Module, state: dict) -> tuple[int, list[str]]:
    """Load the tensors whose name and shape match; return (loaded, skipped names). BatchNorm
    counters a frozen-BN model has no place for are not counted as skipped."""
    own = model.state_dict()
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in state if k not in take and not (k.endswith("num_batches_tracked") and k not in own)]
    model.load_state_dict(take, strict=False)
    return len(take), skipped


def load_init_weights(model, spec: str, backbone_cfg=None) -> str:
    """Initialise `model` (a DynamicDetector) from `spec` (see the module docstring); one-line report."""
    state = read_spec(spec, backbone_cfg, allow_detector=True)
    if state.get("format") == "dynamicdet":
        ckpt = load_checkpoint(Path(spec).expanduser())
        loaded, skipped = _load_matching(model, dict(ckpt.detector))
        kind = "dynamicdet checkpoint"
    elif any(k.startswith("backbone.body.") for k in state):
        renamed = {}
        for head, backbone in (("head1", "backbone1"), ("head2", "backbone2")):
            has_stem = getattr(model, backbone).stem is not None
            renamed.update(_torchvision_detector_to_ours(state, head, backbone, has_stem))
        loaded, skipped = _load_matching(model, renamed)
        kind = "torchvision detector state dict (into both detectors)"
    elif any(k.startswith("layer1.") for k in state):
        loaded = sum(load_resnet_state(b, state, spec) for b in (model.backbone1, model.backbone2))
        skipped = []
        kind = "torchvision ResNet state dict (into both backbones)"
    else:
        raise DynamicDetError(f"{spec}: not a dynamicdet checkpoint, torchvision detector or ResNet state dict")
    if loaded == 0:
        raise DynamicDetError(f"{spec}: no tensor matches this model's recipe (wrong depth or family?)")
    note = f", {len(skipped)} skipped (shape or name mismatch, e.g. {skipped[0]})" if skipped else ""
    source = f" {spec}" if spec.startswith(PREFIX) else ""
    return f"initialised from {kind}{source}: {loaded} tensors{note}"


def initialise(model, init: str | None, backbone_cfg) -> str | None:
    """Training's starting point: `init` when given (it replaces the recipe's backbone weights),
    else the recipe's model.backbone.weights, else nothing (fresh weights, None returned)."""
    if init:
        return load_init_weights(model, init, backbone_cfg)
    if backbone_cfg.weights:
        return load_backbone_weights(model, backbone_cfg.weights, backbone_cfg)
    return None
