"""The `editgan` command line: the composition root of the project.

Subcommands:
    editgan up                                    gateway + one worker + embedded Redis on the shipped model
    editgan serve                                 the HTTP gateway only (needs REDIS_URL)
    editgan worker                                one RQ worker (needs REDIS_URL); SIGTERM requeues its job
    editgan healthcheck [--worker]                container health probe: exit 0 when healthy
    editgan invert|edit|apply|vectors ...         client commands against a running service (client/cli.py)
    editgan import-official RELEASE_DIR OUT_DIR   convert the official EditGAN release into a bundle
    editgan info BUNDLE                           print a bundle's spec summary as JSON
    editgan render BUNDLE OUT_DIR                 render samples: image, segmentation, uncertainty PNGs
    editgan bench [--only vector,jobs,...]        benchmarks: JSON on stdout, a dated row in bench/RESULTS.md
    editgan figure BUNDLE OUT.png --images ...    the README picture: inversion, painted edit, vector edits
    editgan train gan --recipe faces --out DIR    train (or resume) the demo GAN; stops cleanly on SIGTERM
    editgan train perceptual --out DIR            the domain-trained perceptual network
    editgan train encoder --gan DIR --out DIR     train (or resume) the image -> W+ encoder of a GAN run
    editgan train segmenter --gan DIR --out DIR   segmentation branch from 16 annotated images: a bundle
    editgan train vectors --bundle DIR            learn the named editing vectors into a bundle
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from client.cli import number  # the argparse number type both command sets use

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
    from engine.bundle import load_bundle
    from engine.images import colorize, image_to_uint8, save_png, uncertainty_to_uint8
    from engine.rendering import render
    from engine.timing import elapsed
    from workers.models import resolve_device

    device = resolve_device(args.device or "auto")
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
        timings.append(elapsed(start, bundle.device))
        stem = out / f"sample_{args.seed + i}"
        save_png(image_to_uint8(result.image)[0], stem.with_name(stem.name + "_image.png"))
        save_png(colorize(result.labels[0], bundle.spec.classes), stem.with_name(stem.name + "_mask.png"))
        assert result.uncertainty is not None  # rendered with it, the default
        save_png(uncertainty_to_uint8(result.uncertainty[0]), stem.with_name(stem.name + "_uncertainty.png"))
    print(json.dumps({"out_dir": str(out), "device": str(device), "render_seconds": [round(t, 3) for t in timings]}))
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
    from pydantic import ValidationError

    from engine.errors import EngineError
    from schemas.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:  # one line per setting, named as it is set: EDITGAN_PORT, not editgan_port
        lines = [f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise EngineError("invalid settings: " + "; ".join(lines)) from None
    return settings.model_copy(update=overrides) if overrides else settings


def _configure_logging(level: str, *, gateway: bool = False) -> None:
    """The root logger's format; in a gateway each line handled for a request ends with its id."""
    import logging

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt + ("%(request)s" if gateway else ""))
    if gateway:
        from service.request_id import RequestIdFilter

        for handler in logging.getLogger().handlers:
            handler.addFilter(RequestIdFilter())


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
    from service.request_id import uvicorn_log_config

    app = create_app(settings)

    class Gateway(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # uvicorn now waits for the open requests: answer the long polls instead of holding the exit.
            services = getattr(app.state, "services", None)
            if services is not None and services.job_events is not None:
                services.job_events.close_soon()

    print(f"editgan: serving on http://{settings.editgan_host}:{settings.editgan_port}", file=sys.stderr)
    config = uvicorn.Config(
        app,
        host=settings.editgan_host,
        port=settings.editgan_port,
        log_level=settings.editgan_log_level,
        log_config=uvicorn_log_config(),  # its lines, the access log's included, end with the request's id
        # uvicorn's own 5 s equals httpx's idle expiry: the two closed idle connections at the same moment,
        # and a load test lost a request to that race (a reset, no answer).
        timeout_keep_alive=settings.editgan_keep_alive,
    )
    Gateway(config).run()


def _serve(args: argparse.Namespace) -> int:
    settings = _settings()
    _configure_logging(settings.editgan_log_level, gateway=True)
    _exit_cleanly_on_signals()
    _run_gateway(settings)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from engine.errors import EngineError
    from workers.worker import run_worker

    settings = _settings()
    _configure_logging(settings.editgan_log_level)
    try:
        run_worker(settings, burst=args.burst, name=args.name)
    except (RedisConnectionError, RedisTimeoutError) as exc:  # after the connection's own minute of retries
        where = urlsplit(settings.redis_url or "")  # host and port only: the URL may hold a password
        raise EngineError(f"Redis at {where.hostname}:{where.port or 6379} is unreachable: {exc}") from None
    return 0


def _up(args: argparse.Namespace) -> int:
    """Embedded Redis (unless REDIS_URL is set), `--workers` worker processes, then the gateway in this one."""
    import os
    import subprocess

    from service.embedded import EmbeddedRedis
    from workers.models import check_models

    settings = _settings()
    _configure_logging(settings.editgan_log_level, gateway=True)
    _exit_cleanly_on_signals()
    check_models(settings.editgan_models_dir)  # fail now, with the path, if there is no model
    embedded = EmbeddedRedis(settings.editgan_data_dir) if settings.redis_url is None else None
    if embedded is not None:
        settings = settings.model_copy(update={"redis_url": embedded.url})
        print(f"editgan: embedded Redis (append-only) in {settings.editgan_data_dir}", file=sys.stderr)
    env = os.environ | {"REDIS_URL": str(settings.redis_url)}
    # `editgan worker` itself (logging configured as here), whichever way this process was started
    command = [sys.executable, "-m", "service.cli", "worker"]
    workers = [subprocess.Popen(command, env=env) for _ in range(args.workers)]
    try:
        _run_gateway(settings)
    finally:
        hurry = _hurry_on_signals()  # a second Ctrl-C must not cut the clean-up short and orphan Redis
        for proc in workers:
            proc.terminate()  # SIGTERM: the worker requeues a running job and exits
        deadline = time.monotonic() + 30
        for proc in workers:
            while proc.poll() is None and time.monotonic() < deadline and not hurry.is_set():
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if embedded is not None:
            embedded.close()
    return 0


def _hurry_on_signals() -> threading.Event:
    """From now on SIGTERM/SIGINT only set the returned event: the workers are then killed instead of awaited,
    and the embedded Redis is still shut down."""
    import signal

    hurry = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: hurry.set())
    return hurry


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
    except (OSError, ValueError) as exc:  # ValueError: a URL urllib cannot even parse
        print(f"editgan: {url}: {exc}", file=sys.stderr)
        return 1


