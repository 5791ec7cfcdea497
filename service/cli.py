"""The `editgan` command line: the composition root of the project.

Subcommands:
    editgan up                                    gateway + one worker + embedded Redis on the shipped model
    editgan serve                                 the HTTP gateway only (needs REDIS_URL)
    editgan worker                                one RQ worker (needs REDIS_URL); SIGTERM requeues its job
    editgan healthcheck [--worker]                container health probe: exit 0 when healthy
    editgan import-official RELEASE_DIR OUT_DIR   convert the official EditGAN release into a bundle
    editgan info BUNDLE                           print a bundle's spec summary as JSON
    editgan render BUNDLE OUT_DIR                 render samples: image, segmentation, uncertainty PNGs
    editgan train gan --recipe faces --out DIR    train (or resume) the demo GAN; stops cleanly on SIGTERM
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError

if TYPE_CHECKING:
    from schemas.settings import Settings


def _import_official(args: argparse.Namespace) -> int:
    from engine.official import import_official

    start = time.perf_counter()
    spec = import_official(args.release_dir, args.out_dir, name=args.name)
    print(
        json.dumps(
            {
                "bundle": str(args.out_dir),
                "name": spec.name,
                "resolution": spec.resolution,
                "classes": len(spec.classes),
                "classifiers": spec.segmenter.num_models,
                "vectors": sorted(spec.vectors),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from engine.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify=not args.no_verify)
    spec = bundle.spec
    params = {
        name: sum(p.numel() for p in net.parameters())
        for name, net in (("generator", bundle.generator), ("segmenter", bundle.segmenter), ("encoder", bundle.encoder))
        if net is not None
    }
    print(
        json.dumps(
            {
                "name": spec.name,
                "version": spec.version,
                "resolution": spec.resolution,
                "n_latent": spec.n_latent,
                "feature_dim": spec.generator.feature_dim,
                "classes": [c.name for c in spec.classes],
                "regions": spec.regions,
                "vectors": sorted(bundle.vectors),
                "examples": 0 if bundle.examples is None else int(bundle.examples.shape[0]),
                "parameters": params,
            },
            indent=1,
        )
    )
    return 0


def _render(args: argparse.Namespace) -> int:
    import torch

    from engine.bundle import load_bundle
    from engine.images import colorize, image_to_uint8, save_png, uncertainty_to_uint8
    from engine.rendering import render

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bundle = load_bundle(args.bundle, device)
    psi = (
        args.truncation
        if args.truncation is not None
        else bundle.spec.defaults.get("sample", {}).get("truncation", 1.0)
    )
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = []
    for i in range(args.count):
        w = bundle.generator.sample_w_plus(1, seed=args.seed + i, psi=psi)
        start = time.perf_counter()
        result = render(bundle, w)
        timings.append(time.perf_counter() - start)
        stem = out / f"sample_{args.seed + i}"
        save_png(image_to_uint8(result.image)[0], stem.with_name(stem.name + "_image.png"))
        save_png(colorize(result.labels[0], bundle.spec.classes), stem.with_name(stem.name + "_mask.png"))
        save_png(uncertainty_to_uint8(result.uncertainty[0]), stem.with_name(stem.name + "_uncertainty.png"))
    print(json.dumps({"out_dir": str(out), "device": device, "render_seconds": [round(t, 3) for t in timings]}))
    return 0


def _train_gan(args: argparse.Namespace) -> int:
    import signal

    from engine.train.gan import train_gan
    from engine.train.recipes import RECIPES

    make_config, data = RECIPES[args.recipe]
    overrides = {"total_kimg": args.kimg} if args.kimg is not None else {}
    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["requested"] = True  # finish the step, checkpoint, exit

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    last = {"t": 0.0}

    def progress(step: int, kimg: float, metrics: dict[str, float]) -> None:
        if time.monotonic() - last["t"] >= args.log_seconds:
            last["t"] = time.monotonic()
            shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, int | float)}
            print(json.dumps({"step": step, "kimg": round(kimg, 3)} | shown), flush=True)

    result = train_gan(
        make_config(**overrides),
        data,
        args.out,
        progress=progress,
        should_stop=lambda: stop["requested"],
        max_seconds=args.minutes * 60 if args.minutes is not None else None,
        num_threads=args.threads,
    )
    print(json.dumps({"status": result.status, "step": result.step, "kimg": round(result.kimg, 3)}), flush=True)
    return 0


def _settings(**overrides: object) -> Settings:
    from schemas.settings import Settings

    settings = Settings()
    return settings.model_copy(update=overrides) if overrides else settings


def _configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _exit_cleanly_on_signals() -> None:
    """SIGTERM/SIGINT end the process with status 0 through the normal `finally` paths.

    uvicorn shuts down gracefully on these signals, then re-raises them with the previous handler in place;
    without this one that would kill the process before `editgan up` stops its worker and Redis.
    """
    import signal

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)


def _run_gateway(settings: Settings) -> None:
    import uvicorn

    from service.app import create_app

    app = create_app(settings)
    print(f"editgan: serving on http://{settings.editgan_host}:{settings.editgan_port}", file=sys.stderr)
    uvicorn.run(app, host=settings.editgan_host, port=settings.editgan_port, log_level=settings.editgan_log_level)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings()
    _configure_logging(settings.editgan_log_level)
    _exit_cleanly_on_signals()
    _run_gateway(settings)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.worker import run_worker

    settings = _settings()
    _configure_logging(settings.editgan_log_level)
    run_worker(settings, burst=args.burst, name=args.name)
    return 0


def _up(args: argparse.Namespace) -> int:
    """Embedded Redis (unless REDIS_URL is set), `--workers` worker processes, then the gateway in this one."""
    import os
    import subprocess

    from service.embedded import EmbeddedRedis
    from workers.models import bundle_dirs

    settings = _settings()
    _configure_logging(settings.editgan_log_level)
    _exit_cleanly_on_signals()
    bundle_dirs(settings.editgan_models_dir)  # fail now, with the path, if there is no model
    embedded = EmbeddedRedis(settings.editgan_data_dir) if settings.redis_url is None else None
    if embedded is not None:
        settings = settings.model_copy(update={"redis_url": embedded.url})
        print(f"editgan: embedded Redis (append-only) in {settings.editgan_data_dir}", file=sys.stderr)
    env = os.environ | {"REDIS_URL": str(settings.redis_url)}
    workers = [subprocess.Popen([sys.executable, "-m", "workers"], env=env) for _ in range(args.workers)]
    try:
        _run_gateway(settings)
    finally:
        for proc in workers:
            proc.terminate()  # SIGTERM: the worker requeues a running job and exits
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if embedded is not None:
            embedded.close()
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when healthy: the gateway answers /healthz, or (--worker) a worker of this host is registered."""
    import socket
    import urllib.request

    settings = _settings()
    if args.worker:
        from redis import Redis
        from rq import Worker

        if settings.redis_url is None:
            print("editgan: REDIS_URL is not set", file=sys.stderr)
            return 1
        try:
            with Redis.from_url(settings.redis_url, socket_timeout=3) as redis:
                hosts = {w.hostname for w in Worker.all(connection=redis)}
        except Exception as exc:
            print(f"editgan: redis unreachable: {exc}", file=sys.stderr)
            return 1
        return 0 if socket.gethostname() in hosts else 1
    url = args.url or f"http://127.0.0.1:{settings.editgan_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"editgan: {url}: {exc}", file=sys.stderr)
        return 1


