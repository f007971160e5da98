"""`train-compressor` and `evaluate-compressor`: the command-line side of training/ (trainer.py, evaluation.py).

  python -m packforcing_core train-compressor --dit DIT --prompt-embeds P [P ...] --out compressor.safetensors
  python -m packforcing_core evaluate-compressor --dit DIT --compressor compressor.safetensors --prompt-embeds P

Seeds: with --seed s, training rollouts use seeds 1e6*s + i, the held-out clips 1e6*s + 500000 + i,
and the final evaluation 1e6*s + 900000 + i (evaluate-compressor's default with s = 0).
"""
from __future__ import annotations

import os
import sys

import torch

from ..cache.config import CacheConfig, SELECTIONS
from ..io.files import InputPathError, check_output_file, check_output_folder, input_folder
from ..training.config import BRANCHES, TrainConfig, TrainingError
from ..training.data import DataError, check_clip_length, load_prompts, rollout_clips, video_clips
from ..training.trainer import Progress, Trainer
from .options import OptionError, frames_or_seconds, input_path, number_in, timesteps, whole_in

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SEED_SPAN = 1_000_000


def _add_model_args(p, default_size=True) -> None:
    p.add_argument("--dit", required=True, help="causal Wan2.1 T2V DiT (.safetensors or Self-Forcing .pt), frozen")
    p.add_argument("--vae", help="Wan2.1 VAE: needed for --clips-dir, for the LR branch and the lr / hr_lr rows")
    p.add_argument("--prompt-embeds", nargs="+", required=True, help="prompt-embeddings file(s) (one prompt or several each)")
    p.add_argument("--width", type=whole_in(16), default=832, help="video width in pixels, a multiple of 16")
    p.add_argument("--height", type=whole_in(16), default=480, help="video height in pixels, a multiple of 16")
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="the DiT's compute dtype")
    p.add_argument("--device", help="cpu, cuda or cuda:N; default cuda when a GPU is usable, else cpu")


def _add_size_args(p, defaults: CacheConfig | None) -> None:
    """The PackedCache sizes; without `defaults` they come from the compressor file (else the usual ones)."""
    d, c = defaults, CacheConfig()
    tail = (lambda v: "") if d else (lambda v: f"; default the compressor file's, else {v}")
    p.add_argument("--sink", type=frames_or_seconds, default=d and d.sink_frames,
                   help="sink: latent frames, or seconds ending in s (1s = 4)" + tail(c.sink_frames))
    p.add_argument("--recent", type=frames_or_seconds, default=d and d.recent_frames,
                   help="recent: latent frames, or seconds ending in s (1s = 4)" + tail(c.recent_frames))
    p.add_argument("--mid-blocks", type=whole_in(0), default=d and d.mid_blocks,
                   help="mid bank capacity (blocks)" + tail(c.mid_blocks))
    p.add_argument("--top-k", type=whole_in(0), default=d and d.top_k, help="mid blocks attended per chunk" + tail(c.top_k))
    p.add_argument("--selection", choices=SELECTIONS, default=d and d.selection,
                   help="which mid blocks are attended: affinity (query-key score) or recency" + tail(c.selection))
    p.add_argument("--no-rope-adjust", action="store_true", default=None if d is None else False,
                   help="keep absolute positions (gaps stay)" + ("" if d else "; default the compressor file's"))
    p.add_argument("--chunk-frames", type=whole_in(1), default=d and 4, help="latent frames per chunk" + tail(4))