def _stop_flag() -> dict[str, bool]:
    """SIGTERM/SIGINT set the flag; a training loop polls it, checkpoints and returns."""
    import signal

    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def _train_perceptual(args: argparse.Namespace) -> int:
    import torch

    from engine.domains import faces
    from engine.train.demo_bundle import PERCEPTUAL
    from engine.train.perceptual import PerceptualTrainConfig, save_trained, train_perceptual
    from engine.train.recipes import faces_labelled

    if args.threads:
        torch.set_num_threads(args.threads)
    train = PerceptualTrainConfig(steps=args.steps, batch_size=args.batch, seed=args.seed)

    def progress(step: int, numbers: dict[str, float]) -> None:
        shown = {k: round(v, 4) for k, v in numbers.items()}
        print(json.dumps({"step": step, "total": train.steps} | shown), flush=True)

    network, record = train_perceptual(PERCEPTUAL, faces_labelled, len(faces.CLASSES), train, progress=progress)
    save_trained(args.out, network, record)
    print(json.dumps(record), flush=True)
    return 0


def _train_encoder(args: argparse.Namespace) -> int:
    import torch

    from engine.perceptual import ConvPerceptual
    from engine.train.demo_bundle import PERCEPTUAL
    from engine.train.encoder import EncoderTrainConfig, train_encoder
    from engine.train.gan import export_generator, run_source
    from engine.train.perceptual import load_trained
    from engine.train.recipes import faces_labelled

    if args.threads:
        torch.set_num_threads(args.threads)
    stop = _stop_flag()
    if args.perceptual is not None:
        perceptual: ConvPerceptual = load_trained(args.perceptual)[0]
    else:
        torch.manual_seed(0)
        perceptual = ConvPerceptual(PERCEPTUAL).freeze()
    last = {"t": 0.0}

    def progress(step: int, total: int, numbers: dict[str, float]) -> None:
        if time.monotonic() - last["t"] >= args.log_seconds or step == total:
            last["t"] = time.monotonic()
            print(json.dumps({"total": total} | {k: round(v, 4) for k, v in numbers.items()}), flush=True)

    result = train_encoder(
        export_generator(args.gan),
        perceptual,
        lambda first, n: faces_labelled(first, n)[0],
        args.out,
        EncoderTrainConfig(total_kimg=args.kimg),
        source=run_source(args.gan),
        init_from=args.init_from,
        minutes=args.minutes,
        progress=progress,
        should_stop=lambda: stop["requested"],
    )
    print(json.dumps({k: result[k] for k in ("source", "step", "total_steps", "seconds")}), flush=True)
    return 0


