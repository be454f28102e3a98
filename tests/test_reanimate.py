"""The reanimation step on a synthetic clip at 64²: output shapes, the untrained model draws the head where the
data's heads are, one photometric L1 backward reaches every network parameter, the mesh renderer path, the
composites, inference, and FLAME kept out of the registered modules (DDP, state_dict)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from sheap_lite.data.dataset import ClipPairDataset, batch_landmarks
from sheap_lite.data.synthetic import SyntheticConfig, generate_dataset
from sheap_lite.flame import FLAME
from sheap_lite.networks import ModelConfig
from sheap_lite.reanimate import Reanimation, Reanimator

SIZE = 64


@pytest.fixture(scope="module")
def flame():
    return FLAME.builtin()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("reanimate")
    generate_dataset(root, SyntheticConfig(clips=2, frames=3, size=SIZE, seed=5), workers=1, progress=False)
    data = ClipPairDataset(root)
    return default_collate([data[0], data[len(data) - 1]])  # two clips, two identities


def _model(flame, renderer="2dgs", **config) -> Reanimator:
    torch.manual_seed(0)
    return Reanimator(ModelConfig(image_size=SIZE, **config), flame, renderer=renderer)


def _step(model, batch, **kwargs) -> Reanimation:
    return model(batch["source_image"], batch["target_image"], batch["target_mask"], **kwargs)


def test_shapes(flame, batch, one_thread):
    model = _model(flame)
    r = _step(model, batch)
    n, v = model.field.n_surfels, flame.v_template.shape[0]
    assert n == flame.faces.shape[0]  # one surfel per triangle
    assert r.image.shape == (2, 3, SIZE, SIZE) and r.render.rgb.shape == (2, 3, SIZE, SIZE)
    assert r.vertices.shape == (2, v, 3) and r.landmarks2d.shape == (2, 68, 2)
    assert r.surfels.means.shape == (2, n, 3) and r.local.offset.shape == (2, n, 3)
    assert r.face_normals.shape == (2, n, 3) and r.sh.shape == (2, 9, 3)
    assert r.mesh_depth.shape == (2, 1, SIZE, SIZE) and r.mesh_depth.requires_grad
    assert r.params.pose.shape == (2, 5, 3, 3)
    assert torch.equal(r.params.shape, r.source.shape) and torch.equal(r.params.expression, r.target.expression)
    assert torch.equal(r.params.translation, r.target.translation)
    torch.testing.assert_close(r.face_normals.norm(dim=-1), torch.ones(2, n))
    for t in (r.image, r.render.alpha, r.render.depth, r.landmarks2d):
        assert torch.isfinite(t).all()


def test_untrained_model_draws_the_head_where_the_data_has_it(flame, batch, one_thread):
    r = _step(_model(flame), batch)
    truth = batch["target_landmarks"]
    centre_error = (r.landmarks2d.mean(1) - truth.mean(1)).norm(dim=-1)
    assert (centre_error < 0.1 * SIZE).all(), centre_error  # within 6.4 px at 64²
    extent = r.landmarks2d.std(1).norm(dim=-1) / truth.std(1).norm(dim=-1)
    assert ((extent > 0.8) & (extent < 1.25)).all(), extent
    # the head covers the mask and the mesh depth sees it
    mask = batch["target_mask"] > 0.5
    assert r.render.alpha[mask].mean() > 0.8 and (r.mesh_depth[mask] > 0).float().mean() > 0.8


def test_one_photometric_backward_reaches_every_parameter(flame, batch, one_thread):
    model = _model(flame)
    r = _step(model, batch)
    (r.image - batch["target_image"]).abs().mean().backward()
    missing = [name for name, p in model.networks.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert {name.split(".")[0] for name, _ in model.networks.named_parameters()} == {
        "encoder", "flame_head", "gaussian_head"}


def test_mesh_renderer_runs_and_gives_gradients(flame, batch, one_thread):
    model = _model(flame, renderer="mesh")
    r = _step(model, batch)
    assert r.local is None and r.surfels is None and r.face_normals is None and r.mesh_depth is None
    assert r.image.shape == (2, 3, SIZE, SIZE) and r.render.alpha[batch["target_mask"] > 0.5].mean() > 0.8
    (r.image - batch["target_image"]).abs().mean().backward()
    head = model.networks["gaussian_head"]
    for p in (model.networks["encoder"].net.head.weight, model.networks["flame_head"].out.weight, head.light.weight,
              head.embedding):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    albedo_rows = head.out.weight.grad[10:13]  # albedo logits reach the vertices' colours
    assert albedo_rows.abs().sum() > 0


def test_no_renderer_trains_on_landmarks_and_priors_alone(flame, batch, one_thread):
    from sheap_lite.losses import LossWeights, reanimation_losses

    model = _model(flame, renderer="none")
    r = _step(model, batch)
    assert r.image is None and r.render is None and r.surfels is None and r.mesh_depth is None
    losses = reanimation_losses(r, batch, LossWeights())
    assert set(losses) == {"landmarks", "shape_prior", "expression_prior", "pose_prior", "eyelid_prior", "total"}
    with_render = reanimation_losses(_step(_model(flame), batch), batch, LossWeights())
    for name in ("landmarks", "shape_prior", "expression_prior", "pose_prior"):  # the same networks, same seed
        torch.testing.assert_close(losses[name], with_render[name])
    losses["total"].backward()
    assert model.networks["flame_head"].out.weight.grad.abs().sum() > 0
    assert model.networks["encoder"].net.head.weight.grad.abs().sum() > 0
    assert model.networks["gaussian_head"].out.weight.grad is None  # nothing drawn: the surfels learn nothing


def test_embedding_head_and_vit_encoder_run(flame, batch, one_thread):
    model = _model(flame, gaussian_head="embedding", encoder="vit", width=8, vit_depth=1, vit_heads=2)
    r = _step(model, batch)
    (r.image - batch["target_image"]).abs().mean().backward()
    assert model.networks["encoder"].net.embed.weight.grad.abs().sum() > 0


def test_composites(flame, batch, one_thread):
    model = _model(flame)
    target, mask = batch["target_image"], batch["target_mask"]
    with torch.no_grad():
        rgb, alpha = (lambda r: (r.render.rgb, r.render.alpha))(_step(model, batch, composite="none"))
        assert torch.equal(_step(model, batch, composite="none").image, rgb)
        torch.testing.assert_close(_step(model, batch, composite="target").image, rgb + (1 - alpha) * target)
        torch.testing.assert_close(_step(model, batch).image, rgb + (1 - alpha) * target * (1 - mask))
    with pytest.raises(ValueError, match="target_mask"):
        model(batch["source_image"], target)
    with pytest.raises(ValueError, match="composite"):
        _step(model, batch, composite="mesh")
    with pytest.raises(ValueError, match="renderer"):
        Reanimator(ModelConfig(image_size=SIZE), flame, renderer="nerf")


@pytest.mark.parametrize("with_landmarks", [False, True])
def test_predict_matches_the_target_branch(flame, batch, one_thread, with_landmarks):
    model = _model(flame, landmark_input=with_landmarks)
    inputs = batch_landmarks(batch)
    if with_landmarks:
        with pytest.raises(ValueError, match="landmark"):
            model.predict(batch["target_image"])
        with pytest.raises(ValueError, match="landmark"):
            _step(model, batch)
    params = model.predict(batch["target_image"], inputs["target_landmarks"] if with_landmarks else None)
    with torch.no_grad():
        r = _step(model, batch, **inputs)
    assert params.pose.shape == (2, 5, 3, 3) and not params.shape.requires_grad
    torch.testing.assert_close(params.translation, r.target.translation, atol=1e-5, rtol=0)
    torch.testing.assert_close(params.expression, r.target.expression, atol=1e-5, rtol=0)
    torch.testing.assert_close(params.shape, r.target.shape, atol=1e-6, rtol=0)
    if with_landmarks:  # the identity (from the source frame) read that frame's own landmarks
        source = model.predict(batch["source_image"], inputs["source_landmarks"])
        torch.testing.assert_close(source.shape, r.source.shape, atol=1e-6, rtol=0)


def test_flame_stays_out_of_parameters_and_state_dict(flame):
    model = _model(flame)
    names = set(model.state_dict())
    assert {"field.bary", "field.face_index", "field.local_position"} <= names
    assert not any("v_template" in name or "shapedirs" in name for name in names)
    assert {id(p) for p in model.parameters()} == {id(p) for p in model.networks.parameters()}
    model64 = _model(FLAME.builtin()).to(torch.float64)  # a separate FLAME: `.to` moves it along
    assert model64.flame.v_template.dtype == torch.float64 and model64.field.bary.dtype == torch.float64


def test_bf16_autocast_keeps_geometry_and_rendering_in_float32(flame, batch, one_thread):
    model = _model(flame)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = _step(model, batch)
    assert r.image.dtype == torch.float32 and r.vertices.dtype == torch.float32 and torch.isfinite(r.image).all()
    r.image.mean().backward()
    assert torch.isfinite(model.networks["encoder"].net.head.weight.grad).all()


def test_ddp_wraps_the_networks_only(flame, batch, tmp_path, one_thread):
    """One-process gloo DDP around `networks`: two steps run (DDP sees one forward per backward, every parameter
    used) and the gradients equal the plain model's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    plain, wrapped = _model(flame), _model(flame)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = wrapped.wrap_networks(lambda networks: DistributedDataParallel(networks))
        assert ddp.module is wrapped.networks
        for _ in range(2):
            for model in (plain, wrapped):
                model.zero_grad()
                r = _step(model, batch)
                (r.image - batch["target_image"]).abs().mean().backward()
    finally:
        dist.destroy_process_group()
    for (name, p), q in zip(plain.networks.named_parameters(), wrapped.networks.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    assert set(wrapped.networks.state_dict()) == set(plain.networks.state_dict())


def test_mesh_depth_term_does_not_pull_the_head_along_the_view_axis(flame, batch, one_thread):
    """The surfels ride on the mesh, so moving the whole head by dz moves the rendered depth and the mesh depth
    alike: the depth term's gradient on the translation must be small next to the dz-per-dz a detached mesh depth
    gives (the render's depth moving alone changes |depth − mesh depth| by ~1 per metre where the head is)."""
    from sheap_lite.losses import mesh_depth_loss

    r = _step(_model(flame), batch)
    term = mesh_depth_loss(r.render.depth, r.mesh_depth, r.render.alpha)
    (dz,) = torch.autograd.grad(term, r.target.translation, retain_graph=True)
    detached = mesh_depth_loss(r.render.depth, r.mesh_depth.detach(), r.render.alpha)
    (dz_detached,) = torch.autograd.grad(detached, r.target.translation)
    coverage = ((r.mesh_depth > 0).float() * r.render.alpha).mean()
    assert dz_detached[:, 2].abs().sum() > 0.5 * coverage  # what the old, detached target did
    assert dz[:, 2].abs().sum() < 0.1 * dz_detached[:, 2].abs().sum()