def _train_segmenter(args: argparse.Namespace) -> int:
    from engine.train.demo_bundle import build_demo_bundle
    from engine.train.segmenter import SegmenterTrainConfig

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = SegmenterTrainConfig(
        num_models=args.models, epochs=args.epochs, invert_steps=args.invert_steps, seed=args.seed
    )

    def progress(stage: str, done: int, total: int, numbers: dict[str, float]) -> None:
        shown = {k: round(v, 4) for k, v in numbers.items()}
        print(json.dumps({"stage": stage, "done": done, "total": total} | shown), flush=True)

    record = build_demo_bundle(
        args.gan, args.out, annotated=args.annotated, config=config, progress=progress, log=lambda m: print(m)
    )
    print(json.dumps(record), flush=True)
    return 0


def _train_vectors(args: argparse.Namespace) -> int:
    import torch

    from engine.bundle import load_bundle, save_bundle
    from engine.train.vectors import learn_face_vectors

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    if bundle.examples is None or bundle.examples.shape[0] == 0:
        raise EngineError(f"{args.bundle} has no example latents to learn from (`editgan train segmenter` adds them)")
    sources = bundle.examples[: args.sources]
    learned = learn_face_vectors(bundle, sources, steps=args.steps, perceptual=bundle.perceptual(), log=print)
    for name, (delta, meta) in learned.items():
        bundle.vectors[name] = delta
        bundle.spec.vectors[name] = meta
    save_bundle(bundle, args.bundle)
    print(json.dumps({name: meta["learned_from"] for name, (_, meta) in learned.items()}), flush=True)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from engine.bundle import load_bundle
    from engine.evaluate import EvalConfig, evaluate_bundle

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    config = EvalConfig(images=args.images, edit_images=args.edit_images, invert_steps=args.invert_steps)

    def progress(stage: str, done: int, total: int) -> None:
        print(f"editgan eval: {stage} {done}/{total}", file=sys.stderr, flush=True)

    print(json.dumps(evaluate_bundle(bundle, config, progress=progress), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editgan", description="EditGAN service and model tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="gateway + worker(s) + embedded Redis (unless REDIS_URL is set)")
    p.add_argument("--workers", type=int, default=1, help="worker processes to start (default 1)")
    p.set_defaults(func=_up)

    p = sub.add_parser("serve", help="run the HTTP gateway (settings from the environment; needs REDIS_URL)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run one RQ worker with the models loaded (needs REDIS_URL)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--name", default=None, help="worker name (default: rq's)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("healthcheck", help="exit 0 when the local gateway (or --worker) is healthy")
    p.add_argument("--worker", action="store_true", help="check that a worker of this host is registered")
    p.add_argument("--url", default=None, help="URL to probe (default: http://127.0.0.1:$EDITGAN_PORT/healthz)")
    p.set_defaults(func=_healthcheck)

    p = sub.add_parser("import-official", help="convert an official EditGAN release directory into a bundle")
    p.add_argument("release_dir", type=Path, help="root of the release (holds checkpoint/, static/, experiments/)")
    p.add_argument("out_dir", type=Path, help="bundle directory to write (replaced atomically if present)")
    p.add_argument("--name", default=None, help="bundle name (default: the release's category, e.g. car)")
    p.set_defaults(func=_import_official)

    p = sub.add_parser("info", help="summarise a bundle as JSON")
    p.add_argument("bundle", type=Path)
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the weight files")
    p.set_defaults(func=_info)

    p = sub.add_parser("render", help="render random samples with segmentation and uncertainty PNGs")
    p.add_argument("bundle", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--truncation", type=float, default=None, help="psi (default: the bundle's sample default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_render)

    p = sub.add_parser("eval", help="quality of a bundle on held-out procedural faces, as JSON")
    p.add_argument("bundle", type=Path)
    p.add_argument("--images", type=int, default=50, help="held-out images (inversion, KID, vectors)")
    p.add_argument("--edit-images", type=int, default=10, help="images for the mask-driven optimisation edits")
    p.add_argument("--invert-steps", type=int, default=None, help="default: the bundle's")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_eval)

    train = sub.add_parser("train", help="train the networks of a bundle").add_subparsers(dest="what", required=True)
    p = train.add_parser("gan", help="train or resume a StyleGAN2 generator (checkpoints in --out)")
    p.add_argument("--recipe", choices=["faces"], default="faces", help="domain and architecture")
    p.add_argument("--out", type=Path, required=True, help="run directory; an existing checkpoint is resumed")
    p.add_argument("--kimg", type=float, default=None, help="total length in thousands of images (over all sessions)")
    p.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this much time")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--log-seconds", type=float, default=30.0, help="seconds between progress lines")
    p.set_defaults(func=_train_gan)

    p = train.add_parser(
        "segmenter", help="segmentation branch from annotated images (embedded into W+), written as a bundle"
    )
    p.add_argument("--recipe", choices=["faces"], default="faces", help="domain of the annotated images")
    p.add_argument("--gan", type=Path, required=True, help="GAN run directory (its EMA generator is used)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced atomically)")
    p.add_argument("--annotated", type=int, default=16, help="annotated images (DatasetGAN/EditGAN: 16)")
    p.add_argument("--models", type=int, default=10, help="ensemble members")
    p.add_argument("--epochs", type=int, default=4, help="passes over every annotated pixel per member")
    p.add_argument("--invert-steps", type=int, default=300, help="W+ optimisation steps per annotated image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_train_segmenter)

    p = train.add_parser("vectors", help="learn the named editing vectors of the faces recipe into a bundle")
    p.add_argument("--bundle", type=Path, required=True, help="bundle to add the vectors to (rewritten atomically)")
    p.add_argument("--sources", type=int, default=4, help="example latents each vector is learned from")
    p.add_argument("--steps", type=int, default=60, help="optimisation steps per source image")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_train_vectors)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except EngineError as exc:
        print(f"editgan: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
