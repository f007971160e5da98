"""Wan's text encoder (UMT5-XXL) without ComfyUI: prompt text -> prompt embeddings.

Reads the text-encoder files artists already have (ComfyUI's umt5_xxl_fp8_e4m3fn_scaled.safetensors
or umt5_xxl_fp16 / bf16 .safetensors, which carry their sentencepiece tokenizer) and gives what
ComfyUI's CLIPLoader (type wan) + CLIPTextEncode give on them.

  tokenizer.py  prompt -> token ids and bracket weights (ComfyUI's rules)
  weights.py    the file: names, sizes, fp8 scales, the tokenizer inside
  umt5.py       the UMT5 encoder
  encoder.py    TextEncoder (load, encode, close) and encode_prompts (load, encode all, free, measure)
  tiny.py       tiny random files in the same layout, for tests
"""
from .encoder import EncodeReport, TextEncoder, choose_device, encode_prompts
from .tokenizer import TokenizerError, UMT5Tokenizer
from .weights import TextEncoderFileError

__all__ = ["TextEncoder", "EncodeReport", "encode_prompts", "choose_device", "UMT5Tokenizer",
           "TokenizerError", "TextEncoderFileError"]
