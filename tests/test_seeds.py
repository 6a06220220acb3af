"""Seeds: each seed's recipe (its run folder, the data kept fixed), mean +- std over fake Tables 1, and a killed run that continues."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from e3d2_hf import pipeline
from e3d2_hf.data.prepare import PrepareConfig
from e3d2_hf.evaluation.seeds import aggregate_seeds, format_seeds, seed_recipe, seed_variation
from e3d2_hf.evaluation.table_1 import describe_dances
from e3d2_hf.recipe import parse_recipe
from e3d2_hf.trainers.bc import BCTrainingConfig
from e3d2_hf.utils import E3D2Error

BASE = {"run_name": "tiny", "runs_dir": "runs", "seed": 0, "prepare": {"synthetic": 64}, "bc": {"hidden_size": 64}}


def test_each_seed_trains_in_its_own_run_folder_on_the_same_data(tmp_path):
    assert seed_recipe(BASE, 0) == {**BASE, "prepare": {"synthetic": 64, "seed": 0}}  # the base run folder: a finished run is reused
    one = seed_recipe(BASE, 1)
    assert (one["run_name"], one["seed"], one["prepare"], one["bc"]) == ("tiny_seed1", 1, {"synthetic": 64, "seed": 0}, {"hidden_size": 64})
    assert BASE["prepare"] == {"synthetic": 64}  # the base recipe is left as it was
    varied = seed_recipe(BASE, 2, vary_data=True)
    assert varied["prepare"] == {"synthetic": 64} and varied["seed"] == 2
    assert "the data stayed fixed (prepare seed 0" in seed_variation(BASE, False) and "the dataset" in seed_variation(BASE, True)

    recipe = tmp_path / "seed1.yaml"
    recipe.write_text(yaml.safe_dump(one))
    prepare, bc = parse_recipe(PrepareConfig, "prepare", [str(recipe)]), parse_recipe(BCTrainingConfig, "bc", [str(recipe)])
    assert (prepare.seed, prepare.run_dir, bc.seed, bc.output_dir) == (0, "runs/tiny_seed1", 1, "runs/tiny_seed1/bc")


@pytest.mark.parametrize(
    "section,problem",
    [
        ({"bc": {"output_dir": "runs/tiny/bc"}}, "section 'bc' sets 'output_dir', which every seed would share"),
        ({"eval": {"bc_path": "runs/tiny/bc"}}, "section 'eval' sets 'bc_path', which every seed would share"),
        ({"ppo": {"seed": 3}}, "section 'ppo' pins its seed \\(3\\); the seeds vary the top-level seed"),
    ],
)
def test_a_recipe_that_would_defeat_the_seeds_is_refused(section, problem):
    with pytest.raises(E3D2Error, match=f"recipes/x.yaml: {problem}"):
        seed_recipe({**BASE, **section}, 1, where="recipes/x.yaml")
    with pytest.raises(E3D2Error, match="section 'prepare' pins its seed"):
        seed_recipe({**BASE, "prepare": {"seed": 5}}, 1, vary_data=True)


def _table(fid_k: float, bc_fid_k: float, beat: bool = False) -> dict:
    rows = {"bc": {"FID_k": bc_fid_k, "BAS": 0.2, "learned_return": 10.0}, "e3d2": {"FID_k": fid_k, "BAS": 0.3, "learned_return": None}}
    return rows | ({"beat": {"FID_k": 1.0}} if beat else {}) | {"protocol": {"pieces": 44, "dance_seconds": None, "fid_div_seconds": 20.0, "bas_scope": "whole dance", "decoding": "greedy"}}


def _write(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table))
    return path


def test_mean_and_std_over_seeds_of_every_row_and_of_each_row_minus_bc(tmp_path):
    files = {seed: _write(tmp_path / f"s{seed}" / "metrics.json", _table(100.0 + 10 * seed, 90.0 + seed, beat=seed == 0)) for seed in (0, 1, 2)}
    result = aggregate_seeds(files, "training")
    e3d2 = result["rows"]["e3d2"]["FID_k"]
    assert (e3d2["mean"], e3d2["n"], e3d2["values"]) == (110.0, 3, [100.0, 110.0, 120.0]) and e3d2["std"] == pytest.approx(10.0)
    assert result["rows"]["bc"]["BAS"]["std"] == pytest.approx(0.0) and result["rows"]["bc"]["PFC"]["mean"] is None  # a metric no seed has
    difference = result["minus_bc"]["e3d2"]["FID_k"]
    assert difference["values"] == [10.0, 19.0, 28.0] and difference["mean"] == pytest.approx(19.0) and difference["std"] == pytest.approx(9.0)
    assert result["minus_bc"]["e3d2"]["learned_return"]["n"] == 0  # e3d2 has no learned return here
    assert set(result["rows"]) == {"bc", "e3d2"} and result["rows_not_in_every_seed"] == ["beat"]
    assert result["seeds"] == [0, 1, 2] and result["varies"] == "training" and result["protocol"]["pieces"] == 44
    markdown = format_seeds(result)
    assert markdown.startswith("Table 1 over 3 seeds (0, 1, 2): mean +- sample std. The seed varied training.")
    assert (
        "| E3D2 | 110.0 +- 10.0 |" in markdown
        and "| E3D2 | +19.0 +- 9.0 |" in markdown
        and "Rows left out (not in every seed's table): beat." in markdown
    )

    single = aggregate_seeds({0: files[0]}, "training")["rows"]["e3d2"]["FID_k"]
    assert single["mean"] == 100.0 and single["std"] is None
    assert "| E3D2 | 100.0 |" in format_seeds(aggregate_seeds({0: files[0]}, "training"))


def test_a_seed_without_its_table_is_named(tmp_path):
    files = {0: _write(tmp_path / "s0" / "metrics.json", _table(1.0, 2.0)), 2: tmp_path / "s2" / "metrics.json"}
    with pytest.raises(E3D2Error, match="s2/metrics.json: seed 2 has no Table 1 \\(its pipeline has not finished"):
        aggregate_seeds(files, "training")
    _write(files[2], {"protocol": {}})
    with pytest.raises(E3D2Error, match="s2/metrics.json: seed 2's Table 1 has no BC row"):
        aggregate_seeds(files, "training")
    files[2].write_text("{cut short")
    with pytest.raises(E3D2Error, match="s2/metrics.json: seed 2's Table 1 is not valid JSON"):
        aggregate_seeds(files, "training")


class FakeStage(pipeline.Stage):
    """A stage whose work is its done-marker (eval: a Table 1 whose numbers follow the run's seed); ppo can be made to fail once."""

    calls: list = []
    fail_ppo_of_seed: int | None = None

    def run(self, recipe: str, flags: list[str]) -> None:
        loaded = pipeline.load_recipe(recipe)
        FakeStage.calls.append((loaded["seed"], self.name))
        if self.name == "ppo" and loaded["seed"] == FakeStage.fail_ppo_of_seed:
            FakeStage.fail_ppo_of_seed = None
            raise KeyboardInterrupt  # killed
        marker = pipeline.run_dir_of(loaded) / self.done_marker
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(_table(100.0 + loaded["seed"], 90.0)) if self.name == "eval" else "{}")


