"""What the demo's report shows, section by section, with captions: the synthetic data, the training curves, the
benchmark table with predicted against true heads, inference on a photo, and the building blocks (the head model at
named expressions and poses, the two renderers side by side). Each `*_section(report, ...)` adds to a
`demo_report.Report`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .flame import FLAME
from .outputs import write_mesh
from .viz import head_colors, head_figure, heads_scene, image_figure

__all__ = ["EXPRESSIONS", "head_model_figures", "render_both", "predicted_views", "data_section", "training_section",
           "evaluation_section", "inference_section", "head_model_section"]

EXPRESSIONS = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "mouthPucker", "browInnerUp", "eyeBlinkLeft")


def _poses(flame: FLAME) -> dict[str, dict[str, torch.Tensor]]:
    """Named parameter sets: neutral, named expressions, joint rotations and two random identities."""
    dtype = flame.v_template.dtype
    names = flame.expression_names or [f"expression {i}" for i in range(flame.n_expression)]
    shown = [e for e in EXPRESSIONS if e in names] or names[: len(EXPRESSIONS)]
    cases: dict[str, dict[str, torch.Tensor]] = {"neutral": {}}
    for name in shown:
        psi = torch.zeros(1, flame.n_expression, dtype=dtype)
        psi[0, names.index(name)] = 1.0
        cases[name] = {"expression": psi}
    for label, joint, axis_angle in (("jaw open", 2, (0.3, 0.0, 0.0)), ("head turned", 1, (0.0, 0.5, 0.0)),
                                     ("eyes turned", slice(3, 5), (0.0, 0.35, 0.0))):
        pose = torch.zeros(1, 5, 3, dtype=dtype)
        pose[0, joint] = torch.tensor(axis_angle, dtype=dtype)
        cases[label] = {"pose": pose}
    generator = torch.Generator().manual_seed(0)
    for i in range(2):
        cases[f"identity {i}"] = {"shape": torch.randn(1, flame.n_shape, generator=generator, dtype=dtype)}
    return cases


@torch.no_grad()
def head_model_figures(flame: FLAME, mesh_dir: Path):
    """(the template with its landmarks, a grid of named expressions / poses / identities) as plotly figures; each
    grid head is also written to `mesh_dir/<label>.obj`."""
    mesh_dir.mkdir(exist_ok=True)
    cases = _poses(flame)
    heads = []
    for label, params in cases.items():
        vertices = flame(**params).vertices[0]
        heads.append(vertices)
        write_mesh(mesh_dir / f"{label.replace(' ', '_')}.obj", vertices, flame.faces)
    colors = head_colors(flame)
    grid = heads_scene(heads, flame.faces, list(cases), cols=4, vertex_colors=colors)
    detail = head_figure(heads[0], flame.faces, vertex_colors=colors, landmarks=flame().landmarks[0],
                         title=f"{flame.name}: template with {flame.n_landmarks} landmarks (hover for indices)")
    return detail, grid


@torch.no_grad()
def render_both(flame: FLAME, size: int = 128):
    """The template rendered with 2DGS surfels and with the mesh rasteriser (same camera, light and colours).

    Returns a plotly figure of rgb, depth and normal maps for both, and the two `alpha` maps (1,size,size).
    """
    from .camera import intrinsics, look_at_viewmat
    from .gaussians import SurfelLocal, ambient_sh, bind_surfels, rig_surfels, shade, sh_from_directional_light
    from .render import render_2dgs, render_mesh

    dtype = flame.v_template.dtype
    vertices = flame().vertices
    colors = torch.as_tensor(head_colors(flame), dtype=dtype)
    sh = ambient_sh(0.55, dtype=dtype) + sh_from_directional_light(torch.tensor([0.4, 0.5, 1.0], dtype=dtype), 1.6)
    camera = {"viewmats": look_at_viewmat(1.0, batch=1, dtype=dtype),
              "Ks": intrinsics(size, size, batch=1, dtype=dtype), "width": size, "height": size}
    binding = bind_surfels(flame.v_template, flame.faces, per_face=1)
    surfels = rig_surfels(vertices, flame.faces, binding, SurfelLocal.initial(binding, dtype=dtype))
    albedo = binding.interpolate(colors[None], flame.faces)
    splat = render_2dgs(surfels.means, surfels.quats, surfels.scales, surfels.opacities,
                        shade(albedo, surfels.normals, sh[None]), backend="auto", **camera)
    mesh = render_mesh(vertices, flame.faces, vertex_colors=colors[None], sh=sh[None], **camera)
    images = [splat.rgb[0], splat.depth[0], splat.normal[0], mesh.rgb[0], mesh.depth[0], mesh.normal[0]]
    kinds = ["rgb", "map", "normal"] * 2
    titles = ["2DGS rgb", "2DGS expected depth (m)", "2DGS normal", "mesh rgb", "mesh depth (m)", "mesh normal"]
    depth_range = (0.85, 1.1)
    figure = image_figure([i.detach() for i in images], titles, cols=3, kinds=kinds,
                          zrange=[None, depth_range, None] * 2, cell_px=260)
    return figure, splat.alpha[0].detach(), mesh.alpha[0].detach()


@torch.no_grad()
def predicted_views(model, frames: np.ndarray, landmarks: np.ndarray, visible: np.ndarray) -> dict:
    """A trained `Reanimator` on frames (B,S,S,3) uint8 with their 2D landmarks (B,68,2) px and visibility (B,68)
    (what a landmark-input model reads) → {"overlay": B PIL images (the projected mesh and its 68 landmarks over
    the frame, as `infer` draws them), "render": (B,S,S,3) uint8 surfel renders, "params": FlameParams,
    "vertices": (B,V,3) posed heads less their translation}."""
    from .infer import overlay, predict_crops

    detected = np.concatenate([landmarks, visible[..., None]], -1).astype(np.float32)
    out = predict_crops(model, list(frames), render=True, detected=detected)
    faces = model.flame.faces.cpu()
    overlays = [overlay(frame, out["vertices2d"][b].cpu(), faces, out["front"][b].cpu(), out["landmarks2d"][b].cpu())
                for b, frame in enumerate(frames)]
    render = (out["render"].permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    vertices = out["vertices"] - out["params"].translation[:, None]  # at the origin for 3D views
    return {"overlay": overlays, "render": render, "params": out["params"], "vertices": vertices.cpu()}


def _first_clip(folder: Path):
    from .data.clip_format import list_clips, load_clip

    return load_clip(list_clips(folder)[0])


def data_section(report, data_dir: Path, config) -> None:
    """One training clip's frames, and one frame of each held-out benchmark set."""
    clip = _first_clip(data_dir / "train")
    report.section("1. Synthetic data", f"{config.clips} training clips and two held-out benchmark sets of "
                   f"{config.benchmark_clips} clip(s) each, of unseen identities, {config.frames} frames of "
                   f"{config.size}² each, in <code>synthetic/</code>; every frame stores its true FLAME parameters, "
                   f"mesh, 2D landmarks and mask (<code>python -m sheap_lite.data.synthetic</code>, docs/data.md).")
    report.images([(frame, f"frame {i}") for i, frame in enumerate(clip.frames)],
                  f"<b>One training clip</b> (label {clip.meta.get('label')!r}): the built-in head rendered by the "
                  "mesh renderer with hair, neck, shoulders, a background and camera effects. Look for the head "
                  "moving and the face changing between frames: training pairs two frames of one clip, predicts "
                  "the head in the first and re-animates it to the second.", width=128)
    frames = [(_first_clip(data_dir / "benchmark" / kind).frames[0], f"benchmark/{kind}") for kind in
              ("neutral", "expressive")]
    report.images(frames, "<b>Held-out benchmark frames</b>: identities never seen in training; the neutral set has "
                  "zero expression and a mild pose, the expressive set posed expressions. The evaluation below "
                  "measures the predicted heads against these frames' true meshes.", width=128)


