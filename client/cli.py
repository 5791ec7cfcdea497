"""`editgan invert|edit|apply|vectors`: the service's client commands, on top of `EditganClient`.

Each command talks to `--url` (default: EDITGAN_URL, else http://127.0.0.1:8000) with `--api-key`
(default: EDITGAN_API_KEY). People get a progress bar on stderr and a short summary; `--json` prints the
API's own answer on stdout instead: the finished job as `GET /jobs/{id}` returns it (invert, edit, apply
with refinement), else the response body. Exit status: 0 done; 1 the service refused or the job failed
(`code: message` on stderr, and with `--json` the error as JSON on stdout); 2 a usage error (a bad argument
or service URL, nothing sent) or a local file could not be read or written; 3 no answer, or `--timeout`
passed (the job goes on); 130 Ctrl-C, which cancels the job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from client.api import EditganClient
from client.errors import ApiError, EditganError, InvalidUrlError, JobFailedError, TransportError, WaitTimeoutError
from schemas.catalog import VectorInfo
from schemas.edits import Fit, ImageLinks, InvertResult, OptimizeEditResult, VectorEditResult
from schemas.jobs import JobAccepted, JobInfo, JobStatus
from schemas.settings import ClientSettings

EXIT_REFUSED, EXIT_FILE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130


class InterruptedJobError(EditganError):
    """Ctrl-C while waiting: the job was cancelled, since nobody waits for its result any more."""

    code = "cancelled"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"interrupted; job {job_id} cancelled")
        self.job_id = job_id


@dataclass
class Answer:
    """What a command prints: `data` with --json, `text` otherwise."""

    data: BaseModel | dict[str, Any]
    text: str


Command = Callable[[EditganClient, argparse.Namespace], Answer]
R = TypeVar("R", bound=BaseModel)


class ProgressBar:
    """A tqdm bar on stderr that follows a job's `progress` (stage, step/total, the first losses)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled = label, enabled
        self.bar: Any = None

    def __call__(self, info: JobInfo) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm  # only commands that wait on a job need it

        progress = info.progress
        if self.bar is None:
            self.bar = tqdm(total=progress.total or None, unit="step", file=sys.stderr, dynamic_ncols=True)
        if progress.total and self.bar.total != progress.total:
            self.bar.total = progress.total
        self.bar.n = progress.step
        stage = progress.stage if info.status == JobStatus.started else info.status.value
        self.bar.set_description(f"{self.label}: {stage}", refresh=False)
        if progress.losses:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(progress.losses.items())[:3]}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _wait(api: EditganClient, job: JobAccepted, args: argparse.Namespace, result_type: type[R]) -> tuple[JobInfo, R]:
    """The finished job (printed with --json) and its result as `result_type`."""
    bar = ProgressBar(job.kind.value, enabled=not args.quiet)
    try:
        info = api.wait(job, progress=bar, timeout=args.timeout)
    except KeyboardInterrupt:
        with contextlib.suppress(EditganError):  # it may have ended meanwhile
            api.cancel_job(job.job_id)
        raise InterruptedJobError(job.job_id) from None
    finally:
        bar.close()
    if not isinstance(info.result, result_type):
        raise EditganError(f"job {info.job_id} finished without a {result_type.__name__}")
    return info, info.result


def _field(label: str, value: object) -> str:
    """One line of the human summary; the widest label is `segmentation_color`."""
    return f"\n{label:<19}{value}"


def _saved(api: EditganClient, images: ImageLinks, out: Path | None) -> str:
    if out is None:
        return ""
    return "".join(_field("saved", path) for path in api.save_images(images, out).values())


def _links(images: ImageLinks) -> str:
    return "".join(_field(kind, ref) for kind, ref in images.model_dump().items() if ref)


def _invert(api: EditganClient, args: argparse.Namespace) -> Answer:
    job = api.invert(args.image, model=args.model, fit=args.fit, steps=args.steps)
    info, result = _wait(api, job, args, InvertResult)
    psnr = _field("psnr", f"{result.metrics.psnr:.2f} dB") if result.metrics.psnr is not None else ""
    text = _field("latent", result.latent_id) + psnr + _links(result.images) + _saved(api, result.images, args.out)
    return Answer(info, text.lstrip())


def _edit(api: EditganClient, args: argparse.Namespace) -> Answer:
    job = api.optimize_edit(
        args.latent,
        args.mask,
        region=args.region,
        steps=args.steps,
        save_vector_as=args.save_vector,
        description=args.description,
        roi=args.roi,
    )
    info, result = _wait(api, job, args, OptimizeEditResult)
    vector = result.vector
    saved = _field("saved as", f"{vector.saved_as.name}@{vector.saved_as.version}") if vector.saved_as else ""
    text = _field("latent", result.latent_id) + _field("edit", vector.edit_id) + saved + _links(result.images)
    return Answer(info, (text + _saved(api, result.images, args.out)).lstrip())


