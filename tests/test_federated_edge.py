"""Edge side of federated learning on a real nats-server with a real aggregator: adopt before
serving, retrain only when idle, publish an fp16 delta once per base version, adopt new versions."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import nats
import numpy as np
import pytest
import torch
from torch import nn

from aggregator.service import Aggregator, AggregatorConfig
from aggregator.store import ModelStore
from deploy.nats import NatsServer
from edge_worker.federated import FederatedConfig, Trainable
from edge_worker.key_buffer import KeyFrameBuffer
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.sources import default_style_photo, sample_photo
from streaming.images import encode_jpeg
from streaming.protocol import StylizeReply, StylizeRequest, decode, encode, stylize_subject
from streaming.style_store import StyleStore
from streaming.tensors import NamedArrays

WAIT_S = 30.0


class TinyColourNet(nn.Module):
    """A test-sized trainable stylizer: a learned per-pixel colour mix conditioned on the style's mean colour."""

    name = "tiny-colour-net"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = nn.Linear(6, 3)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)

    def prepare_style(self, style: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(style.reshape(-1, 3).mean(0).astype(np.float32) / 255.0)

    def _forward(self, content: torch.Tensor, style_mean: torch.Tensor) -> torch.Tensor:
        pixels = content.reshape(-1, 3)
        return (pixels + self.mix(torch.cat([pixels, style_mean.expand_as(pixels)], 1))).clamp(0, 1)

    @torch.inference_mode()
    def stylize(self, content: np.ndarray, style: torch.Tensor, out_size: tuple[int, int]) -> np.ndarray:
        content = cv2.resize(content, out_size)
        out = self._forward(torch.from_numpy(content.astype(np.float32) / 255.0), style)
        return (out.reshape(content.shape) * 255).round().to(torch.uint8).numpy()

    def learned_state(self) -> NamedArrays:
        return {k: v.detach().numpy().copy() for k, v in self.state_dict().items()}

    def load_learned_state(self, state: NamedArrays) -> None:
        self.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state.items()})

    def train_step(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
        loss = torch.zeros(())
        for content, style in pairs:
            small = torch.from_numpy(cv2.resize(content, (32, 32)).astype(np.float32) / 255.0)
            target = self.prepare_style(style)
            out = self._forward(small, target)
            loss = loss + (out.mean(0) - target).square().sum() + 0.1 * (out - small.reshape(-1, 3)).square().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def test_key_frame_buffer_is_bounded_and_survives_restarts(tmp_path: Path) -> None:
    buffer = KeyFrameBuffer(tmp_path, capacity=3)
    for i in range(5):
        buffer.add(bytes([i]) * 10, "ab12")
    assert len(buffer) == 3
    again = KeyFrameBuffer(tmp_path, capacity=3)
    assert len(again) == 3 and not list(tmp_path.glob("*.tmp"))
    again.add(b"new", "cd34")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith("000000000003") and names[-1] == "000000000005-cd34.jpg"
    picked = again.sample(10, random.Random(0))
    assert len(picked) == 3 and {p.style_id for p in picked} <= {"ab12", "cd34"}
    with pytest.raises(ValueError):
        again.add(b"x", "../../etc")


def test_interim_colour_transfer_cannot_join_federated_learning() -> None:
    from edge_worker.model.color_transfer import LinearColorTransfer

    assert isinstance(TinyColourNet(), Trainable) and not isinstance(LinearColorTransfer(), Trainable)


async def _until(predicate: object, what: str) -> None:
    async def loop() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), WAIT_S)


async def test_worker_adopts_trains_when_idle_publishes_and_follows(tmp_path: Path) -> None:
    with NatsServer() as server:
        initial = TinyColourNet().learned_state()
        initial["mix.bias"] = np.array([0.05, -0.05, 0.0], np.float32)  # v0 differs from the bundled weights
        aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=1))
        await aggregator.start(initial)
        agg_task = asyncio.create_task(aggregator.run())
        model = TinyColourNet()
        worker = StylizerWorker(
            WorkerConfig(
                nats_url=server.url,
                region="fl",
                worker_id="edge-1",
                threads=1,
                federated=FederatedConfig(buffer_dir=tmp_path / "buffer", idle_s=0.3, publish_every=6),
            ),
            stylizer=model,
        )
        nc = await nats.connect(server.url)
        try:
            await worker.start()
            # Adopted v0 before serving anything.
            assert worker.learner is not None and worker.learner.base_version == 0
            assert np.allclose(model.learned_state()["mix.bias"], initial["mix.bias"])
            style_id = await (await StyleStore.open(nc.jetstream())).put(encode_jpeg(default_style_photo()))
            frame = encode_jpeg(cv2.resize(sample_photo(), (64, 36)))
            for i in range(4):
                request = StylizeRequest(
                    stream_id="s",
                    frame_id=i,
                    style_id=style_id,
                    image=frame,
                    out_width=64,
                    out_height=36,
                    budget_ms=2000.0,
                )
                reply = decode((await nc.request(stylize_subject("fl"), encode(request), timeout=5)).data, StylizeReply)
                assert reply.ok
            assert len(worker.learner.buffer) == 4 and not worker.learner.losses  # no training while busy
            await _until(lambda: worker.learner.base_version == 1, "worker never adopted v1")
            store = await ModelStore.open(nc.jetstream())
            v1 = await store.latest()
            assert v1 is not None and v1.version == 1 and v1.contributors == ["edge-1"] and v1.samples >= 6
            adopted, published = model.learned_state(), await store.weights(v1)
            assert all(np.array_equal(adopted[k], published[k]) for k in adopted)
            assert not np.allclose(adopted["mix.weight"], initial["mix.weight"])  # training moved the weights
            assert np.isfinite(v1.loss)
        finally:
            agg_task.cancel()
            await asyncio.gather(agg_task, return_exceptions=True)
            await worker.stop()
            await aggregator.stop()
            await nc.close()