def test_the_seeds_run_each_pipeline_and_a_killed_run_continues(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(
        pipeline, "STAGES", tuple(FakeStage(**{name: getattr(stage, name) for name in stage.__dataclass_fields__}) for stage in pipeline.STAGES)
    )
    FakeStage.calls, FakeStage.fail_ppo_of_seed = [], 2
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"run_name: toy\nruns_dir: {tmp_path / 'runs'}\nseed: 0\n")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_seeds(str(recipe), [0, 1, 2])
    stages = ["prepare", "vqvae", "bc", "demos", "reward", "ppo", "eval"]  # no ppo_beat section, no dance
    assert FakeStage.calls == [(0, name) for name in stages] + [(1, name) for name in stages] + [(2, name) for name in stages[:6]]
    assert not (tmp_path / "runs" / "toy_seeds" / "seeds.json").exists()

    FakeStage.calls = []
    result = pipeline.run_seeds(str(recipe), [0, 1, 2])
    assert FakeStage.calls == [(2, "ppo"), (2, "eval")]  # seeds 0 and 1 were done; seed 2 continues where it stopped
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["toy", "toy_seed1", "toy_seed2", "toy_seeds"]
    saved = json.loads((tmp_path / "runs" / "toy_seeds" / "seeds.json").read_text())
    assert saved == json.loads(json.dumps(result)) and saved["rows"]["e3d2"]["FID_k"]["mean"] == 101.0
    assert math.isclose(saved["rows"]["e3d2"]["FID_k"]["std"], 1.0) and "the data stayed fixed (prepare seed 0" in saved["varies"]
    seed_2 = yaml.safe_load((tmp_path / "runs" / "toy_seeds" / "recipes" / "toy_seed2.yaml").read_text())
    assert (seed_2["run_name"], seed_2["seed"], seed_2["prepare"]) == ("toy_seed2", 2, {"seed": 0})
    assert "| E3D2 | 101.0 +- 1.0 |" in (tmp_path / "runs" / "toy_seeds" / "seeds.md").read_text()
    with pytest.raises(E3D2Error, match="give distinct seeds"):
        pipeline.run_seeds(str(recipe), [1, 1])


def test_seeds_evaluated_under_different_protocols_are_refused(tmp_path):
    first = _write(tmp_path / "s0" / "metrics.json", _table(1.0, 2.0))
    other = _table(1.0, 2.0)
    other["protocol"] = {"pieces": 44, "eval_seconds": 10.0, "decoding": "greedy"}  # a Table 1 from before the whole-piece protocol
    second = _write(tmp_path / "s1" / "metrics.json", other)
    with pytest.raises(E3D2Error, match=r"s1/metrics.json was evaluated under another protocol than .*s0/metrics.json"):
        aggregate_seeds({0: first, 1: second}, "training")
    assert describe_dances(other["protocol"]) == "first 10.0 s of each piece (every metric on the cut)"
    assert describe_dances(_table(1.0, 2.0)["protocol"]) == "whole pieces (FID/Div: first 20.0 s, BAS: whole dance)"
