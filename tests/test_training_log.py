"""Training telemetry: epoch bars with i/N, running loss and ETA; per-epoch lines in mfx.log; loss.png; TensorBoard."""

from __future__ import annotations

import importlib.util
import json

import torch
from click.testing import CliRunner

from medforensics_core.cli import cli
from test_compare import only_run_dir, small_dataset  # noqa: F401 - shared real-image dataset fixture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_epoch_bar_shows_i_of_n_running_loss_and_eta():
    from rich.console import Console

    from medforensics_core.engine.context import FitContext
    from medforensics_core.engine.progress import RichProgress

    terminal = Console(record=True, force_terminal=True, width=120)
    with RichProgress(terminal) as progress:
        ctx = FitContext(progress=progress)
        for epoch in ctx.epoch_range(3, "probe"):
            for _ in ctx.track(range(4), 4, f"probe epoch {epoch + 1}"):
                ctx.status("loss 0.6931")
            progress._progress.refresh()
            ctx.log_epoch("probe", epoch + 1, 3, loss=0.5 - 0.1 * epoch, val_acc=0.75)
            progress._progress.refresh()
    text = terminal.export_text()
    assert "probe epochs" in text and "1/3" in text and "2/3" in text
    assert "loss 0.6931" in text and "loss 0.4000, val_acc 0.7500" in text
    assert "-:--:--" in text or "0:00:0" in text  # the ETA column
    assert [r["epoch"] for r in ctx.history] == [1, 2, 3] and ctx.history[-1]["loss"] == 0.3


def test_compare_logs_every_epoch_and_draws_loss_png(small_dataset, tmp_path):  # noqa: F811
    torch.set_num_threads(1)
    result = CliRunner().invoke(cli, ["compare", "dski", "--data", str(small_dataset), "--preset", "tiny",
                                      "--epochs", "3", "--out", str(tmp_path), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path)
    log = (run / "mfx.log").read_text()
    for epoch in (1, 2, 3):
        assert f"dski epoch {epoch}/3: loss " in log
    history = json.loads((run / "report.json").read_text())["detectors"]["dski"]["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3] and all(r["loss"] > 0 for r in history)
    assert (run / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert "loss.png" in (run / "report.html").read_text()


def test_tensorboard_logging_when_installed_one_line_otherwise(small_dataset, tmp_path):  # noqa: F811
    args = ["compare", "dski", "--data", str(small_dataset), "--preset", "tiny", "--epochs", "2",
            "--out", str(tmp_path), "--n-boot", "20", "--log", "tensorboard"]
    result = CliRunner().invoke(cli, args)
    if importlib.util.find_spec("tensorboard") is None:
        assert result.exit_code == 2 and "pip install tensorboard" in result.output
        assert not list(tmp_path.iterdir())  # refused before any run directory is made
        return
    assert result.exit_code == 0, result.output
    events = list((only_run_dir(tmp_path) / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_the_benchmark_build_inside_compare_gets_the_runs_progress_display(monkeypatch, tmp_path):
    """Without --data, compare builds the benchmark on first use: the build draws on compare's progress bars."""
    import medforensics_core.benchmark as benchmark
    from medforensics_core.engine.compare import plan

    seen = {}

    def fake_build(quick=False, **kwargs):
        seen.update(kwargs, quick=quick)
        return tmp_path

    monkeypatch.setattr(benchmark, "default_dataset", fake_build)

    def display(iterable, total=None, description=""):
        return iter(iterable)

    assert plan.resolve_data(None, quick=True, progress=display) == (tmp_path, True)
    assert seen == {"progress": display, "quick": True}


def test_run_epoch_clips_each_step_to_max_grad_norm_and_reports_the_unclipped_norms():
    """A batch whose gradient norm is ~100 moves SGD weights by at most lr x max_grad_norm; 0 leaves it alone."""
    from medforensics_core.engine.context import FitContext
    from medforensics_core.engine.training import run_epoch

    inputs = torch.full((4, 3), 50.0)
    labels = torch.zeros(4, dtype=torch.long)  # confident wrong logits: a large gradient

    def one_step(max_grad_norm):
        model = torch.nn.Linear(3, 1)
        with torch.no_grad():
            model.weight.fill_(1.0)
            model.bias.fill_(0.0)
        ctx = FitContext(seed=0)
        loader = ctx.tensor_loader(inputs, labels, 4, shuffle=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        norms: list[float] = []
        run_epoch(model, loader, optimizer, ctx, max_grad_norm=max_grad_norm, grad_norms=norms)
        step = torch.cat([(model.weight - 1.0).reshape(-1), model.bias.reshape(-1)]).detach()
        return float(step.norm()), norms

    clipped, clipped_norms = one_step(1.0)
    free, free_norms = one_step(0.0)
    assert clipped_norms == free_norms and clipped_norms[0] > 50  # the norm before clipping, both times
    assert abs(clipped - 0.1 * 1.0) < 1e-5  # lr x max_grad_norm
    assert abs(free - 0.1 * free_norms[0]) < 1e-3  # unclipped: lr x the full norm


def test_measuring_gradient_norms_without_clipping_leaves_training_bit_identical():
    """grad_norms with max_grad_norm 0 only reads the gradients: the same weights as a run that does not
    measure, and an infinite gradient entry stays where it is instead of turning every gradient into NaN."""
    from medforensics_core.engine.context import FitContext
    from medforensics_core.engine.training import clip_or_measure, run_epoch

    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(32, 3, generator=generator), (torch.rand(32, generator=generator) > 0.5).long()

    def trained(measure: bool):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        ctx = FitContext(seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        norms: list[float] = []
        for epoch in range(3):
            loader = ctx.tensor_loader(inputs, labels, 8, shuffle=True, epoch_offset=epoch)
            run_epoch(model, loader, optimizer, ctx, grad_norms=norms if measure else None)
        return model.state_dict(), norms

    (measured, norms), (plain, _) = trained(True), trained(False)
    assert all(torch.equal(measured[k], plain[k]) for k in plain) and len(norms) == 12 and min(norms) > 0

    weights = torch.nn.Parameter(torch.zeros(3))
    weights.grad = torch.tensor([1.0, float("inf"), 2.0])
    assert clip_or_measure([weights], 0.0) == float("inf")
    assert weights.grad[0] == 1.0 and weights.grad[2] == 2.0  # untouched, not NaN
