"""The pretrained weights a config asks for, made available before training starts: fetched
into torch's hub cache once, or a clear error (never a silent random init)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse


class PretrainedWeightsError(RuntimeError):
    """A config asks for pretrained weights that are neither cached nor downloadable."""


def _pretrained_sources(node) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pretrained"), str):
            yield node["pretrained"]
        if node.get("type") == "Pretrained" and isinstance(node.get("checkpoint"), str):
            yield node["checkpoint"]
        for value in node.values():
            yield from _pretrained_sources(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _pretrained_sources(value)


def _resolve_url(source: str) -> str | None:
    """The http(s) URL mmengine would fetch `source` from, or None for a local file."""
    from mmengine.runner.checkpoint import get_external_models, get_mmcls_models

    if source.startswith(("http://", "https://")):
        return source
    for prefix, table in (("open-mmlab://", get_external_models), ("mmcls://", get_mmcls_models)):
        if source.startswith(prefix):
            name = source[len(prefix):]
            urls = table()
            if name not in urls:
                raise PretrainedWeightsError(f"{source}: mmengine knows no such model")
            return urls[name]
    if source.startswith("torchvision://"):
        raise PretrainedWeightsError(f"{source}: torchvision weights need torchvision, which "
                                     "this project does not install; use a local file")
    return None


def ensure_pretrained(model_cfg: dict) -> list[str]:
    """Make every pretrained checkpoint of the model available before training starts.

    A URL is fetched into torch's hub cache (where mmengine looks) unless it is there already;
    a checkpoint that cannot be had is a PretrainedWeightsError, never a silent random init.
    Returns the local paths.
    """
    import torch.hub

    paths = []
    for source in dict.fromkeys(_pretrained_sources(model_cfg)):
        url = _resolve_url(source)
        if url is None:
            if not Path(source).is_file():
                raise PretrainedWeightsError(f"pretrained checkpoint {source} does not exist")
            paths.append(source)
            continue
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, str(cached), progress=True)
            except Exception as error:  # noqa: BLE001 - any failure means the same to the user
                raise PretrainedWeightsError(
                    f"the config's pretrained backbone {source} is not cached at {cached} and "
                    f"could not be downloaded from {url} ({type(error).__name__}: {error}). "
                    f"Download it on a machine with network access and copy it to {cached} "
                    f"(or set TORCH_HOME); training from random weights would not reproduce "
                    f"the paper.") from error
        paths.append(str(cached))
    return paths