def add_commands(sub) -> None:
    text = ("train compressor weights for the cache modes hr / hr_lr by self-distillation of your DiT (no dataset "
            "needed): a .safetensors for models/packforcing/")
    t = sub.add_parser("train-compressor", help=text, description=text[0].upper() + text[1:] + ".")
    _add_model_args(t)
    t.add_argument("--out", required=True, help="the trained compressor file (.safetensors) for models/packforcing/")
    t.add_argument("--work-dir", help="checkpoints, logs, plots, cached clips (default: <out>.training/)")
    t.add_argument("--resume", action="store_true", help="continue the run in --work-dir from its checkpoint")
    t.add_argument("--branches", choices=BRANCHES, default="hr", help="hr: the HR CNN (mode hr); lr: the LR "
                   "projection (mode hr_lr, needs --vae); hr_lr: both, the paper's dual branch (needs --vae)")
    t.add_argument("--clips-dir", help="train on the videos in this folder (VAE-encoded once) instead of rollouts")
    t.add_argument("--clips", type=whole_in(1), default=64, help="rollouts to generate (without --clips-dir)")
    t.add_argument("--clip-frames", type=whole_in(1), default=20, help="latent frames per clip (20 = 77 frames, ~5 s)")
    t.add_argument("--eval-clips", type=whole_in(0), default=4, help="held-out clips for the periodic evaluation")
    t.add_argument("--eval-prompt-embeds", nargs="*", default=None,
                   help="held-out prompts (default: the last training prompt when there are several)")
    d = TrainConfig()
    t.add_argument("--steps", type=whole_in(1), default=d.steps, help="optimizer steps")
    t.add_argument("--batch", type=whole_in(1), default=d.batch, help="clips per step (gradient accumulation)")
    t.add_argument("--lr", type=number_in(above=0, hi=1), default=d.lr, help="peak learning rate (AdamW)")
    t.add_argument("--warmup", type=whole_in(0), default=d.warmup, help="steps of linear warm-up")
    t.add_argument("--min-lr", type=number_in(0, 1), default=d.min_lr, help="final LR as a fraction of --lr (cosine)")
    t.add_argument("--weight-decay", type=number_in(0, 1), default=d.weight_decay, help="AdamW weight decay")
    t.add_argument("--clip-grad", type=number_in(above=0), default=d.clip_grad, help="gradient norm clip")
    t.add_argument("--eval-every", type=whole_in(1), default=d.eval_every, help="steps between held-out evaluations")
    t.add_argument("--save-every", type=whole_in(1), default=d.save_every, help="steps between checkpoints")
    t.add_argument("--grad-checkpointing", action="store_true", help="recompute DiT activations in backward "
                   "(less memory, ~30%% slower)")
    t.add_argument("--seed", type=whole_in(0, 2 ** 32 - 1), default=0, help="seeds of the rollouts and of the initialisation")
    t.add_argument("--shift", type=number_in(above=0), default=5.0, help="the sampler's flow shift")
    t.add_argument("--denoise-steps", type=timesteps, default=(1000, 750, 500, 250), help="the sampler's steps (timesteps drawn from them)")
    t.add_argument("--final-eval-frames", type=whole_in(0), default=80,
                   help="latent frames of the evaluation video at the end (80 = 20 s; 0: skip)")
    t.add_argument("--final-eval-videos", type=whole_in(1), default=1, help="evaluation videos at the end")
    _add_size_args(t, CacheConfig())
    t.set_defaults(func=cmd_train)

    text = ("measure how far each cache mode (none, kv_pool, lr, the untrained and the trained compressor) strays from "
            "the full-history teacher on held-out videos")
    e = sub.add_parser("evaluate-compressor", help=text, description=text[0].upper() + text[1:] + ".")
    _add_model_args(e)
    e.add_argument("--compressor", help="trained compressor file (rows untrained / trained)")
    e.add_argument("--out", required=True, help="folder for gap.md, gap.csv, gap.json, gap.png")
    e.add_argument("--seeds", type=whole_in(0, 2 ** 63 - 1), nargs="+", default=[900_000], help="held-out seeds, one video each")
    e.add_argument("--frames", type=whole_in(1), default=80, help="latent frames of each video (80 = 20 s)")
    e.add_argument("--modes", nargs="+", default=["none", "kv_pool", "lr", "untrained", "trained"],
                   choices=["full", "none", "kv_pool", "lr", "untrained", "trained"], help="rows of the table")
    _add_size_args(e, None)
    e.set_defaults(func=cmd_evaluate)