def _train_segmenter(args: argparse.Namespace) -> int:
    from engine.train.demo_bundle import build_demo_bundle
    from engine.train.segmenter import SegmenterTrainConfig

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = SegmenterTrainConfig(
        num_models=args.models,
        hidden=args.hidden,
        epochs=args.epochs,
        invert_steps=args.invert_steps,
        seed=args.seed,
        max_pixel_error=args.max_pixel_error,
        mirror=args.mirror,
    )

    def progress(stage: str, done: int, total: int, numbers: dict[str, float]) -> None:
        shown = {k: round(v, 4) for k, v in numbers.items()}
        print(json.dumps({"stage": stage, "done": done, "total": total} | shown), flush=True)

    record = build_demo_bundle(
        args.gan,
        args.out,
        annotated=args.annotated,
        config=config,
        perceptual_dir=args.perceptual,
        encoder_dir=args.encoder,
        progress=progress,
        log=lambda m: print(m),
    )
    print(json.dumps(record), flush=True)
    return 0


def _train_vectors(args: argparse.Namespace) -> int:
    import torch

    from engine.bundle import load_bundle, save_bundle
    from engine.errors import EngineError
    from engine.train.vectors import learn_face_vectors

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    if bundle.examples is None or bundle.examples.shape[0] == 0:
        raise EngineError(f"{args.bundle} has no example latents to learn from (`editgan train segmenter` adds them)")
    sources = bundle.examples[: args.sources]
    # scales are calibrated on what the vectors were not learned from: the other inverted examples + samples
    psi = float(bundle.spec.defaults.get("sample", {}).get("truncation", 1.0))
    samples = bundle.generator.sample_w_plus(args.calibration_samples, seed=args.seed, psi=psi)
    calibration = torch.cat([bundle.examples[args.sources :], samples])
    learned = learn_face_vectors(
        bundle,
        sources,
        steps=args.steps,
        perceptual=bundle.perceptual(),
        calibration=calibration,
        joint_steps=args.joint_steps,
        log=print,
    )
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
    config = EvalConfig(
        images=args.images,
        edit_images=args.edit_images,
        invert_steps=args.invert_steps,
        ablation_images=args.ablation_images,
    )

    def progress(stage: str, done: int, total: int) -> None:
        print(f"editgan eval: {stage} {done}/{total}", file=sys.stderr, flush=True)

    print(json.dumps(evaluate_bundle(bundle, config, progress=progress), indent=1))
    return 0