def _change(records: list[dict], term: str) -> str:
    values = [r[term] for r in records if r["split"] == "val" and term in r]
    return f"{term} {values[0]:.4f} → {values[-1]:.4f}" if len(values) > 1 else f"{term}: one evaluation only"


def training_section(report, run_dir: Path, config) -> None:
    """The run's curves from its metrics.jsonl."""
    from .train_log import read_metrics
    from .viz_training import metrics_figure

    records = read_metrics(run_dir)
    report.section("2. Training", f"{config.steps} steps of batch {config.batch_size} at {config.model.image_size}² "
                   f"through <code>sheap_lite.train.train</code> (the <code>ci</code> preset's tiny CNN, which also "
                   "reads the frame's 2D landmarks), into <code>run/</code>: <code>checkpoint.pt</code>, "
                   "<code>metrics.jsonl</code>, <code>tb/</code> (<code>tensorboard --logdir run</code>).")
    report.plot(metrics_figure(records, terms=("l1", "dssim", "landmarks", "total"), height=320),
                f"<b>Loss curves</b> (log scale): blue, the training mean every {config.log_every} steps; red, "
                f"the held-out identities every {config.eval_every} steps ({_change(records, 'l1')}, "
                f"{_change(records, 'landmarks')}). Look for the training L1 and D-SSIM falling as the networks "
                "learn to re-render the head, the held-out landmark error falling as they learn to place it on "
                "faces they have not seen, and the gap between training and held-out L1: appearance learnt from "
                "a few identities carries over to new ones only in part. A run this short learns appearance and "
                "placement, not geometry (docs/benchmarks.md, the learning proof).")


