"""The encoder and perceptual-network trainers, and the demo bundle built with both (tiny models, seconds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

from engine.bundle import load_bundle
from engine.domains import faces
from engine.encoder import Encoder, EncoderConfig
from engine.errors import BundleError, InputError
from engine.generator import Generator
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig
from engine.train import GanTrainConfig, export_generator, train_gan
from engine.train.demo_bundle import build_demo_bundle
from engine.train.encoder import (
    EncoderTrainConfig,
    demo_encoder_config,
    init_encoder,
    load_trained_encoder,
    train_encoder,
)
from engine.train.gan import run_source
from engine.train.perceptual import PerceptualTrainConfig, load_trained, save_trained, train_perceptual
from engine.train.segmenter import SegmenterTrainConfig
from tests.conftest import TINY_GENERATOR
from tests.engine.test_train_gan import TINY_D

SIZE = 32
TINY_PERCEPTUAL = ConvPerceptualConfig(widths=(4, 8), layers_per_stage=1, learned_weights=False)


def labelled(first: int, count: int) -> tuple[Tensor, Tensor]:
    images, labels = faces.batch(range(first, first + count), size=SIZE)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(labels.astype("int64"))


def real(first: int, count: int) -> Tensor:
    return labelled(first, count)[0]


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("gan")
    config = GanTrainConfig(
        TINY_GENERATOR, TINY_D, total_kimg=0.008, batch_size=4, r1_interval=2, ema_kimg=0.01, path_length=False
    )
    train_gan(config, lambda step, n: real(step * n, n), run)
    return run


@pytest.fixture(scope="module")
def generator(gan_run: Path) -> Generator:
    return export_generator(gan_run)


def test_the_perceptual_network_learns_the_domain_labels_and_round_trips(tmp_path: Path) -> None:
    train = PerceptualTrainConfig(steps=30, batch_size=4, lr=5e-3, log_every=10)
    seen: list[int] = []
    classes = len(faces.CLASSES)
    network, record = train_perceptual(TINY_PERCEPTUAL, labelled, classes, train, progress=lambda s, _: seen.append(s))
    assert seen == [10, 20, 30]
    assert not any(p.requires_grad for p in network.parameters())
    # held-back batch: better than the untrained network's loss at the start (log(8) = 2.08 for uniform guesses)
    assert record["final"]["check_loss"] < 1.9
    save_trained(tmp_path / "p", network, record)
    again, again_record = load_trained(tmp_path / "p")
    x, _ = labelled(5, 2)
    torch.testing.assert_close(again(x[:1], x[1:]), network(x[:1], x[1:]))
    assert again_record == json.loads(json.dumps(record))
    with pytest.raises(BundleError, match="train perceptual"):
        load_trained(tmp_path / "missing")


def test_narrow_encoder_heads_change_only_the_head_shapes() -> None:
    wide = EncoderConfig(resolution=32, n_latent=8, style_dim=32, base_width=4, blocks=(1, 1, 1, 1), fpn_channels=8)
    narrow = EncoderConfig(**{**wide.to_dict(), "blocks": (1, 1, 1, 1), "head_channels": 6})
    assert EncoderConfig.from_dict(narrow.to_dict()) == narrow and wide.head_width == 32
    a, b = Encoder(wide).state_dict(), Encoder(narrow).state_dict()
    assert list(a) == list(b)  # same keys, same order: the official layout
    differ = {k for k in a if a[k].shape != b[k].shape}
    assert differ and all("styles." in k for k in differ)
    assert b["fine_styles.0.linear.weight"].shape == (32, 6)
    assert Encoder(narrow)(torch.zeros(2, 3, 32, 32)).shape == (2, 8, 32)
    with pytest.raises(BundleError):
        EncoderConfig(**{**wide.to_dict(), "blocks": (1, 1, 1, 1), "head_channels": 0})


def test_a_fresh_encoder_answers_the_average_latent(generator: Generator) -> None:
    encoder = init_encoder(demo_encoder_config(generator), generator, seed=0).eval()
    w = encoder(real(0, 2))
    spread = (w - generator.w_avg).abs().mean() / generator.w_avg.abs().mean()
    assert spread < 0.5


def test_encoder_training_learns_resumes_and_refuses_another_generator(generator: Generator, tmp_path: Path) -> None:
    perceptual = ConvPerceptual(TINY_PERCEPTUAL).freeze()
    run = tmp_path / "enc"
    cfg = EncoderTrainConfig(total_kimg=0.032, batch_size=2, real_from=0.5, log_every=1, lr=1e-3)
    polls = [0]

    def stop_after_six() -> bool:
        polls[0] += 1
        return polls[0] > 6

    first = train_encoder(generator, perceptual, real, run, cfg, source="g@1", should_stop=stop_after_six)
    assert first["step"] == 6 and first["total_steps"] == 8
    second = train_encoder(generator, perceptual, real, run, cfg, source="g@1")
    assert second["step"] == 8
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 9))  # resumed where it stopped, nothing repeated
    assert "real_p" not in lines[2] and "real_p" in lines[5]  # real images join after real_from
    longer = train_encoder(generator, perceptual, real, run, EncoderTrainConfig(total_kimg=0.04), source="g@1")
    assert longer["step"] == 10 and longer["config"]["batch_size"] == 2  # only the schedule changed
    encoder, meta = load_trained_encoder(run)
    assert meta["step"] == 10 and not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(InputError, match="g@1"):
        train_encoder(generator, perceptual, real, run, cfg, source="g@2")
    # a later checkpoint of the GAN: a new run that starts from these weights
    tuned = train_encoder(generator, perceptual, real, tmp_path / "tuned", cfg, init_from=run, source="g@2")
    assert tuned["step"] == 8 and tuned["initialised_from"].startswith("g@1")
    first_line = (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()[0]
    assert json.loads(first_line)["step"] == 1


def test_encoder_training_lowers_the_latent_error(generator: Generator, tmp_path: Path) -> None:
    perceptual = ConvPerceptual(TINY_PERCEPTUAL).freeze()
    cfg = EncoderTrainConfig(total_kimg=0.16, batch_size=4, real_from=1.0, log_every=1, lr=2e-3)
    train_encoder(generator, perceptual, real, tmp_path / "enc", cfg, source="g")
    lines = [json.loads(line) for line in (tmp_path / "enc" / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[:5], lines[-5:]
    assert sum(line["latent"] for line in last) < 0.8 * sum(line["latent"] for line in first)


def test_the_demo_bundle_takes_the_trained_perceptual_network_and_encoder(
    gan_run: Path, generator: Generator, tmp_path: Path
) -> None:
    network, record = train_perceptual(TINY_PERCEPTUAL, labelled, len(faces.CLASSES), PerceptualTrainConfig(steps=2))
    save_trained(tmp_path / "perceptual", network, record)
    enc_cfg = EncoderTrainConfig(total_kimg=0.008, batch_size=2)
    train_encoder(generator, network, real, tmp_path / "enc", enc_cfg, source=run_source(gan_run))
    seg = SegmenterTrainConfig(num_models=2, epochs=1, invert_steps=2, max_pixel_error=1.0, hidden=(6, 4))
    built = build_demo_bundle(
        gan_run,
        tmp_path / "bundle",
        annotated=2,
        config=seg,
        perceptual_dir=tmp_path / "perceptual",
        encoder_dir=tmp_path / "enc",
        log=lambda _: None,
    )
    assert built["gan"] == run_source(gan_run) and built["encoder"]["step"] == 2
    assert built["pixels_kept"]["all"] == 1.0  # every error on [0, 1] is <= 1
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.encoder is not None and bundle.spec.defaults["invert"]["use_encoder"] is True
    assert bundle.spec.perceptual["config"] == TINY_PERCEPTUAL.to_dict()
    assert bundle.spec.segmenter.hidden == (6, 4) and built["segmenter_training"]["hidden"] == (6, 4)
    assert [m.first.out_features for m in bundle.segmenter.classifiers()] == [6, 6]
    x = real(9, 2)
    torch.testing.assert_close(bundle.perceptual()(x[:1], x[1:]), network(x[:1], x[1:]))
    assert bundle.examples is not None and bundle.examples.shape[0] == 2
    # mirrored annotations: twice the embeddings to train on, the same examples in the bundle
    mirrored_seg = dataclasses.replace(seg, mirror=True)
    mirrored = build_demo_bundle(gan_run, tmp_path / "mirrored", annotated=2, config=mirrored_seg, log=lambda _: None)
    assert len(mirrored["embedding_psnr_db"]) == 4 and mirrored["segmenter_training"]["mirror"] is True
    again_examples = load_bundle(tmp_path / "mirrored").examples
    assert again_examples is not None and again_examples.shape[0] == 2
    # a committed bundle is enough to continue the encoder's training against a later GAN checkpoint
    again = train_encoder(generator, network, real, tmp_path / "again", enc_cfg, init_from=tmp_path / "bundle")
    assert again["initialised_from"] == f"the encoder of bundle {tmp_path / 'bundle'}" and again["step"] == 2

    train_encoder(generator, network, real, tmp_path / "other", enc_cfg, source="another run@step 1")
    with pytest.raises(BundleError, match="another run"):
        build_demo_bundle(gan_run, tmp_path / "b2", annotated=2, config=seg, encoder_dir=tmp_path / "other")
