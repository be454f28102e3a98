"""benchmarks/ablation.py and ablation_report.py: each arm's training config (only its overrides differ), the
table and plot from a fabricated ablation.json, the generated section of a results file, and (slow) a tiny
end-to-end sweep."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ablation import ARMS, arm_configs, main, parse_sets, train_flags  # noqa: E402
from benchmarks.ablation_report import BEGIN, END, markdown, replace_section, update_report, write_plot  # noqa: E402
from benchmarks.learning_proof import summary  # noqa: E402


def _flat(config) -> dict:
    """asdict of a TrainConfig with nested fields as dotted keys."""
    def walk(values, prefix=""):
        for key, value in values.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(dataclasses.asdict(config)))


def test_each_arm_differs_from_the_method_only_in_its_overrides(tmp_path):
    common = parse_sets(["loss.landmarks=10", "steps=3", "model.landmark-input=false", "optim.betas=0.8,0.95"])
    assert common == {"loss.landmarks": "10", "steps": "3", "model.landmark_input": "false",
                      "optim.betas": "0.8,0.95"}
    configs = {arm: _flat(c) for arm, c in arm_configs("ci", tmp_path, list(ARMS), common).items()}
    from sheap_lite.config import PRESETS

    preset = _flat(PRESETS["ci"])
    changed = {k for k in preset if preset[k] != configs["2dgs"][k]}
    assert changed == {"data.roots", "loss.landmarks", "steps", "model.landmark_input", "optim.betas"}
    assert configs["2dgs"]["loss.landmarks"] == 10 and configs["2dgs"]["optim.betas"] == (0.8, 0.95)
    assert configs["2dgs"]["model.landmark_input"] is False and configs["2dgs"]["renderer"] == "2dgs"
    expected = {"2dgs_no_geometry": {"loss.surfel_normal": 0, "loss.mesh_depth": 0, "loss.normal_consistency": 0,
                                     "loss.depth_distortion": 0},
                "mesh": {"renderer": "mesh"}, "landmarks": {"renderer": "none"}}
    for arm, values in expected.items():
        differs = {k: configs[arm][k] for k in configs[arm] if configs[arm][k] != configs["2dgs"][k]}
        assert differs == values, arm
    assert preset["loss.mesh_coverage"] > 0 and configs["2dgs_no_geometry"]["loss.mesh_coverage"] == \
        preset["loss.mesh_coverage"]  # not a geometry term: it stays on


def test_overrides_are_checked_and_become_tyro_flags():
    assert train_flags({"loss.surfel_normal": "0", "amp": "False", "model.landmark_input": "true"}) == \
        ["--loss.surfel-normal", "0", "--no-amp", "--model.landmark-input"]
    for bad, message in (("steps", "expected key=value"), ("seed=3", "--seeds"), ("renderer=mesh", "the arms"),
                         ("=4", "expected key=value")):
        with pytest.raises(ValueError, match=message):
            parse_sets([bad])


def _fabricated() -> dict:
    """Two arms × two seeds with round numbers, as ablation.py writes them."""
    runs = []
    for arm, neutral in (("2dgs", (1.0, 2.0)), ("mesh", (3.0, 3.0))):
        for seed, value in enumerate(neutral):
            runs.append({"arm": arm, "seed": seed, "run": f"out/{arm}/seed{seed}", "train_minutes": 10.0 + seed,
                         "neutral_median_mm": value - 0.5, "neutral_mean_mm": value, "neutral_std_mm": 0.5,
                         "neutral_mean_head_mm": 4.0, "neutral_ratio": value / 4.0,
                         "posed_median_mm": 2 * value, "posed_mean_mm": 2 * value, "posed_std_mm": 1.0,
                         "posed_mean_head_mm": 8.0, "posed_ratio": value / 4.0, "landmarks_px": 1.5,
                         "landmarks_mean_head_px": 3.0, "probe_accuracy": 0.4 + 0.2 * seed, "probe_mean_head": 0.1,
                         "probe_true_parameters": 0.9, "probe_chance": 1 / 11})
    return {"command": "python benchmarks/ablation.py --data D --out O", "preset": "small", "data": "D",
            "seeds": [0, 1], "steps": {"2dgs": 220, "mesh": 220}, "overrides": {"loss.landmarks": "10"},
            "arms": {"2dgs": {}, "mesh": {"renderer": "mesh"}}, "jobs": 2, "cores": 2, "wall_seconds": 1800.0,
            "runs": runs, "summary": {arm: summary([r for r in runs if r["arm"] == arm]) for arm in ("2dgs", "mesh")}}


def test_table_and_plot_from_a_fabricated_sweep(tmp_path):
    result = _fabricated()
    text = markdown(json.loads(json.dumps(result)), image="img/ablation.png")
    # 2dgs: neutral means 1 and 2 → 1.50 ± 0.50 (population std over seeds); posed 3.00 ± 1.00; probe 50 ± 10 %
    assert ("| 2DGS (the method) | 2 | 1.00 ± 0.50 / 1.50 ± 0.50 / 0.50 ± 0.00 | 3.00 ± 1.00 / 3.00 ± 1.00 / "
            "1.00 ± 0.00 | 1.50 ± 0.00 | 0.375 ± 0.125 | 0.375 ± 0.125 | 50.0 ± 10.0 | 10.5 ± 0.5 |") in text
    assert "| mesh rendering | 2 | 2.50 ± 0.00 / 3.00 ± 0.00 /" in text
    assert "neutral shape 4.00 mm, posed mesh (template at the true head pose) 8.00 mm" in text
    assert "chance 9.1 %, mean head (the majority class) 10.0 %, the true parameters 90.0 %" in text
    assert "wall time 30.0 min with `--jobs 2` on 2 cores" in text and "`loss.landmarks=10`" in text
    assert "![ablation: per-seed errors per arm](img/ablation.png)" in text
    write_plot(result, tmp_path / "ablation.png")
    image = Image.open(tmp_path / "ablation.png").convert("RGB")
    assert image.size[0] > 2 * image.size[1] * 0.9  # two panels side by side
    colours = {image.getpixel((x, y)) for x in range(image.size[0]) for y in range(image.size[1])}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # each arm's points drawn in its colour


def test_generated_section_is_replaced_and_the_prose_kept(tmp_path):
    prose = "# Results\n\nWhat the ablation is.\n\n"
    after = "\n## Reading it\n\nMore prose.\n"
    text = f"{prose}{BEGIN}\nold numbers\n{END}\n{after}"
    new = replace_section(text, "new table\n")
    assert new == f"{prose}{BEGIN}\nnew table\n{END}\n{after}"
    assert replace_section(new, "new table") == new  # idempotent
    assert replace_section("# Only prose\n", "table") == f"# Only prose\n\n{BEGIN}\ntable\n{END}\n"
    for broken in (f"{prose}{BEGIN}\nno end\n", f"{END}\n{BEGIN}\n"):
        with pytest.raises(ValueError, match="markers are broken"):
            replace_section(broken, "table")
    report = tmp_path / "docs" / "results.md"
    report.parent.mkdir()
    report.write_text(text)
    Image.new("RGB", (4, 4)).save(tmp_path / "plot.png")
    update_report(report, "the table", tmp_path / "plot.png")
    assert report.read_text() == f"{prose}{BEGIN}\nthe table\n{END}\n{after}"
    assert (report.parent / "img" / "ablation.png").read_bytes() == (tmp_path / "plot.png").read_bytes()
    report.write_text(f"{BEGIN}\n")  # broken: the file is left as it was
    with pytest.raises(ValueError):
        update_report(report, "the table", tmp_path / "plot.png")
    assert report.read_text() == f"{BEGIN}\n"


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path, capsys):
    """ci preset, 2 arms, 1 seed, 2 steps: trains, evaluates and probes through the CLIs; a rerun retrains nothing."""
    from sheap_lite.data.synthetic_write import main as synthetic_main

    data = tmp_path / "data"
    synthetic_main(["--out", str(data), "--preset", "ci", "--clips", "8", "--frames", "4", "--benchmark-clips", "1",
                    "--workers", "1", "--quiet"])
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--preset", "ci", "--seeds", "0", "--arms", "2dgs",
            "landmarks", "--set", "steps=2", "--jobs", "2", "--report", str(tmp_path / "results.md")]
    result = main(argv)
    assert [(r["arm"], r["seed"]) for r in result["runs"]] == [("2dgs", 0), ("landmarks", 0)]
    for record in result["runs"]:
        assert 0 <= record["probe_accuracy"] <= 1 and record["neutral_mean_mm"] > 0
    saved = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert saved["steps"] == {"2dgs": 2, "landmarks": 2} and saved["overrides"] == {"steps": "2"}
    assert "| landmarks only (no render) | 1 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "img" / "ablation.png").is_file() and "sweep wall time" in capsys.readouterr().out
    assert json.loads((tmp_path / "ablation.json").read_text())["runs"] == saved["runs"]  # kept beside the report
    checkpoint = tmp_path / "out" / "2dgs" / "seed0" / "checkpoint.pt"
    before = checkpoint.stat().st_mtime
    again = main(argv)
    assert checkpoint.stat().st_mtime == before and again["runs"] == result["runs"]
