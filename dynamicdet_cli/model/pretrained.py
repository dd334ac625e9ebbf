"""Starting weights from local files (`train-detectors --init FILE`). Nothing is downloaded.

Three kinds of file are understood:
- a dynamicdet checkpoint: its detector weights, tensor by tensor where shapes match
  (so a model trained on other classes gives everything but the class-specific layers);
- a torchvision Faster R-CNN or Mask R-CNN state dict (keys backbone.body.*, backbone.fpn.*, rpn.*,
  roi_heads.*, e.g. fasterrcnn_resnet50_fpn's): loaded into BOTH detectors;
- a torchvision ResNet state dict (conv1.*, layer1.*, ...): loaded into both backbones.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from dynamicdet_cli.errors import DynamicDetError
from dynamicdet_cli.model.backbone import load_backbone_weights


def _read(path: Path) -> dict:
    if not path.is_file():
        raise DynamicDetError(f"{path}: --init file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # legacy (pre-zip) torch files are read above; this is neither
            raise DynamicDetError(f"{path}: truncated or corrupt weights file") from None
        raise DynamicDetError(f"{path}: refused: it carries pickled Python objects, not plain weights") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError):
        raise DynamicDetError(f"{path}: truncated or corrupt weights file") from None
    if not isinstance(state, dict):
        raise DynamicDetError(f"{path}: not a state dict or dynamicdet checkpoint")
    return state


def _torchvision_detector_to_ours(state: dict, head: str, backbone: str, backbone_has_stem: bool) -> dict:
    """Rename one torchvision FasterRCNN state dict into one of our detectors' names."""
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
        elif key.startswith(("rpn.", "roi_heads.")):
            out[f"{head}.{key}"] = value
    return out


def _load_matching(model: torch.nn.Module, state: dict) -> tuple[int, list[str]]:
    """Load the tensors whose name and shape match; return (loaded, skipped names)."""
    own = model.state_dict()
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in state if k not in take]
    model.load_state_dict(take, strict=False)
    return len(take), skipped


def load_init_weights(model, path: str | Path) -> str:
    """Initialise `model` (a DynamicDetector) from `path`; return a one-line report."""
    path = Path(path)
    state = _read(path)
    if state.get("format") == "dynamicdet":
        from dynamicdet_cli.checkpoint import load_checkpoint
        ckpt = load_checkpoint(path)
        loaded, skipped = _load_matching(model, ckpt["detector"])
        kind = "dynamicdet checkpoint"
    elif any(k.startswith("backbone.body.") for k in state):
        renamed = {}
        for head, backbone in (("head1", "backbone1"), ("head2", "backbone2")):
            has_stem = getattr(model, backbone).stem is not None
            renamed.update(_torchvision_detector_to_ours(state, head, backbone, has_stem))
        loaded, skipped = _load_matching(model, renamed)
        kind = "torchvision detector state dict (into both detectors)"
    elif any(k.startswith("layer1.") for k in state):
        loaded = load_backbone_weights(model.backbone1, str(path)) + load_backbone_weights(model.backbone2, str(path))
        skipped = []
        kind = "torchvision ResNet state dict (into both backbones)"
    else:
        raise DynamicDetError(f"{path}: not a dynamicdet checkpoint, torchvision Faster R-CNN or ResNet state dict")
    if loaded == 0:
        raise DynamicDetError(f"{path}: no tensor matches this model's recipe (wrong depth or family?)")
    note = f", {len(skipped)} skipped (shape or name mismatch, e.g. {skipped[0]})" if skipped else ""
    return f"initialised from {kind}: {loaded} tensors{note}"
