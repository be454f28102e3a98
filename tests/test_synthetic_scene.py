"""The world around the synthetic head (sheap_lite.data.synthetic_scene): hair, body and occluders follow the head
as they should, and none of them changes the ground truth or the stored landmarks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sheap_lite.data.synthetic import SyntheticConfig, _load_flame, generate_clip
from sheap_lite.data.synthetic_scene import (HAIR_STYLES, MATERIALS, build_scene, joint_transforms, make_body,
                                             make_hair, make_hand, pose_scene)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def head():
    flame = _load_flame(None)
    rest = flame()
    return dict(flame=flame, rest=rest.vertices[0].numpy(), landmarks=rest.landmarks[0].numpy(),
                faces=flame.faces.numpy(), weights=flame.lbs_weights.numpy())


def posed(head, objects, pose: np.ndarray):
    """Pose the head and the objects with the same pose (T,5,3); → (head vertices (T,V,3), scene vertices)."""
    flame, t = head["flame"], len(pose)
    shape = torch.zeros(t, flame.n_shape)
    expression, eyelids = torch.zeros(t, flame.n_expression), torch.zeros(t, 2)
    pose = torch.from_numpy(pose).float()
    out = flame(shape=shape, expression=expression, pose=pose, eyelids=eyelids)
    rotation, offset = joint_transforms(flame, shape, expression, pose, eyelids)
    scene = pose_scene(objects, rotation, offset, torch.zeros(t, 3))
    return out.vertices, scene


def test_every_hair_style_is_a_shell_over_the_scalp(head):
    for style in HAIR_STYLES:
        hair = make_hair(np.random.default_rng(0), style, head["rest"], head["faces"], head["landmarks"],
                         head["weights"])
        if style == "bald":
            assert hair is None
            continue
        assert hair.material == MATERIALS["hair"] and hair.faces.max() < len(hair.vertices)
        np.testing.assert_allclose(hair.weights.sum(1), 1.0, atol=1e-5)
        # the hair lies above the eyes and covers the top of the head, outside the skin
        top = head["rest"][:, 1].max()
        assert hair.vertices[:, 1].max() > top
        brows = head["landmarks"][17:27, 1].mean()
        front = hair.vertices[hair.vertices[:, 2] > head["landmarks"][27, 2] - 0.02]
        assert len(front) == 0 or front[:, 1].min() > brows + 0.02  # no hair on the face
    long = make_hair(np.random.default_rng(0), "long", head["rest"], head["faces"], head["landmarks"],
                     head["weights"])
    short = make_hair(np.random.default_rng(0), "short", head["rest"], head["faces"], head["landmarks"],
                      head["weights"])
    assert long.vertices[:, 1].min() < head["landmarks"][8, 1] < short.vertices[:, 1].min() + 0.1  # past the chin
    with pytest.raises(ValueError, match="hair style"):
        make_hair(np.random.default_rng(0), "mohawk", head["rest"], head["faces"], head["landmarks"], head["weights"])


def test_hair_follows_the_head_rotation(head):
    hair = make_hair(np.random.default_rng(1), "medium", head["rest"], head["faces"], head["landmarks"],
                     head["weights"])
    pose = np.zeros((2, 5, 3))
    pose[1, 1] = [0.2, 0.6, 0.1]  # the head turns on the neck
    head_v, (scene_v, _, _, _, _) = posed(head, [hair], pose)
    # each hair vertex keeps its distance to the nearest scalp vertex (both rigid with the skull)
    skull = head["weights"][:, 1] > 0.99
    on_skull = torch.from_numpy(hair.weights[:, 1] > 0.99)  # (hair at the nape blends in the global joint)
    assert on_skull.float().mean() > 0.7
    rest_d = torch.cdist(scene_v[0][on_skull], head_v[0][skull]).min(1).values
    turned_d = torch.cdist(scene_v[1][on_skull], head_v[1][skull]).min(1).values
    assert (rest_d - turned_d).abs().max() < 1e-3  # the head alone has pose correctives (sub-millimetre)
    moved = (scene_v[1] - scene_v[0]).norm(dim=-1)
    assert moved.mean() > 0.02  # it did move with the head


def test_body_top_follows_the_neck_and_the_shoulders_stay(head):
    body = make_body(np.random.default_rng(0), head["rest"], head["faces"], head["weights"])
    pose = np.zeros((2, 5, 3))
    pose[1, 1, 1] = 0.6  # neck yaw
    _, (scene_v, _, _, _, _) = posed(head, [body], pose)
    moved = (scene_v[1] - scene_v[0]).norm(dim=-1)
    low = torch.from_numpy(body.vertices[:, 1] < body.vertices[:, 1].min() + 0.2)
    assert moved[low].max() < 1e-6  # shoulders: the global frame
    assert moved[~low].max() > 0.005  # the neck's top: with the head
    pose[1, 0, 1] = 0.3  # a global turn moves everything
    _, (scene_v, _, _, _, _) = posed(head, [body], pose)
    assert (scene_v[1] - scene_v[0]).norm(dim=-1)[low].min() > 1e-3


def test_hand_shows_in_some_frames_only_and_is_culled_elsewhere(head):
    hand = make_hand(np.random.default_rng(3), head["landmarks"], 12)
    assert 0 < hand.visible.sum() <= 12
    _, (_, _, faces, material, shown) = posed(head, [hand], np.zeros((12, 5, 3)))
    assert shown.shape == (12, len(faces)) and (shown.all(1) | ~shown.any(1)).all()
    assert (material == MATERIALS["occluder"]).all()


def test_build_scene_is_deterministic_and_describes_itself(head):
    args = (head["rest"], head["faces"], head["landmarks"], head["weights"], 8)
    a, meta_a = build_scene(np.random.default_rng(5), *args, occluder_prob=1.0)
    b, meta_b = build_scene(np.random.default_rng(5), *args, occluder_prob=1.0)
    assert meta_a == meta_b and meta_a["glasses"] and (meta_a["microphone"] or meta_a["hand"])
    assert all(np.array_equal(x.vertices, y.vertices) for x, y in zip(a, b))
    none, meta = build_scene(np.random.default_rng(5), *args, hair_style="bald", body=False, occluder_prob=0.0)
    assert none == [] and meta["hair"] == "bald"


def test_scene_changes_frames_but_not_the_ground_truth(head):
    config = SyntheticConfig(clips=1, frames=3, size=32, seed=2, occluder_prob=1.0)
    with_scene = generate_clip(head["flame"], config, 0)
    bare = generate_clip(head["flame"], dataclasses.replace(config, scene=False), 0)
    assert with_scene["meta"]["scene"]["glasses"]
    for key, value in bare["ground_truth"].items():
        np.testing.assert_array_equal(value, with_scene["ground_truth"][key], err_msg=key)
    np.testing.assert_array_equal(bare["landmarks"], with_scene["landmarks"])
    assert not np.array_equal(bare["frames"], with_scene["frames"])
    # masks: the head region (face, forehead, skull, amodally), not the neck or shoulders
    lm = with_scene["landmarks"]
    below_chin = np.zeros((3, 32, 32), bool)
    for f in range(3):
        below_chin[f, int(lm[f, 8, 1]) + 3:] = True
    assert not (with_scene["masks"] == 255)[below_chin].any()
    assert (bare["masks"] == 255).mean() > 0.15


def test_materials_agree_with_the_appearance_module():
    look = pytest.importorskip("sheap_lite.data.synthetic_look")
    assert look.MATERIALS == MATERIALS
