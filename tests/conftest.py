"""Shared pytest fixtures."""

import pytest
import torch

from sheap_lite.threads import single_thread


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: its scenes are tiny, and on a busy 2-core machine torch's worker threads
    only add synchronisation (~3× the time)."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def ci_checkpoint(tmp_path_factory, one_thread):
    """(path, model): an untrained `ci` model (64², seed 0) saved as training saves it."""
    import dataclasses

    from sheap_lite.checkpoint import head_model_id, save_checkpoint
    from sheap_lite.config import PRESETS
    from sheap_lite.flame import FLAME
    from sheap_lite.train import build_model

    config = dataclasses.replace(PRESETS["ci"], seed=0)
    flame = FLAME.load()
    torch.manual_seed(0)
    model = build_model(config, flame).eval()
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    save_checkpoint(dict(version=1, step=0, config=dataclasses.asdict(config), head=head_model_id(flame),
                         model=model.state_dict()), path)
    return path, model


@pytest.fixture(params=["kernel", "pytorch"])
def both_selection_paths(request, monkeypatch):
    """Run a test on both of `render_mesh`'s face-selection paths: the compiled kernel (skipped where it cannot be
    built) and the PyTorch reference (the kernel switched off)."""
    from sheap_lite.render import kernel

    if request.param == "pytorch":
        monkeypatch.setattr(kernel, "library", lambda: None)
    elif kernel.library() is None:
        pytest.skip("the compiled render kernel cannot be built here (no C++ compiler?)")
    return request.param