def _check_inputs(a) -> None:
    """Every input path, before anything is loaded: a missing file or a folder is named with its option."""
    for option in ("--dit", "--vae", "--compressor"):
        if getattr(a, option[2:], None):
            input_path(option, getattr(a, option[2:]))
    for option in ("--prompt-embeds", "--eval-prompt-embeds"):
        for path in getattr(a, option[2:].replace("-", "_"), None) or []:
            input_path(option, path)
    if getattr(a, "clips_dir", None):
        try:
            input_folder("--clips-dir", a.clips_dir)
        except InputPathError as e:
            raise OptionError("--clips-dir", str(e).removeprefix("--clips-dir: ")) from None


def _device(a) -> str:
    return a.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _latent_size(a) -> tuple[int, int]:
    if a.width % 16 or a.height % 16 or a.width <= 0 or a.height <= 0:
        raise ValueError(f"--width {a.width} --height {a.height}: both must be positive multiples of 16")
    return a.height // 8, a.width // 8


def _load(a):
    from ..model.checkpoint import load_model
    from ..vae.model import load_vae
    dev = _device(a)
    model = load_model(a.dit, device=dev, dtype=DTYPES[a.dtype])
    vae = load_vae(a.vae, device=dev, dtype=torch.float32 if a.dtype == "fp32" else DTYPES[a.dtype]) if a.vae else None
    return model, vae


def _sizes(a, fallback: dict | None = None) -> tuple[CacheConfig, int]:
    f, d = fallback or {}, CacheConfig()
    pick = lambda arg, key, default: arg if arg is not None else f.get(key, default)
    rope = (not a.no_rope_adjust) if a.no_rope_adjust is not None else f.get("rope_adjust", True)
    cfg = CacheConfig(mode="kv_pool", sink_frames=pick(a.sink, "sink_frames", d.sink_frames),
                      recent_frames=pick(a.recent, "recent_frames", d.recent_frames),
                      mid_blocks=pick(a.mid_blocks, "mid_blocks", d.mid_blocks), top_k=pick(a.top_k, "top_k", d.top_k),
                      selection=pick(a.selection, "selection", d.selection), rope_adjust=rope)
    return cfg, pick(a.chunk_frames, "chunk_frames", 4)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- train-compressor
def cmd_train(a) -> None:
    _check_inputs(a)
    if a.branches in ("lr", "hr_lr") and not a.vae:
        raise TrainingError(f"--branches {a.branches} trains the LR branch, which re-encodes every mid block "
                            "with the VAE: pass --vae wan_2.1_vae.safetensors (or use --branches hr)")
    if a.clips_dir and not a.vae:
        raise DataError("--clips-dir: the clips are VAE-encoded once, so --vae is needed")
    lh, lw = _latent_size(a)
    cache, chunk = _sizes(a)
    check_clip_length(cache.with_chunk(chunk), chunk, a.clip_frames)
    cfg = TrainConfig(branches=a.branches, steps=a.steps, batch=a.batch, lr=a.lr, warmup=a.warmup, min_lr=a.min_lr,
                      weight_decay=a.weight_decay, clip_grad=a.clip_grad, eval_every=a.eval_every,
                      save_every=a.save_every, grad_checkpointing=a.grad_checkpointing, seed=a.seed,
                      chunk_frames=chunk, cache=cache, shift=a.shift,
                      denoise_steps=tuple(a.denoise_steps))
    work = a.work_dir or os.path.splitext(a.out)[0] + ".training"
    check_output_file("--out", a.out)
    check_output_folder("--work-dir", work)
    if not a.resume and os.path.exists(os.path.join(work, "checkpoint.pt")):
        raise TrainingError(f"'{work}' already holds a training checkpoint: pass --resume to continue it, "
                            "or choose another --work-dir")
    if a.resume and not os.path.exists(os.path.join(work, "checkpoint.pt")):
        raise TrainingError(f"--resume: '{work}' holds no checkpoint.pt to continue")
    prompts = load_prompts(a.prompt_embeds)
    model, vae = _load(a)
    train_prompts, eval_ids = _split_prompts(a, prompts)
    train, held, data_id = _clips(a, model, vae, prompts, train_prompts, eval_ids, lh, lw, chunk, work)
    trainer = Trainer(model, train, held, prompts, cfg, work, vae, data_id, log=_say)
    if a.resume:
        trainer.load_checkpoint()
        _say(f"resumed at step {trainer.step} from {trainer.checkpoint_path}")
    _say(f"training {cfg.branches} on {len(train)} clips ({data_id.split(':')[0]}), {len(held)} held out; "
         f"work dir {work}")
    try:
        trainer.run(progress=Progress(cfg.steps, trainer.step))
    except KeyboardInterrupt:
        trainer.save_checkpoint()
        _say(f"\nstopped at step {trainer.step}; checkpoint saved: continue with the same command and --resume")
        raise SystemExit(130)
    trainer.export(a.out)
    _say(f"wrote {a.out} (load it in mode {cfg.inference_mode}); logs and loss.png in {work}")
    if a.final_eval_frames:
        from ..training.evaluation import run_evaluation
        base = SEED_SPAN * a.seed + 900_000
        res = run_evaluation(model, vae, a.out, [prompts[i] for i in eval_ids],
                             [base + i for i in range(a.final_eval_videos)], a.final_eval_frames, lh, lw, cache,
                             chunk, os.path.join(work, "eval"), trainer.sched_flow, progress=_say,
                             option="--work-dir")
        print(open(res["files"][2]).read())


