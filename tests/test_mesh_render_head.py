"""`render_mesh` on the built-in head (shaded face, depth and normals where they should be) and agreement with
pytorch3d where it imports."""

from __future__ import annotations

import pytest
import torch

from sheap_lite.gaussians import ambient_sh, sh_from_directional_light
from sheap_lite.render.mesh import render_mesh


pytestmark = pytest.mark.usefixtures("one_thread", "both_selection_paths")


# ---- the built-in head ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def head():
    from sheap_lite.camera import intrinsics, look_at_viewmat
    from sheap_lite.flame import FLAME
    from sheap_lite.viz import head_colors

    flame = FLAME.builtin()
    out = flame()
    size = 64
    return dict(flame=flame, vertices=out.vertices, landmarks=out.landmarks, faces=flame.faces,
                colors=torch.tensor(head_colors(flame), dtype=torch.float32)[None], size=size,
                K=intrinsics(size, size, batch=1), V=look_at_viewmat(1.3, batch=1))


def test_builtin_head_renders_a_shaded_face(head):
    from sheap_lite.camera import project_with_depth

    S = head["size"]
    sh = (ambient_sh(0.4) + sh_from_directional_light(torch.tensor([0.5, 0.3, 1.0]), 0.8))[None]
    bg = torch.tensor([[0.1, 0.2, 0.4]])
    verts = head["vertices"].clone().requires_grad_(True)
    out = render_mesh(verts, head["faces"], head["V"], head["K"], S, S, vertex_colors=head["colors"], sh=sh,
                      backgrounds=bg, sigma=0.3)
    c = S // 2
    assert out.alpha[0, 0, c - 2:c + 3, c - 2:c + 3].min() > 0.999
    assert (out.alpha[0, 0, :, :3] < 1e-3).all()  # background at the sides
    torch.testing.assert_close(out.rgb[0, :, 1, 1], bg[0])
    pix, z = project_with_depth(head["landmarks"], head["V"], head["K"])
    nose = pix[0, 30].long()
    cheeks = [(0.5 * (pix[0, 30] + pix[0, j])).long() for j in (2, 14)]
    depth = out.depth[0, 0].detach()
    nose_z = depth[nose[1], nose[0]]
    assert abs(nose_z - z[0, 30]) < 3e-3  # the nose-tip landmark lies on the visible surface
    for cheek in cheeks:
        assert depth[cheek[1], cheek[0]] > nose_z + 0.01
    normal = out.normal[0, :, nose[1], nose[0]].detach()
    assert normal[2] > 0.7 and abs(normal.norm() - 1) < 1e-5  # world +z: towards the camera
    (out.rgb.mean() + out.alpha.mean()).backward()
    assert torch.isfinite(verts.grad).all() and verts.grad.abs().sum() > 0
    # batch items are independent: a second, shifted copy renders its own image (hard visibility = soft's)
    shifted = head["vertices"] + torch.tensor([0.02, 0.0, 0.0])
    both = render_mesh(torch.cat([head["vertices"], shifted]), head["faces"], head["V"].expand(2, -1, -1),
                       head["K"].expand(2, -1, -1), S, S, vertex_colors=head["colors"].expand(2, -1, -1),
                       mode="hard")
    assert torch.equal(both.face_index[:1], out.face_index)
    torch.testing.assert_close(both.depth[:1], out.depth.detach())
    assert not torch.equal(both.face_index[0], both.face_index[1])


# ---- pytorch3d, where it imports -----------------------------------------------------------------------------------

def test_composite_has_no_seam_where_contours_overlap(head):
    """Under the jaw the neck's contour edge lies behind the jaw's: the old "composite" gave the neck face p < 1
    there and left a dotted seam of interior pixels below alpha 1 (4 at 128², sigma 0.1 px², K = 8)."""
    from sheap_lite.camera import intrinsics, look_at_viewmat

    size, sigma = 128, 0.1
    vertices = head["vertices"] + torch.tensor([0.0, 0.02, 0.0])
    out = render_mesh(vertices, head["faces"], look_at_viewmat(1.0, batch=1), intrinsics(size, size, batch=1),
                      size, size, mode="soft", sigma=sigma, faces_per_pixel=8)
    covered = (out.face_index[:, 0] >= 0).float()[:, None]
    interior = -torch.nn.functional.max_pool2d(-covered, 3, stride=1, padding=1)[0, 0] > 0.5  # 3x3 all covered
    assert interior.sum() > 3000
    assert out.alpha[0, 0][interior].min() > 0.999
    # the silhouette stays anti-aliased
    alpha = out.alpha[0, 0]
    assert ((alpha > 0.05) & (alpha < 0.95)).sum() > 50


def test_agrees_with_pytorch3d(head):
    pytest.importorskip("pytorch3d")
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.renderer.blending import BlendParams, softmax_rgb_blend
    from pytorch3d.structures import Meshes
    from pytorch3d.utils import cameras_from_opencv_projection

    S, faces = head["size"], head["faces"].long()
    verts, V, K = head["vertices"], head["V"], head["K"]
    cams = cameras_from_opencv_projection(R=V[:, :3, :3], tvec=V[:, :3, 3], camera_matrix=K,
                                          image_size=torch.tensor([[S, S]]))
    meshes = Meshes(verts=[verts[0]], faces=[faces])
    frags = MeshRasterizer(cameras=cams, raster_settings=RasterizationSettings(
        image_size=(S, S), blur_radius=0.0, faces_per_pixel=1))(meshes)
    ours = render_mesh(verts, faces, V, K, S, S, mode="hard")
    theirs_face = frags.pix_to_face[0, ..., 0]
    same = (theirs_face == ours.face_index[0, 0]).float().mean()
    assert same > 0.99
    hit = (theirs_face >= 0) & (theirs_face == ours.face_index[0, 0])
    torch.testing.assert_close(ours.depth[0, 0][hit], frags.zbuf[0, ..., 0][hit], atol=1e-4, rtol=0)
    # soft silhouette and colour (blend="softras"); σ, blur radius in NDC² = pixels² · (2/S)²
    sigma_px, gamma_m, k = 1.0, 1e-2, 8
    ndc2 = (2.0 / S) ** 2
    from sheap_lite.render.mesh_raster import blur_radius_sq

    frags = MeshRasterizer(cameras=cams, raster_settings=RasterizationSettings(
        image_size=(S, S), blur_radius=blur_radius_sq(sigma_px) * ndc2, faces_per_pixel=k,
        perspective_correct=True))(meshes)
    colors = head["colors"][0][faces]  # (F,3,3)
    texels = (frags.bary_coords[..., None] * colors[frags.pix_to_face.clamp_min(0)]).sum(-2)
    params = BlendParams(sigma=sigma_px * ndc2, gamma=gamma_m / 99.0, background_color=(0.0, 0.0, 0.0))
    rgba = softmax_rgb_blend(texels, frags, params, znear=1.0, zfar=100.0)
    ours = render_mesh(verts, faces, V, K, S, S, vertex_colors=head["colors"], sigma=sigma_px, gamma=gamma_m,
                       faces_per_pixel=k, blend="softras")
    assert (ours.alpha[0, 0] - rgba[0, ..., 3]).abs().mean() < 1e-2
    assert (ours.rgb[0].permute(1, 2, 0) - rgba[0, ..., :3]).abs().mean() < 1e-2
