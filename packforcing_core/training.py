"""Training the mid compressor by self-distillation (objective: distill.py; data: training_data.py).

The DiT stays frozen (in its compute dtype, bit-identical after training); only the compressor's
branches train, in float32 master weights, their convolutions under bf16 autocast when the DiT
runs in bf16. AdamW, linear warm-up then cosine decay, gradient-norm clipping, gradient
accumulation over `batch` clips (one clip per forward bounds memory), optional gradient
checkpointing of the DiT blocks.

Everything random in a step derives from (seed, step): which clip (an epoch-wise permutation),
which target chunk, which timestep, which noise. A checkpoint (work_dir/checkpoint.pt, read back
with weights_only=True) holds the weights, AdamW's moments, the schedule, the RNG states, the data
position and the log, so a resumed run continues bit-identically to an uninterrupted one.

Outputs in work_dir: checkpoint.pt, compressor-latest.safetensors, log.csv, log.json, loss.png,
and eval/ (the evaluation run at the end); the trained file at `out`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .cache import CacheConfig
from .compressor import DiTCompressor, HRBranch, save_compressor_weights
from .distill import CompressorMid, Distiller, Sample, kv_pool_mid, target_frames
from .noise import chunk_seed
from .files import write_file, write_files
from .plot import line_plot
from .schedule import FlowSchedule
from .state import model_fingerprint
from .training_data import Clip, DataError, check_clip_length

BRANCHES = ("hr", "lr", "hr_lr")
CHECKPOINT_FORMAT = "packforcing-compressor-training"
LOG_COLUMNS = ("step", "loss", "gap", "grad_norm", "lr", "seconds", "heldout_loss", "heldout_gap", "peak_gib")


class TrainingError(ValueError):
    """A training run that cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    branches: str = "hr"             # hr | lr | hr_lr (the paper's dual branch)
    steps: int = 2000                # optimizer steps
    batch: int = 4                   # clips per step (accumulated one at a time)
    lr: float = 1e-4
    warmup: int = 100                # steps of linear warm-up
    min_lr: float = 0.1              # final LR as a fraction of lr (cosine decay)
    weight_decay: float = 0.01
    clip_grad: float = 1.0           # max gradient norm
    eval_every: int = 100            # steps between held-out evaluations
    save_every: int = 100            # steps between checkpoints
    grad_checkpointing: bool = False
    seed: int = 0
    chunk_frames: int = 4
    cache: CacheConfig = field(default_factory=CacheConfig)   # sizes the compressor is trained for
    shift: float = 5.0
    denoise_steps: tuple[int, ...] = (1000, 750, 500, 250)

    def __post_init__(self):
        if self.branches not in BRANCHES:
            raise TrainingError(f"branches '{self.branches}' unknown: choose hr, lr or hr_lr")
        for name in ("steps", "batch", "eval_every", "save_every", "chunk_frames"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        finite = all(math.isfinite(getattr(self, n)) for n in ("lr", "min_lr", "weight_decay", "clip_grad", "shift"))
        if not (finite and self.lr > 0 and 0 <= self.min_lr <= 1 and self.warmup >= 0 and self.clip_grad > 0
                and self.weight_decay >= 0 and self.shift > 0):
            raise TrainingError("need finite lr > 0, 0 <= min_lr <= 1, warmup >= 0, clip_grad > 0, "
                                "weight_decay >= 0 and shift > 0")

    @property
    def inference_mode(self) -> str:
        """The cache mode the trained file is used in (an LR-only file carries a zero HR branch)."""
        return "hr" if self.branches == "hr" else "hr_lr"

    def identity(self) -> dict:
        """What a checkpoint must agree on to continue (frequencies of evals and saves may change)."""
        d = dataclasses.asdict(self)
        d.pop("eval_every"), d.pop("save_every")
        d["cache"] = self.cache.to_dict()
        d["denoise_steps"] = list(self.denoise_steps)
        return d


# ----------------------------------------------------------------------------- the trainable weights
class Compressor(nn.Module):
    """The compressor's trainable branches, float32. hr: HRBranch (PyTorch's default init from
    `seed`). lr: the LR projection, initialised as the DiT's own patch embedding, so an untrained
    LR branch IS the training-free `lr` mode. In hr_lr the HR branch's last convolution starts at
    zero, so training starts from `lr` and the HR branch learns what it adds."""

    def __init__(self, branches: str, model, seed: int = 0):
        super().__init__()
        mc = model.cfg
        self.branches = branches
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.hr = HRBranch(mc.dim, mc.in_dim) if branches != "lr" else None
            self.lr = nn.Conv3d(mc.in_dim, mc.dim, mc.patch, mc.patch) if branches != "hr" else None
        with torch.no_grad():
            if self.lr is not None:
                self.lr.weight.copy_(model.patch_embedding.weight.float())
                self.lr.bias.copy_(model.patch_embedding.bias.float())
            if branches == "hr_lr":
                self.hr.convs[-1].weight.zero_()
                self.hr.convs[-1].bias.zero_()
        self.to(model.device)

    def view(self, model, vae=None) -> DiTCompressor:
        """The inference compressor over these weights (shares the tensors: gradients reach them)."""
        return DiTCompressor(self.branches, model, vae, self.hr, self.lr)

    def export(self, path: str, model, extra: dict | None = None) -> None:
        """The documented compressor file. An LR-only compressor is written with an all-zero HR
        branch (it adds exactly nothing), to be loaded in mode hr_lr."""
        hr = self.hr
        if hr is None:
            with torch.device("meta"):
                hr = HRBranch(model.cfg.dim, model.cfg.in_dim)
            hr = hr.to_empty(device="cpu")
            with torch.no_grad():
                for p in hr.parameters():
                    p.zero_()
        save_compressor_weights(hr, self.lr, path, extra)


# ----------------------------------------------------------------------------- the loop
def _lr_factor(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / (cfg.warmup + 1)
        frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    return factor


class Progress:
    """One status line: step, loss, speed and ETA; redrawn in place on a terminal, else printed
    every `every_s` seconds."""

    def __init__(self, total: int, start: int = 0, stream=None, every_s: float = 10.0):
        self.total, self.start, self.stream, self.every_s = total, start, stream or sys.stderr, every_s
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0, self.last = time.perf_counter(), 0.0

    def update(self, step: int, text: str, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        rate = (now - self.t0) / max(step - self.start, 1)
        eta = time.strftime("%H:%M:%S", time.gmtime(rate * (self.total - step)))
        line = f"step {step}/{self.total} | {text} | {rate:.2f} s/step | ETA {eta}"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()


class Trainer:
    """model: a frozen causal Wan DiT; train / heldout: lists of Clip; prompts: (1, n, width) each."""

    def __init__(self, model, train: list[Clip], heldout: list[Clip], prompts: list[torch.Tensor],
                 cfg: TrainConfig, work_dir: str, vae=None, data_id: str = "", log=None):
        if cfg.branches in ("lr", "hr_lr") and vae is None:
            raise TrainingError(f"training the LR branch (branches '{cfg.branches}') re-encodes every mid "
                                "block with the VAE: pass --vae (wan_2.1_vae.safetensors)")
        if model.dtype not in (torch.float32, torch.bfloat16):
            raise TrainingError(f"train with the DiT in bf16 or fp32, not {model.dtype}")
        if not train:
            raise DataError("no training clips")
        frames = train[0].latent.shape[2]
        check_clip_length(cfg.cache.with_chunk(cfg.chunk_frames), cfg.chunk_frames, frames)
        for c in train + heldout:
            if tuple(c.latent.shape[2:]) != tuple(train[0].latent.shape[2:]):
                raise DataError(f"clip {c.name} has shape {tuple(c.latent.shape)}, the others "
                                f"{tuple(train[0].latent.shape)}: all clips must have one size")
        self.model, self.train, self.heldout, self.prompts = model, train, heldout, prompts
        self.cfg, self.work_dir, self.vae = cfg, work_dir, vae
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        model.requires_grad_(False).eval()
        self.sched_flow = FlowSchedule(shift=cfg.shift, steps=cfg.denoise_steps)
        self.cache_cfg = cfg.cache.with_chunk(cfg.chunk_frames)
        self.targets = target_frames(self.cache_cfg, cfg.chunk_frames, frames)
        self.distiller = Distiller(model, self.cache_cfg, cfg.chunk_frames, cfg.grad_checkpointing)
        self.comp = Compressor(cfg.branches, model, cfg.seed)
        half = model.dtype if model.dtype != torch.float32 else None
        self.mid = CompressorMid(self.comp.view(model, vae), half)
        self.params = [p for p in self.comp.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_factor(cfg))
        self.step = 0
        self.rows: list[dict] = []
        self.baselines: dict = {}
        self.identity = {"config": cfg.identity(), "model": model_fingerprint(model), "data": data_id,
                         "clips": len(train), "heldout": len(heldout), "clip_shape": list(train[0].latent.shape)}
        self._orders: dict[int, list[int]] = {}
        os.makedirs(work_dir, exist_ok=True)

    # -------------------------------------------------------------- samples
    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(chunk_seed(self.cfg.seed, 1_000_000 + epoch))
            self._orders = {epoch: torch.randperm(len(self.train), generator=g).tolist()}
        return self._orders[epoch]

    def data_position(self, step: int) -> tuple[int, int]:
        """(epoch, index in the epoch) of the next clip at the start of `step`."""
        return divmod(step * self.cfg.batch, len(self.train))

    def _text_kv(self, pid: int):
        return self.model.encode_text(self.prompts[pid].to(self.model.device))

    def sample(self, step: int, micro: int) -> Sample:
        counter = step * self.cfg.batch + micro
        epoch, cursor = divmod(counter, len(self.train))
        clip = self.train[self._order(epoch)[cursor]]
        g = torch.Generator().manual_seed(chunk_seed(self.cfg.seed, counter))
        target = self.targets[int(torch.randint(len(self.targets), (1,), generator=g))]
        t = float(self.sched_flow.timesteps[int(torch.randint(len(self.cfg.denoise_steps), (1,), generator=g))])
        lat = clip.latent
        noise = torch.randn(1, lat.shape[1], self.cfg.chunk_frames, *lat.shape[3:], generator=g)
        return Sample(lat.to(self.model.device), target, t, noise, self._text_kv(clip.prompt), clip.name)

    # -------------------------------------------------------------- steps
    def train_step(self) -> dict:
        t0 = time.perf_counter()
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        losses, gaps = [], []
        for micro in range(cfg.batch):
            loss, gap = self.distiller.loss(self.sample(self.step, micro), self.mid)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {self.step}: lower --lr, or resume "
                                    "from the last checkpoint with a smaller one")
            (loss / cfg.batch).backward()
            losses.append(loss.item())
            gaps.append(gap)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad))
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.lr_sched.step()
        self.step += 1
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        row = {"step": self.step, "loss": sum(losses) / len(losses), "gap": sum(gaps) / len(gaps),
               "grad_norm": grad_norm, "lr": lr, "seconds": time.perf_counter() - t0}
        if self.model.device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(self.model.device) / 2 ** 30
        return row

    @torch.no_grad()
    def heldout_eval(self, mid_source=None) -> dict:
        """Mean loss and x0 gap over the held-out clips, each at its last target chunk and every
        timestep of the schedule, with fixed noise (the same every time)."""
        if not self.heldout:
            return {}
        mid_source = self.mid if mid_source is None else mid_source
        losses, gaps = [], []
        target = self.targets[-1]
        for i, clip in enumerate(self.heldout):
            g = torch.Generator().manual_seed(chunk_seed(self.cfg.seed + 7_919, i))
            lat = clip.latent.to(self.model.device)
            text_kv = self._text_kv(clip.prompt)
            hist = None
            for t in self.sched_flow.timesteps.tolist():
                noise = torch.randn(1, lat.shape[1], self.cfg.chunk_frames, *lat.shape[3:], generator=g)
                s = Sample(lat, target, t, noise, text_kv, clip.name)
                p = self.distiller.prepare(s, hist)
                hist = p.hist
                loss, gap = self.distiller.loss(s, mid_source if mid_source != "none" else None, p)
                losses.append(loss.item())
                gaps.append(gap)
        return {"heldout_loss": sum(losses) / len(losses), "heldout_gap": sum(gaps) / len(gaps)}

    # -------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.work_dir, "checkpoint.pt")

    def save_checkpoint(self) -> None:
        state = {
            "format": CHECKPOINT_FORMAT, "version": 1, "step": self.step,
            "identity": json.dumps(self.identity, sort_keys=True),
            "compressor": self.comp.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.lr_sched.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "data_position": list(self.data_position(self.step)),
            "log": json.dumps({"rows": self.rows, "baselines": self.baselines}),
        }
        buf = io.BytesIO()                  # serialised in memory: a full disk then says so, in one line
        torch.save(state, buf)
        write_file(self.checkpoint_path, buf.getvalue(), "--work-dir")
        self.export(os.path.join(self.work_dir, "compressor-latest.safetensors"))
        self.write_logs()

    def load_checkpoint(self, path: str | None = None) -> None:
        path = path or self.checkpoint_path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainingError(f"training checkpoint '{path}' cannot be read ({e}): start a new run in "
                                "another --work-dir") from e
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"'{path}' is not a compressor-training checkpoint")
        theirs, ours = json.loads(state["identity"]), self.identity
        diffs = _diff(theirs, ours)
        if diffs:
            raise TrainingError(f"checkpoint '{path}' was made by another run ({'; '.join(diffs[:4])}): resume "
                                "with the same model, data and settings, or use another --work-dir")
        self.comp.load_state_dict(state["compressor"])
        self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = int(state["step"])
        if list(self.data_position(self.step)) != list(state["data_position"]):
            raise TrainingError(f"checkpoint '{path}': data position does not match its step")
        logged = json.loads(state["log"])
        self.rows, self.baselines = logged["rows"], logged["baselines"]

    # -------------------------------------------------------------- outputs
    def metadata(self) -> dict:
        c = self.cache_cfg
        last = next((r for r in reversed(self.rows) if r.get("heldout_gap") is not None), {})
        training = {"branches": self.cfg.branches, "steps": self.step, "batch": self.cfg.batch,
                    "model": self.identity["model"], "sink_frames": c.sink_frames, "recent_frames": c.recent_frames,
                    "mid_blocks": c.mid_blocks, "top_k": c.top_k, "selection": c.selection,
                    "rope_adjust": c.rope_adjust, "chunk_frames": self.cfg.chunk_frames,
                    "clip_shape": self.identity["clip_shape"], "data": self.identity["data"],
                    "init_seed": self.cfg.seed, "heldout_gap": last.get("heldout_gap"),
                    "heldout_gap_untrained": self.baselines.get("untrained", {}).get("heldout_gap")}
        return {"mode": self.cfg.inference_mode, "training": json.dumps(training)}

    def export(self, path: str) -> None:
        self.comp.export(path, self.model, self.metadata())

    def write_logs(self) -> None:
        """log.csv, log.json and loss.png in the work dir, all or none."""
        rows = self.rows
        csv = [",".join(LOG_COLUMNS)] + [",".join("" if r.get(c) is None else f"{r[c]:.6g}" for c in LOG_COLUMNS)
                                         for r in rows]
        log = json.dumps({"identity": self.identity, "baselines": self.baselines, "rows": rows}, indent=1)
        files = {"log.csv": ("\n".join(csv) + "\n").encode(), "log.json": log.encode()}
        png = self.plot()
        if png:
            files["loss.png"] = png
        write_files({os.path.join(self.work_dir, n): data for n, data in files.items()}, "--work-dir")

    def plot(self) -> bytes | None:
        steps = [r["step"] for r in self.rows]
        loss = [r["loss"] for r in self.rows]
        series = {"train loss": (steps, loss)}
        if len(loss) >= 10:
            k = max(2, len(loss) // 20)
            sm = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
            series[f"train (mean of {k})"] = (steps, sm)
        held = [(r["step"], r["heldout_loss"]) for r in self.rows if r.get("heldout_loss") is not None]
        if held:
            series["held-out loss"] = ([s for s, _ in held], [v for _, v in held])
        for name, b in self.baselines.items():
            if b.get("heldout_loss") is not None and steps:
                series[f"held-out {name}"] = ([0, max(steps)], [b["heldout_loss"]] * 2)
        return line_plot(series, "compressor self-distillation: student-teacher velocity MSE", "step", "loss",
                         log_y=True, dots=("held-out loss",))

    # -------------------------------------------------------------- run
    def evaluate_baselines(self) -> None:
        """Held-out numbers of the untrained compressor, kv_pool and none (reference lines)."""
        if self.baselines or not self.heldout:
            return
        self.baselines = {"untrained": self.heldout_eval(), "kv_pool": self.heldout_eval(kv_pool_mid),
                          "none": self.heldout_eval("none")}
        self.log("held-out before training: " + ", ".join(
            f"{k} loss {v['heldout_loss']:.4g} gap {v['heldout_gap']:.4f}" for k, v in self.baselines.items()))

    def run(self, until: int | None = None, progress: Progress | None = None) -> None:
        """Train to step `until` (default cfg.steps), evaluating and saving on schedule."""
        until = self.cfg.steps if until is None else min(until, self.cfg.steps)
        self.evaluate_baselines()
        if self.model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.model.device)   # peak_gib: the training steps'
        progress = progress or Progress(self.cfg.steps, self.step)
        while self.step < until:
            row = self.train_step()
            if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.steps:
                row.update(self.heldout_eval())
            self.rows.append(row)
            text = f"loss {row['loss']:.4g} | gap {row['gap']:.4f} | lr {row['lr']:.2e}"
            if "heldout_gap" in row:
                text += f" | held-out gap {row['heldout_gap']:.4f}"
            progress.update(self.step, text, force="heldout_gap" in row)
            if self.step % self.cfg.save_every == 0 or self.step == until:
                self.save_checkpoint()
            elif "heldout_gap" in row:
                self.write_logs()
        if progress.tty:
            progress.stream.write("\n")


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x} in the checkpoint, {y} now")
    return out