def _ratio(metrics: dict, measure: str, unit: str) -> str:
    block = metrics[measure]
    model, mean = block["model"][f"mean_{unit}"], block["mean_head"][f"mean_{unit}"]
    verdict = "better than" if model < mean else "worse than"
    return f"{model:.2f} against {mean:.2f} {unit} ({verdict} the mean head)"


def evaluation_section(report, model, data_dir: Path, metrics: dict, table: str) -> None:
    """The benchmark table, then one frame per benchmark set: overlay, surfel render, true and predicted heads."""
    report.section("3. Evaluation on unseen identities", "<code>sheap_lite.evaluate.evaluate_synthetic</code> on "
                   "<code>synthetic/benchmark/</code>; the same numbers in <code>eval/metrics.json</code> and "
                   "<code>eval/metrics.md</code> (<code>python -m sheap_lite.evaluate</code> writes the same).")
    report.table(table, "<b>The synthetic benchmark</b>: per-vertex errors over the face region after a similarity "
                 "alignment (mm), and the projected 68 landmarks' error (px and % of the interocular distance), "
                 "against the mean head (the template; for the posed mesh, at the true head pose). The last column "
                 "below 1 means the model beats the mean head. Here, mean errors: neutral shape "
                 f"{_ratio(metrics, 'neutral', 'mm')}, posed mesh {_ratio(metrics, 'expressive', 'mm')}, 2D "
                 f"landmarks {_ratio(metrics, 'landmarks_2d', 'px')}. The paper's result needs a long run on many "
                 "identities; a few minutes on a CPU mostly teach the network to place the head.")
    from .evaluate import true_params

    clips = [_first_clip(data_dir / "benchmark" / kind) for kind in ("neutral", "expressive")]
    frame = lambda clip: clip.meta["n_frames"] // 2  # noqa: E731
    views = predicted_views(model, np.stack([c.frames[frame(c)] for c in clips]),
                            np.stack([c.landmarks[frame(c)] for c in clips]),
                            np.stack([c.landmarks_visible[frame(c)] for c in clips]))
    images, heads, titles = [], [], []
    for k, (clip, kind) in enumerate(zip(clips, ("neutral", "expressive"))):
        images += [(clip.frames[frame(clip)], f"{kind}: frame"), (views["overlay"][k], f"{kind}: predicted mesh"),
                   (views["render"][k], f"{kind}: surfel render")]
        true = true_params(clip)[frame(clip):frame(clip) + 1]
        heads += [(model.flame(true).vertices - true.translation[:, None])[0].cpu(), views["vertices"][k]]
        titles += [f"{kind}: true head", f"{kind}: predicted head"]
    report.images(images, "<b>Predictions on held-out frames</b>: the frame, the predicted mesh projected over it "
                  "(green: front-facing triangles, red: its 68 landmarks), and the predicted head rendered by 2D "
                  "Gaussian splatting with its learnt surfels. Look for the landmarks on the eyes, nose, mouth "
                  "and jaw line, and the render's colours following the face.")
    report.plot(heads_scene(heads, model.flame.faces, titles, cols=2, vertex_colors=head_colors(model.flame),
                            cell_height=360),
                "<b>True (left) and predicted (right) heads in 3D</b>, the same frames (drag to turn them, the "
                "translation removed). Compare the face's proportions (identity), the mouth and jaw (expression) "
                "and the head's turn (pose).")