def _split_prompts(a, prompts):
    """(prompt indices to train on, held-out prompt indices). Held-out prompts are appended to `prompts`."""
    ids = list(range(len(prompts)))
    if a.eval_prompt_embeds:
        extra = load_prompts(a.eval_prompt_embeds)
        prompts += extra
        return ids, list(range(len(ids), len(prompts)))
    if len(ids) >= 2:
        return ids[:-1], ids[-1:]
    _say("one prompt only: held-out clips differ by seed, not by prompt (give several prompts, or "
         "--eval-prompt-embeds, for held-out prompts)")
    return ids, ids


def _clips(a, model, vae, prompts, train_ids, eval_ids, lh, lw, chunk, work):
    cache_dir = os.path.join(work, "clips")
    report = lambda what: (lambda i, n: _say(f"{what} {i}/{n}") if i == n or i % max(1, n // 10) == 0 else None)
    if a.clips_dir:
        clips = video_clips(a.clips_dir, vae, a.clip_frames, a.width, a.height, cache_dir, len(train_ids),
                            report("encoded video"))
        for c in clips:
            c.prompt = train_ids[c.prompt]
        k = min(a.eval_clips, len(clips) - 1)
        if k < a.eval_clips:
            _say(f"only {len(clips)} clip window(s): {k} held out")
        return clips[:len(clips) - k], clips[len(clips) - k:], f"videos:{os.path.abspath(a.clips_dir)}:{len(clips)}"
    if a.clips < 1:
        raise DataError("--clips must be >= 1")
    base = SEED_SPAN * a.seed
    train = rollout_clips(model, prompts, [base + i for i in range(a.clips)], a.clip_frames, lh, lw, chunk,
                          cache_dir, [train_ids[i % len(train_ids)] for i in range(a.clips)], report("rollout"))
    held = rollout_clips(model, prompts, [base + 500_000 + i for i in range(a.eval_clips)], a.clip_frames, lh, lw,
                         chunk, cache_dir, [eval_ids[i % len(eval_ids)] for i in range(a.eval_clips)])
    return train, held, f"rollouts:{a.clips}:{a.clip_frames}:{lh}x{lw}:seed{a.seed}:prompts{len(prompts)}"


# ----------------------------------------------------------------------------- evaluate-compressor
def cmd_evaluate(a) -> None:
    from ..training.evaluation import compressor_metadata, run_evaluation
    _check_inputs(a)
    lh, lw = _latent_size(a)
    check_output_folder("--out", a.out)
    meta = compressor_metadata(a.compressor) if a.compressor else {}
    cache, chunk = _sizes(a, meta)
    if a.frames % chunk:
        raise ValueError(f"--frames {a.frames} must be a multiple of the chunk length {chunk}")
    prompts = load_prompts(a.prompt_embeds)
    model, vae = _load(a)
    res = run_evaluation(model, vae, a.compressor, prompts, a.seeds, a.frames, lh, lw, cache, chunk, a.out,
                         names=tuple(a.modes), progress=_say)
    print(open(res["files"][2]).read())
