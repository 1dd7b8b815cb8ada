"""`sparseforge recipe check --plot`: the schedule drawn from the same rows as the table."""

import json
import sys

import pytest

from sparseforge.cli import main
from sparseforge.errors import DataError, SparseforgeError
from sparseforge.recipe import Recipe
from sparseforge.schedule import schedule_table
from sparseforge.schedule_plot import draw_schedule, plot_schedule, read_log_history

pytest.importorskip("matplotlib")  # an optional extra; the [dev] extra installs it

# The seed recipe's shape in 10 epochs: LR decay, GMP 0 -> 0.7, QAT with an observer freeze, KD.
SEED_SHAPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 10.0}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: 7.0, lr_func: linear, init_lr: 5.0e-5, final_lr: 0.0}
  - !LearningRateFunctionModifier {start_epoch: 7.0, end_epoch: 10.0, lr_func: linear, init_lr: 5.0e-5, final_lr: 0.0}
pruning_modifiers:
  - !GMPruningModifier
    params: ["re:.*weight"]
    start_epoch: 1.0
    end_epoch: 5.0
    update_frequency: 0.5
    init_sparsity: 0.0
    final_sparsity: 0.7
quantization_modifiers:
  - !QuantizationModifier {start_epoch: 7.0, disable_quantization_observer_epoch: 9.0}
distillation_modifiers:
  - !DistillationModifier {hardness: 1.0, temperature: 2.0}
"""


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "seed_shape.yaml"
    path.write_text(SEED_SHAPE)
    return path


def _rows():
    return schedule_table(Recipe.load(SEED_SHAPE), steps_per_epoch=10)


def test_figure_draws_the_tables_learning_rate_and_sparsity_targets():
    rows = _rows()
    fig = draw_schedule(rows, title="seed")
    lr_axis, sparsity_axis = fig.axes
    lr_line = lr_axis.lines[0]
    assert list(lr_line.get_xdata()) == [row.epoch for row in rows if row.learning_rate is not None]
    assert list(lr_line.get_ydata()) == [
        row.learning_rate for row in rows if row.learning_rate is not None
    ]
    target = sparsity_axis.lines[0]
    expected = [(row.epoch, row.values["sparsity"]) for row in rows if "sparsity" in row.values]
    assert list(zip(target.get_xdata(), target.get_ydata(), strict=True)) == expected
    assert max(target.get_ydata()) == pytest.approx(0.7)  # the recipe's final_sparsity
    assert (target.get_xdata()[0], target.get_ydata()[0]) == (1.0, 0.0)  # pruning starts at epoch 1
    legend = "\n".join(text.get_text() for text in fig.texts)
    qat_epoch = next(row.epoch for row in rows if "QAT starts" in row.events)
    assert f"epoch {qat_epoch:g}: " in legend and "QAT starts" in legend
    assert "QAT observers frozen" in legend


def test_measured_series_from_a_trainer_state_are_overlaid(tmp_path):
    history = [
        {"epoch": 0.5, "learning_rate": 4e-5, "sparsity/total": 0.0, "step": 5},
        {"epoch": 3.0, "learning_rate": 3e-5, "sparsity/total": 0.25, "step": 30},
        {"epoch": 3.0, "eval_loss": 0.3, "step": 30},  # an eval entry: no LR, no sparsity
        {"epoch": 4.0, "learning_rate": float("nan"), "step": 40},  # not finite: skipped
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    measured = read_log_history(tmp_path)
    assert measured["learning_rate"] == [(0.5, 4e-5), (3.0, 3e-5)]
    assert measured["sparsity/total"] == [(0.5, 0.0), (3.0, 0.25)]
    fig = draw_schedule(_rows(), measured=measured)
    labels = [line.get_label() for line in fig.axes[1].lines]
    measured_line = fig.axes[1].lines[labels.index("sparsity (measured, all pruned)")]
    assert list(measured_line.get_ydata()) == [0.0, 0.25]


def test_recipe_check_writes_the_png_only_when_complete(tmp_path, recipe_file, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    png = out_dir / "schedule.png"
    assert main(["recipe", "check", str(recipe_file), "--plot", str(png)]) == 0
    assert f"schedule plot written to {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out_dir.iterdir()] == ["schedule.png"]  # no temporary left
    missing_dir = tmp_path / "no" / "such" / "dir" / "schedule.png"
    assert main(["recipe", "check", str(recipe_file), "--plot", str(missing_dir)]) == 2
    assert "cannot write the plot to" in capsys.readouterr().err


def test_log_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no trainer_state.json at"):
        read_log_history(tmp_path)
    bad = tmp_path / "trainer_state.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a readable trainer_state.json"):
        read_log_history(bad)
    bad.write_text(json.dumps({"global_step": 3}))
    with pytest.raises(DataError, match="has no 'log_history' list"):
        read_log_history(bad)


def test_log_needs_plot(recipe_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["recipe", "check", str(recipe_file), "--log", "run"])
    assert exit_info.value.code == 2
    assert "--log goes with --plot" in capsys.readouterr().err


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SparseforgeError, match=r"pip install 'sparseforge\[plot\]'"):
        plot_schedule(_rows(), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_plot_rows_follow_the_cubic_ramp_and_show_the_lr_reset():
    """A short recipe (the seed scaled to half an epoch) drawn from whole-epoch rows was a straight
    line through its events: the cubic ramp looked linear and the QAT LR reset vanished."""
    recipe = Recipe.load(
        SEED_SHAPE.replace("update_frequency: 0.5", "update_frequency: 0.01")
        .replace("10.0", "0.5")
        .replace("7.0", "0.35")
        .replace("9.0", "0.45")
        .replace("start_epoch: 1.0", "start_epoch: 0.05")
        .replace("end_epoch: 5.0", "end_epoch: 0.25")
    )
    plain = schedule_table(recipe, steps_per_epoch=600)
    drawn = schedule_table(recipe, steps_per_epoch=600, samples=200)
    assert len(drawn) > len(plain) + 200 - 10
    by_epoch = {round(row.epoch, 6): row for row in drawn}
    # half way through the ramp a cubic schedule is far above the straight line (0.35)
    middle = by_epoch[round(0.5 * 75 / 200, 6)]  # epoch 0.1875, 69% of the ramp
    progress = (0.1875 - 0.05) / 0.2
    assert middle.values["sparsity"] == pytest.approx(0.7 * (1 - (1 - progress) ** 3), abs=0.02)
    # one step before the reset the rate is ~0; at the reset it is back to init_lr
    before = by_epoch[round(0.35 - 1 / 600, 6)]
    after = max(
        (row for row in drawn if 0.35 < row.epoch < 0.36), key=lambda row: row.learning_rate
    )
    assert before.learning_rate < 1e-6 and after.learning_rate == pytest.approx(5e-5, rel=0.05)
