"""The ``paretoslider`` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from infra.config import ConfigError, Config, dump_config, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="ParetoSlider on Ray: one preference-conditioned model, a slider over rewards.")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML preset (default: embedded toy2d)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Dotted override, e.g. learner.lr=1e-4")]


def _load(config: Path | None, overrides: list[str] | None, extra: list[str] | None = None) -> Config:
    try:
        return load_config(config, (overrides or []) + (extra or []))
    except ConfigError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command()
def train(config: ConfigOpt = None, set_: SetOpt = None,
          resume: Annotated[bool, typer.Option(help="Continue the run in run_dir from its last checkpoint")] = False,
          address: Annotated[Optional[str], typer.Option(help="Ray address (auto, ray://host:10001)")] = None,
          progress: Annotated[bool, typer.Option(help="Show progress bars")] = True,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; load no weights")] = False
          ) -> None:
    """Train one preference-conditioned model with multi-objective RL (pre-trains the base if missing)."""
    cfg = _load(config, set_, [f"ray.address={address}"] if address else None)
    if dry_run:
        from pipelines.plan import describe_plan

        try:
            typer.echo(describe_plan(cfg))
        except ValueError as err:
            typer.secho(f"invalid plan: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        return
    from pipelines.train import train as run_train

    try:
        run_train(cfg, resume=resume, progress=progress)
    except FileExistsError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command()
def pretrain(config: ConfigOpt = None, set_: SetOpt = None,
             out: Annotated[Optional[Path], typer.Option(help="Where to save (default: pretrain.checkpoint)")] = None
             ) -> None:
    """Pre-train the base flow-matching model (toy2d: a 2-D Gaussian ring; sd3 / flux_kontext: the shapes world)."""
    cfg = _load(config, set_)
    from pipelines.pretrain import pretrain_base

    pretrain_base(cfg, out)


@app.command("show-config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (preset + overrides) as YAML."""
    typer.echo(dump_config(_load(config, set_)))


@app.command("config-reference")
def config_reference() -> None:
    """Print the configuration reference (every field, its type, default and docstring) as Markdown."""
    from pipelines.config_reference import render_reference

    typer.echo(render_reference(), nl=False)


@app.command()
def register(run: Annotated[Path, typer.Argument(help="Training run directory (config.yaml + checkpoints/)")],
             name: Annotated[Optional[str], typer.Option(help="Registered-model name (default: registry.model_name or the run's name)")] = None,
             tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow store (default: the run's tracking.tracking_uri)")] = None
             ) -> None:
    """Log a run's EMA model to MLflow as a pyfunc model and register a new version."""
    from pipelines.registry import register_model

    version = register_model(run, name, tracking_uri)
    typer.echo(f"registered models:/{version.name}/{version.version}")


@app.command()
def serve(model: Annotated[str, typer.Option("--model", "-m", help="models:/NAME/VERSION, runs:/ID/slider_model, or a run directory")],
          config: ConfigOpt = None, set_: SetOpt = None,
          address: Annotated[Optional[str], typer.Option(help="Ray address (auto, ray://host:10001)")] = None) -> None:
    """Serve a trained slider: POST /v1/generate, GET /v1/objectives, and the slider page at /."""
    cfg = _load(config, set_, [f"ray.address={address}"] if address else None)
    import time

    from pipelines.serve import deploy_slider

    try:
        endpoint = deploy_slider(cfg, model)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(f"serving {model} at {endpoint.url}/ (API: {endpoint.url}/docs); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        endpoint.close()


@app.command()
def evaluate(config: ConfigOpt = None, set_: SetOpt = None,
             run_dir: Annotated[Optional[Path], typer.Option(help="Trained run (default: run_dir of the config)")] = None,
             weights: Annotated[str, typer.Option(help="Which weights: ema, trainable or old")] = "ema") -> None:
    """Sweep a trained model over the preference grid: means, intervals, hypervolume, monotonicity, drift."""
    cfg = _load(config, set_)
    if weights not in ("ema", "trainable", "old"):
        typer.secho(f"--weights must be one of 'ema', 'trainable', 'old' (got {weights!r})", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    from pipelines.evaluate import evaluate_run

    try:
        evaluate_run(cfg, run_dir or Path(cfg.run_dir), weights)
    except FileNotFoundError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("compare")
def compare_cmd(config: ConfigOpt = None, set_: SetOpt = None,
                seeds: Annotated[str, typer.Option(help="Comma-separated training seeds, e.g. 0,1,2")] = "0",
                progress: Annotated[bool, typer.Option(help="Show progress bars")] = True) -> None:
    """Train missing baselines, evaluate every method with shared seeds and reference point, write the tables."""
    cfg = _load(config, set_)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        seed_list = []
    if not seed_list:
        typer.secho(f"--seeds must be comma-separated integers, e.g. 0,1,2 (got {seeds!r})", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    from pipelines.compare import compare

    try:
        compare(cfg, seed_list, progress)
    except FileExistsError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def main() -> None:
    """The console script (``paretoslider``): Hugging Face tokenizers' thread pool must be off before
    Ray forks workers, or every worker warns and may deadlock."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