def _figure(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from engine.bundle import load_bundle
    from engine.errors import InputError
    from engine.figure import edit_figure
    from engine.images import dilate, open_image
    from engine.train.vectors import FACE_EDITS

    if args.out.suffix.lower() not in Image.registered_extensions():  # before the minutes of work, not after
        raise InputError(f"{args.out}: name an image file (.png, .jpg, .webp), got {args.out.suffix or 'no suffix'!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    names = {c.name: c.id for c in bundle.spec.classes}
    if args.paint in FACE_EDITS:
        paint = FACE_EDITS[args.paint].operation
    elif args.paint.startswith("grow:") and args.paint[5:] in names:
        k = names[args.paint[5:]]

        def paint(labels: torch.Tensor) -> torch.Tensor:  # the class one pixel larger, over any neighbour
            return torch.where(dilate(labels == k, 1), torch.full_like(labels, k), labels)
    else:
        raise InputError(f"--paint must be one of {sorted(FACE_EDITS)} or grow:<class>, classes {sorted(names)}")
    vectors = []
    for term in args.vectors or [f"{name}:1" for name in sorted(bundle.vectors)]:
        name, _, scale = term.partition(":")
        try:
            vectors.append((name, float(scale or 1.0)))
        except ValueError:
            raise InputError(f"--vectors takes NAME:SCALE terms, got {term!r}") from None
    images = [open_image(path) for path in args.images]
    figure, unpainted = edit_figure(bundle, images, paint, args.paint.replace("_", " "), vectors, zoom=args.zoom)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    report = {"out": str(args.out), "size": list(figure.size), "rows": len(images), "unpainted_rows": unpainted}
    print(json.dumps(report))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from engine.errors import EngineError
    from schemas.settings import SHIPPED_MODELS
    from workers.models import resolve_device

    # bench/ is a tool of the checkout, like tests/: not installed, not in the image. Find it beside service/.
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "bench" / "__init__.py").is_file():
        raise EngineError(f"`editgan bench` runs from a checkout of the project; there is no bench/ in {checkout}")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from bench.context import Context
    from bench.results import DEFAULT_RESULTS
    from bench.runner import parse_sections, print_report, run_bench

    try:
        sections = parse_sections(args.only)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    if args.results is not None and args.results.is_dir():  # found out after the run, the figures were lost
        raise EngineError(f"--results {args.results} is a directory: name the Markdown file the row goes to")
    ctx = Context(
        quick=args.quick,
        model=args.model or SHIPPED_MODELS / "demo-faces",
        device=resolve_device(args.device),
        threads=args.threads,
        redis_url=args.redis_url,
        workdir=Path("."),  # replaced by a scratch directory for the run
        lpips_backbone=_settings().editgan_lpips_backbone,
        paper_size=args.paper_size,
        paper_steps=args.paper_steps,
        paper_precision=args.paper_precision,
        load_seconds=args.load_seconds,
    )
    report, ok = run_bench(ctx, sections, args.results or DEFAULT_RESULTS)
    print_report(report)
    return 0 if ok else 1


def _widths(text: str) -> tuple[int, int]:
    """`H1,H2` -> (H1, H2), both positive."""
    try:
        h1, h2 = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two widths H1,H2, got {text!r}") from None
    if h1 < 1 or h2 < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return h1, h2


POSITIVE_INT, COUNT = number(int, 0, strict=True), number(int, 0)
POSITIVE, NON_NEGATIVE = number(float, 0, strict=True), number(float, 0)
FINITE = number(float, -math.inf)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editgan", description="EditGAN service and model tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="gateway + worker(s) + embedded Redis (unless REDIS_URL is set)")
    p.add_argument("--workers", type=POSITIVE_INT, default=1, help="worker processes to start (default 1)")
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

    from client.cli import add_client_commands  # invert, edit, apply, vectors: the HTTP client's commands

    add_client_commands(sub)
    parser.set_defaults(loads_engine=True)  # the client's commands set False: they start without torch

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
    p.add_argument("--seed", type=int, default=0, help="first sample's seed (default 0); the next ones count up")
    p.add_argument("--count", type=POSITIVE_INT, default=1, help="samples to render (default 1)")
    p.add_argument("--truncation", type=FINITE, default=None, help="psi (default: the bundle's sample default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_render)

    p = sub.add_parser("figure", help="PNG of images through inversion, a painted edit and vector edits")
    p.add_argument("bundle", type=Path)
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("--images", type=Path, nargs="+", required=True, help="one row per image")
    p.add_argument("--paint", default="enlarge_eyes", help="a faces mask edit, or grow:<class name>")
    p.add_argument("--vectors", nargs="*", default=None, help="NAME:SCALE terms (default: every vector at 1)")
    p.add_argument("--zoom", type=POSITIVE_INT, default=2, help="pixels per model pixel (default 2)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_figure)

    p = sub.add_parser("eval", help="quality of a bundle on held-out procedural faces, as JSON")
    p.add_argument("bundle", type=Path)
    p.add_argument("--images", type=POSITIVE_INT, default=50, help="held-out images (inversion, KID, vectors)")
    p.add_argument("--edit-images", type=COUNT, default=10, help="images for the mask-driven optimisation edits")
    p.add_argument("--invert-steps", type=POSITIVE_INT, default=None, help="default: the bundle's")
    p.add_argument(
        "--ablation-images", type=COUNT, default=10, help="images also inverted with pixel MSE alone (0: skip)"
    )
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("bench", help="benchmarks: JSON on stdout, a dated row appended to bench/RESULTS.md")
    p.add_argument(
        "--only", default="vector,jobs,naive,precision,compile,paper", help="sections, comma-separated (default: all)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: few repetitions and steps, not figures to quote")
    p.add_argument("--model", type=Path, default=None, help="bundle directory (default: the shipped demo-faces)")
    p.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto (CUDA when present)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads, here and in the services started")
    p.add_argument("--results", type=Path, default=None, help="file the row is appended to (default: bench/RESULTS.md)")
    p.add_argument("--redis-url", default=None, help="Redis to use (default: an embedded one for the run)")
    p.add_argument(
        "--paper-size", type=int, choices=[64, 128, 256, 512], default=512, help="paper section canvas (< 512: smoke)"
    )
    p.add_argument("--paper-steps", type=POSITIVE_INT, default=None, help="paper section steps (default: 3, --quick 1)")
    p.add_argument(
        "--load-seconds", type=POSITIVE, default=None, help="vector section: seconds per load measurement (default 10)"
    )
    p.add_argument(
        "--paper-precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="paper section: also time bfloat16 (and TF32 on CUDA) against float32 (default: on CUDA only)",
    )
    p.set_defaults(func=_bench)

    train = sub.add_parser("train", help="train the networks of a bundle").add_subparsers(dest="what", required=True)
    p = train.add_parser("gan", help="train or resume a StyleGAN2 generator (checkpoints in --out)")
    p.add_argument("--recipe", choices=["faces"], default="faces", help="domain and architecture")
    p.add_argument("--out", type=Path, required=True, help="run directory; an existing checkpoint is resumed")
    p.add_argument("--kimg", type=POSITIVE, default=None, help="total length in thousands of images (all sessions)")
    p.add_argument("--minutes", type=POSITIVE, default=None, help="stop (with a checkpoint) after this much time")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--log-seconds", type=POSITIVE, default=30.0, help="seconds between progress lines")
    p.set_defaults(func=_train_gan)

    p = train.add_parser("perceptual", help="train the demo bundle's perceptual network on the domain's labels")
    p.add_argument("--recipe", choices=["faces"], default="faces", help="domain of the training images")
    p.add_argument("--out", type=Path, required=True, help="directory to write (replaced atomically)")
    p.add_argument("--steps", type=POSITIVE_INT, default=600, help="training steps (default 600)")
    p.add_argument("--batch", type=POSITIVE_INT, default=24, help="images per step (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic training data (default 0)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_train_perceptual)

    p = train.add_parser("encoder", help="train or resume the image -> W+ encoder of a GAN run (checkpoints in --out)")
    p.add_argument("--recipe", choices=["faces"], default="faces", help="domain of the real images")
    p.add_argument("--gan", type=Path, required=True, help="GAN run directory (its EMA generator is used)")
    p.add_argument("--out", type=Path, required=True, help="run directory; an existing checkpoint is resumed")
    p.add_argument("--perceptual", type=Path, default=None, help="`train perceptual` output (default: random CNN)")
    p.add_argument("--kimg", type=POSITIVE, default=30.0, help="total length in thousands of images (all sessions)")
    p.add_argument("--init-from", type=Path, default=None, help="start from another run's or a bundle's encoder")
    p.add_argument("--minutes", type=POSITIVE, default=None, help="stop (with a checkpoint) after this much time")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--log-seconds", type=POSITIVE, default=30.0, help="seconds between progress lines")
    p.set_defaults(func=_train_encoder)

    p = train.add_parser(
        "segmenter", help="segmentation branch from annotated images (embedded into W+), written as a bundle"
    )
    p.add_argument("--recipe", choices=["faces"], default="faces", help="domain of the annotated images")
    p.add_argument("--gan", type=Path, required=True, help="GAN run directory (its EMA generator is used)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced atomically)")
    p.add_argument("--annotated", type=POSITIVE_INT, default=16, help="annotated images (DatasetGAN/EditGAN: 16)")
    p.add_argument("--models", type=POSITIVE_INT, default=10, help="ensemble members")
    p.add_argument(
        "--hidden",
        type=_widths,
        default=None,
        help="members' hidden widths H1,H2 (default: the official 128,32; render time grows with models x H1)",
    )
    p.add_argument("--epochs", type=POSITIVE_INT, default=4, help="passes over every annotated pixel per member")
    p.add_argument("--invert-steps", type=POSITIVE_INT, default=300, help="W+ optimisation steps per annotated image")
    p.add_argument("--perceptual", type=Path, default=None, help="`train perceptual` output (default: random CNN)")
    p.add_argument("--encoder", type=Path, default=None, help="`train encoder` run of the same GAN (optional)")
    p.add_argument(
        "--max-pixel-error",
        type=NON_NEGATIVE,
        default=None,
        help="train only on pixels whose embedding is this close to the annotated image (mean |RGB| on [0, 1])",
    )
    p.add_argument(
        "--mirror",
        action="store_true",
        help="also embed each annotated image mirrored left-right (labels mirrored too): twice the pixels",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_train_segmenter)

    p = train.add_parser("vectors", help="learn the named editing vectors of the faces recipe into a bundle")
    p.add_argument("--bundle", type=Path, required=True, help="bundle to add the vectors to (rewritten atomically)")
    p.add_argument("--sources", type=POSITIVE_INT, default=8, help="example latents each vector is learned from")
    p.add_argument(
        "--calibration-samples", type=POSITIVE_INT, default=16, help="generator samples that calibrate scales"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration samples")
    p.add_argument("--steps", type=POSITIVE_INT, default=60, help="optimisation steps per source image")
    p.add_argument(
        "--joint-steps",
        type=COUNT,
        default=30,
        help="then updates of one offset fitted to every source's edit at once (0: the mean offset alone)",
    )
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_train_vectors)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.loads_engine:
        client_code: int = args.func(args)
        return client_code
    from engine.errors import EngineError

    try:
        code: int = args.func(args)
    except EngineError as exc:
        print(f"editgan: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be read or written: the OS's own words name it
        print(f"editgan: error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