def parse_term(text: str) -> tuple[str, float]:
    """`smile`, `smile:1.5`, `smile@2:-0.5` or `edv_…:0.3` → (ref, scale); refs never hold a colon."""
    ref, sep, scale = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        value = float(scale)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: the scale after ':' must be a finite number")
    return ref, value


def _apply(api: EditganClient, args: argparse.Namespace) -> Answer:
    data: BaseModel
    if args.refine_steps > 0:
        job = api.refine_with_vectors(args.latent, args.vectors, args.refine_steps)
        data, result = _wait(api, job, args, VectorEditResult)
    else:
        result = data = api.edit_with_vectors(args.latent, args.vectors)
    text = _field("latent", result.latent_id) + _links(result.images) + _saved(api, result.images, args.out)
    return Answer(data, text.lstrip())


def _model(api: EditganClient, args: argparse.Namespace) -> str:
    """`--model`, else the one model the service serves (the service's own default for uploads)."""
    if args.model:
        return str(args.model)
    names = [m.name for m in api.list_models().models]
    if len(names) != 1:
        raise EditganError(f"the service serves {len(names)} models ({', '.join(names)}): pass --model")
    return names[0]


def _vector_lines(vectors: list[VectorInfo]) -> str:
    """A table: model/name@version, source, region (or class ids), norm, description."""
    refs = [f"{v.model}/{v.name}@{v.version}" for v in vectors]
    width = max(map(len, refs), default=0)
    return "\n".join(
        f"{ref:<{width}}  {v.source:<8}  {v.region or ','.join(map(str, v.classes)):<12}  "
        f"norm {v.norm:<8.4g}  {v.description}".rstrip()
        for ref, v in zip(refs, vectors, strict=True)
    )


def _vectors_list(api: EditganClient, args: argparse.Namespace) -> Answer:
    listing = api.list_vectors(args.model)
    return Answer(listing, _vector_lines(listing.vectors) or "no vectors")


def _vectors_get(api: EditganClient, args: argparse.Namespace) -> Answer:
    model = _model(api, args)
    info = api.get_vector(model, args.name, args.version)
    text = _vector_lines([info]) + _field("versions", ", ".join(map(str, info.versions)))
    if args.out is not None:
        args.out.write_bytes(api.download_vector(model, args.name, info.version))
        text += _field("saved", args.out)
    return Answer(info, text)


def class_ids(text: str) -> list[int]:
    """`1,2,5` → [1, 2, 5]."""
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: class ids are integers separated by commas") from None


def _vectors_put(api: EditganClient, args: argparse.Namespace) -> Answer:
    info = api.upload_vector(
        args.file,
        args.name,
        model=args.model,
        region=args.region,
        classes=args.classes,
        description=args.description,
        scale_range=tuple(args.scale_range) if args.scale_range else None,
    )
    return Answer(info, _vector_lines([info]))


def _vectors_rm(api: EditganClient, args: argparse.Namespace) -> Answer:
    model = _model(api, args)
    api.delete_vector(model, args.name)  # 204, no body: report what was deleted
    return Answer({"model": model, "name": args.name, "deleted": True}, f"deleted {model}/{args.name}")


def _exit_status(exc: EditganError) -> int:
    if isinstance(exc, InterruptedJobError):
        return EXIT_INTERRUPTED
    if isinstance(exc, InvalidUrlError):  # a usage error: nothing was sent
        return EXIT_FILE
    return EXIT_UNREACHABLE if isinstance(exc, TransportError | WaitTimeoutError) else EXIT_REFUSED


def _fail(exc: EditganError | OSError, as_json: bool) -> int:
    """Report an error (`code: message` on stderr; with --json, the error as JSON on stdout); the exit status."""
    if isinstance(exc, EditganError):  # first: the timeouts are OSErrors too
        status, body, line = _exit_status(exc), {"code": exc.code, "message": exc.message}, str(exc)
    else:
        status, body, line = EXIT_FILE, {"code": "file_error", "message": str(exc)}, f"file_error: {exc}"
    extra: dict[str, Any] = {}
    if isinstance(exc, ApiError):
        extra = {"status": exc.status, "detail": exc.detail}
    elif isinstance(exc, JobFailedError | WaitTimeoutError):
        extra = {"job_id": exc.job.job_id}
    elif isinstance(exc, InterruptedJobError):
        extra = {"job_id": exc.job_id}
    print(f"editgan: error: {line}", file=sys.stderr)
    if as_json:
        print(json.dumps(body | extra))
    return status


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        settings = ClientSettings()
        url, key = args.url or settings.editgan_url, args.api_key or settings.editgan_api_key
        try:
            with EditganClient(url, api_key=key) as api:
                answer = command(api, args)
        except (EditganError, OSError) as exc:
            return _fail(exc, args.json)
        if args.json:
            data = answer.data.model_dump(mode="json") if isinstance(answer.data, BaseModel) else answer.data
            print(json.dumps(data))
        else:
            print(answer.text)
        return 0

    return run