def inference_section(report, model, folder: Path | None, why_not: str) -> None:
    """The astronaut: crop, overlay and render from infer/astronaut/, and the predicted head in 3D."""
    report.section("4. Inference on a photo", "<code>python -m sheap_lite.infer astronaut.png --checkpoint "
                   "run/checkpoint.pt --render</code> on <code>skimage.data.astronaut()</code> (public domain): "
                   "face detection and 68 landmarks (MediaPipe's face mesh), the same crop as training data, "
                   "then the model; <code>infer/astronaut/</code> holds the FLAME parameters (.json, .npz), the "
                   "mesh (.obj, .ply), the crop, the overlay and the render.")
    if folder is None:
        report.note(f"Skipped: {why_not}.")
        return
    from PIL import Image

    shown = [(Image.open(folder / f"{name}.png").convert("RGB"), label) for name, label in
             (("crop", "crop (the model's input)"), ("overlay", "predicted mesh and landmarks"),
              ("render", "surfel render"))]
    report.images(shown, "<b>The astronaut</b>: a real photo, unlike anything in the synthetic training set. Look "
                  "for the landmarks (red) on the eyes, brows, nose and mouth, and the mesh (green) covering the "
                  "face: the network reads the detected landmarks, so placement transfers; the render's "
                  "appearance was learnt on synthetic faces only.")
    params = np.load(folder / "params.npz")
    translation = torch.as_tensor(params["translation"], dtype=torch.float32)
    import trimesh

    posed = torch.as_tensor(trimesh.load(folder / "mesh.obj", process=False).vertices, dtype=torch.float32)
    with torch.no_grad():
        identity = model.flame(shape=torch.as_tensor(params["shape"], dtype=torch.float32)[None]).vertices[0].cpu()
    report.plot(heads_scene([posed - translation, identity], model.flame.faces,
                           ["as posed in the photo", "identity alone"],
                           cols=2, vertex_colors=head_colors(model.flame), cell_height=420),
                "<b>The astronaut's predicted head in 3D</b> (from <code>infer/astronaut/mesh.obj</code> and "
                "<code>params.npz</code>, drag to rotate): left with the predicted pose and expression, right the "
                "predicted identity alone (zero expression and pose). Look at the head's turn, the mouth and the "
                "eyelids, and at the face's proportions.")


def head_model_section(report, flame: FLAME, figures: dict) -> None:
    """The head model's figures and the renderer comparison (`head_model_figures`, `render_both`)."""
    report.section("5. The building blocks", f"The head model ({flame.name}; meshes in <code>meshes/</code>) and "
                   "the two renderers the method compares.")
    report.plot(figures["detail"], f"<b>The template</b> with its {flame.n_landmarks} landmarks (red, hover for "
                "their indices): the points the landmark loss compares with the 2D annotations.")
    report.plot(figures["grid"], "<b>Named expressions, joint rotations and random identities</b>: what the "
                "network's outputs (expression, pose, shape coefficients) do to the head.")
    report.plot(figures["renders"], "<b>One head, two renderers</b>: top, 2D Gaussian splatting of surfels rigged "
                "to the mesh (SHeaP's renderer); bottom, the soft mesh rasteriser (the baseline). Look for the same "
                f"silhouette (they agree on {100 * figures['agree']:.1f} % of pixels), depth and normals.")