def number(kind: type, minimum: float, *, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite `kind` of at least `minimum` (above it with `strict`). The engine's
    commands (`service/cli.py`) use it too."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            bound = "" if minimum == -math.inf else f" > {minimum:g}" if strict else f" >= {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text!r}")
        return value

    return parse


def _out_dir(text: str) -> Path:
    """A directory for the result PNGs: checked before the job runs, whose result would otherwise be lost."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return path


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `invert`, `edit`, `apply` and `vectors list|get|put|rm` on the `editgan` parser."""
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument("--url", default=None, help="service URL (default: $EDITGAN_URL or http://127.0.0.1:8000)")
    service.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer` (default: $EDITGAN_API_KEY)")
    service.add_argument("--json", action="store_true", help="print the API's answer as JSON on stdout")
    jobs = argparse.ArgumentParser(add_help=False)
    jobs.add_argument(
        "--out", type=_out_dir, default=None, help="directory to save the result PNGs in (image.png, ...)"
    )
    jobs.add_argument(
        "--timeout", type=number(float, 0), default=None, help="stop waiting after SECONDS (the job goes on)"
    )
    jobs.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    both = [service, jobs]

    p = sub.add_parser("invert", parents=both, help="embed an image into W+ (a job); prints its latent id")
    p.add_argument("image", type=Path, help="PNG, JPEG or WebP")
    p.add_argument("--model", default=None, help="default: the only model served")
    p.add_argument("--fit", choices=[f.value for f in Fit], default=None, help="another size or aspect (crop)")
    p.add_argument("--steps", type=number(int, 1), default=None, help="optimisation steps (default: the model's)")
    p.set_defaults(func=_runner(_invert), loads_engine=False)

    p = sub.add_parser("edit", parents=both, help="optimise a latent towards an edited segmentation mask (a job)")
    p.add_argument("latent", help="latent id (lat_...)")
    p.add_argument("mask", type=Path, help="edited segmentation PNG: class ids or the model's colours")
    p.add_argument("--region", default=None, help="region (class group) to edit; default: the classes changed")
    p.add_argument("--steps", type=number(int, 1), default=None, help="optimisation steps (default: the model's)")
    p.add_argument("--save-vector", metavar="NAME", default=None, help="keep the editing vector under NAME")
    p.add_argument("--description", default=None, help="the saved vector's description")
    p.add_argument(
        "--roi",
        type=Path,
        default=None,
        help="PNG of the brushed pixels (non-zero or opaque): the region is those pixels dilated (official tool); "
        "default: every pixel of the classes edited",
    )
    p.set_defaults(func=_runner(_edit), loads_engine=False)

    p = sub.add_parser("apply", parents=both, help="apply editing vectors at scales (real time; a job if refined)")
    p.add_argument("latent", help="latent id (lat_...)")
    p.add_argument("vectors", nargs="+", type=parse_term, metavar="VECTOR[:SCALE]", help="e.g. smile:1.5 grow@2:-1")
    p.add_argument("--refine-steps", type=number(int, 0), default=0, help="> 0: self-supervised refinement, as a job")
    p.set_defaults(func=_runner(_apply), loads_engine=False)

    vectors = sub.add_parser("vectors", help="the editing-vector registry: list, get, put, rm")
    verbs = vectors.add_subparsers(dest="vectors_command", required=True)
    p = verbs.add_parser("list", parents=[service], help="every vector (shipped: version 0)")
    p.add_argument("--model", default=None, help="only this model's")
    p.set_defaults(func=_runner(_vectors_list), loads_engine=False)

    p = verbs.add_parser("get", parents=[service], help="one vector's metadata; --out saves its official .npy")
    p.add_argument("name")
    p.add_argument("--model", default=None, help="default: the only model served")
    p.add_argument("--version", type=number(int, 0), default=None, help="default: the latest")
    p.add_argument("--out", type=Path, default=None, help="file to save the vector in (official .npy)")
    p.set_defaults(func=_runner(_vectors_get), loads_engine=False)

    p = verbs.add_parser("put", parents=[service], help="upload an official .npy vector as a new version of NAME")
    p.add_argument("file", type=Path, help="float32 (1, L, S) or (L, S) .npy")
    p.add_argument("name")
    p.add_argument("--model", default=None, help="default: the only model served")
    p.add_argument("--region", default=None, help="the class group it edits")
    p.add_argument("--classes", type=class_ids, default=None, help="or the class ids it edits: 1,2")
    p.add_argument("--description", default=None)
    p.add_argument("--scale-range", type=number(float, -math.inf), nargs=2, metavar=("MIN", "MAX"), default=None)
    p.set_defaults(func=_runner(_vectors_put), loads_engine=False)

    p = verbs.add_parser("rm", parents=[service], help="delete every version of a registry vector")
    p.add_argument("name")
    p.add_argument("--model", default=None, help="default: the only model served")
    p.set_defaults(func=_runner(_vectors_rm), loads_engine=False)
