"""The Ichigo-Whisper tokenizer network: Whisper's encoder plus the quantizer head.

Tensors in, tensors out: this module does no I/O (checkpoint.py and whisper_weights.py
read files). The numerics follow the reference (ichigo-asr 0.1.1) step by step, see
shared/ichigo-reference.md; where the order of floating-point operations matters for the
argmax, the same operations are used in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import whisper
from torch import Tensor, nn
from whisper.model import AudioEncoder

from .constants import ENCODER_POSITIONS, MEL_PAD_VALUE, N_FRAMES, WINDOW_SAMPLES
from .fixed_shape import DEFAULT_BUCKETS, FixedShapeEncoder
from .geometry import RELEASED_DOWNSAMPLE, TokenGeometry


@dataclass(frozen=True)
class QuantizerDims:
    """Shape and hyper-parameters of the quantizer head (everything not in the weights' names)."""

    width: int = 1024  # Whisper encoder width: 1024 for medium, 1280 for large-v3
    n_head: int = 16
    depth: int = 1  # attention blocks of the dequantizer
    ffn_mult: int = 4
    codebook_size: int = 2561  # including the mask code
    codebook_dim: int = 64
    mask_token: int = 2048  # the code that stands for padding
    downsample: int = RELEASED_DOWNSAMPLE  # encoder frames per token (see geometry.py)
    downsample_mean: bool = True  # mean adjacent frames (else take every downsample-th)
    query_mult: float = 2.0
    rope: bool = True

    def __post_init__(self) -> None:
        if self.width % self.n_head:
            raise ValueError(f"width {self.width} is not a multiple of n_head {self.n_head}")
        if not 0 <= self.mask_token < self.codebook_size:
            raise ValueError(f"mask token {self.mask_token} outside codebook {self.codebook_size}")

    @property
    def head_width(self) -> int:
        return self.width // self.n_head

    @property
    def qk_scale(self) -> float:
        # Queries and keys are each scaled by sqrt(qk_scale), on top of SDPA's own 1/sqrt(d).
        return self.query_mult * 8 / math.sqrt(self.head_width)

    @property
    def geometry(self) -> TokenGeometry:
        """Token counts and rate; ValueError for a downsample this package cannot serve.

        Not checked in __post_init__: writing a checkpoint of an unsupported config (to test
        that loading refuses it) must still work.
        """
        return TokenGeometry(self.downsample)


@dataclass(frozen=True)
class TextOptions:
    """Options for decoding tokens to text with Whisper's decoder."""

    language: str | None = None  # None: Whisper detects it
    prompt: str | None = None
    task: str = "transcribe"


class FloatLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, as Whisper and the reference do."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def _mlp(width: int, ffn_mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, width * ffn_mult), nn.GELU(), nn.Linear(width * ffn_mult, width)
    )


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, rotate-half form; inv_freq is a checkpoint buffer."""

    def __init__(self, head_width: int, base: float = 10_000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_width, 2).float() / head_width))
        self.register_buffer("inv_freq", inv_freq)

    def cos_sin(self, length: int) -> tuple[Tensor, Tensor]:
        t = torch.arange(length, device=self.inv_freq.device).type_as(self.inv_freq)
        freqs = torch.einsum("i,j->ij", t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]

    @staticmethod
    def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


class SelfAttention(nn.Module):
    def __init__(self, dims: QuantizerDims) -> None:
        super().__init__()
        self.n_head = dims.n_head
        self.sqrt_qk_scale = math.sqrt(dims.qk_scale)
        self.query = nn.Linear(dims.width, dims.width)
        self.key = nn.Linear(dims.width, dims.width, bias=False)
        self.value = nn.Linear(dims.width, dims.width)
        self.out = nn.Linear(dims.width, dims.width)
        self.rotary = RotaryEmbedding(dims.head_width) if dims.rope else None

    def _heads(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        x = x.view(*x.shape[:2], self.n_head, -1)
        if rope is not None:
            x = RotaryEmbedding.rotate(x, *rope)
        return x.permute(0, 2, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        rope = self.rotary.cos_sin(x.shape[1]) if self.rotary is not None else None
        q = self._heads(self.query(x) * self.sqrt_qk_scale, rope)
        k = self._heads(self.key(x) * self.sqrt_qk_scale, rope)
        v = self._heads(self.value(x), None)
        wv = F.scaled_dot_product_attention(q, k, v)
        return self.out(wv.permute(0, 2, 1, 3).flatten(start_dim=2))


class AttentionBlock(nn.Module):
    """Pre-LN self-attention (no mask) then pre-LN MLP, both residual."""

    def __init__(self, dims: QuantizerDims) -> None:
        super().__init__()
        self.attn = SelfAttention(dims)
        self.attn_ln = FloatLayerNorm(dims.width)
        self.mlp = _mlp(dims.width, dims.ffn_mult)
        self.mlp_ln = FloatLayerNorm(dims.width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class QuantizerHead(nn.Module):
    """Encoder features -> token ids (quantize) and token ids -> decoder embeddings (dequantize)."""

    def __init__(self, dims: QuantizerDims) -> None:
        super().__init__()
        self.dims = dims
        self.mlp_ln = FloatLayerNorm(dims.width)
        self.mlp = _mlp(dims.width, dims.ffn_mult)
        self.project_in = nn.Linear(dims.width, dims.codebook_dim)
        self.project_out = nn.Linear(dims.codebook_dim, dims.width)
        # Stored L2-normalised by training; used as stored, never renormalised, so the
        # argmax matches the reference bit for bit.
        self.register_buffer("codebook", torch.zeros(dims.codebook_size, dims.codebook_dim))
        self.positional_embedding = nn.Embedding(ENCODER_POSITIONS, dims.width)
        self.blocks = nn.ModuleList(AttentionBlock(dims) for _ in range(dims.depth))
        self.ln_post = FloatLayerNorm(dims.width)

    def quantize(self, features: Tensor) -> Tensor:
        """(B, 1500, width) encoder output -> (B, 1500 // downsample) token ids of the window."""
        x = features.float()  # the head is cheap: always float32, whatever the encoder ran in
        b, t, w = x.shape
        step = self.dims.downsample
        if self.dims.downsample_mean:
            x = x.reshape(b, t // step, step, w).mean(-2)
        else:
            x = x[:, ::step]
        x = x + self.mlp(self.mlp_ln(x))
        z = F.normalize(self.project_in(x), p=2, dim=-1)
        # One flat (1, B*T, d) einsum, the same contraction the reference's codebook runs.
        sim = torch.einsum("hnd,hcd->hnc", z.reshape(1, -1, z.shape[-1]), self.codebook[None])
        return sim.argmax(dim=-1).reshape(b, -1)

    def dequantize(self, tokens: Tensor) -> Tensor:
        """(B, 1500 // downsample) ids (padding = mask token) -> (B, 1500, width) embeddings."""
        x = self.codebook[tokens.long()]
        x = x.repeat_interleave(self.dims.downsample, dim=-2)
        x = self.project_out(x)
        x = x + self.positional_embedding.weight[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class IchigoTokenizer(nn.Module):
    """Whisper encoder + quantizer head: batches of 16 kHz clips (<= 30 s each) -> tokens.

    The encoder runs in `dtype`; the log-mel and the head run in float32. Whisper's text
    decoder is attached separately (attach_text_model) only when text is wanted.
    """

    def __init__(self, encoder: AudioEncoder, head: QuantizerHead, n_mels: int) -> None:
        super().__init__()
        positions = encoder.positional_embedding.shape[0]
        if positions != ENCODER_POSITIONS:
            # Every window is a 3000-frame mel; the conv stem's stride 2 makes it 1500 positions.
            raise ValueError(f"encoder has {positions} positions, windows need {ENCODER_POSITIONS}")
        self.geometry = TokenGeometry(head.dims.downsample, positions)  # ValueError if unsupported
        self.encoder = encoder
        self.head = head
        self.n_mels = n_mels
        self._text_model: list[whisper.model.Whisper] = []  # a list keeps it out of .to()/state
        # Set by use_fixed_shapes: the encoder then runs at bucketed batch sizes.
        self.fixed_shapes: FixedShapeEncoder | None = None

    @property
    def dims(self) -> QuantizerDims:
        return self.head.dims

    @property
    def device(self) -> torch.device:
        return self.head.codebook.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv1.weight.dtype

    def to_runtime(self, device: str | torch.device, dtype: torch.dtype) -> IchigoTokenizer:
        """Move to a device; the encoder takes `dtype`, the head stays float32."""
        self.to(device)
        self.encoder.to(dtype)
        # Whisper's LayerNorm computes in float32 and needs float32 parameters to do so.
        for module in self.encoder.modules():
            if isinstance(module, nn.LayerNorm):
                module.float()
        return self.eval()

    def window_tokens(self, mels: Tensor) -> Tensor:
        """(B, n_mels, 3000) mel windows in the encoder's dtype -> (B, tokens_per_window) ids."""
        return self.head.quantize(self.encoder(mels))

    def use_fixed_shapes(
        self, mode: str, buckets: Sequence[int] = DEFAULT_BUCKETS, *, warm_up: bool = True
    ) -> None:
        """Run the encoder at bucketed batch sizes from now on (mode: a LoadOptions.compile
        other than none); with warm_up, compile/capture every bucket now. Call after
        to_runtime: graphs capture the weights where they are."""
        self.fixed_shapes = FixedShapeEncoder(
            self.window_tokens,
            mode,
            window_shape=(self.n_mels, N_FRAMES),
            dtype=self.dtype,
            device=self.device,
            buckets=buckets,
        )
        if warm_up:
            self.fixed_shapes.warm_up()

    def log_mel_window(self, audio: Tensor) -> Tensor:
        """One clip -> its (n_mels, 3000) window: own log-mel (own clamp), mel padded with -1.5."""
        if audio.ndim != 1 or audio.shape[0] > WINDOW_SAMPLES:
            raise ValueError(
                f"expected one clip of at most {WINDOW_SAMPLES} samples, got {tuple(audio.shape)}"
            )
        mel = whisper.log_mel_spectrogram(audio[None].float().to(self.device), self.n_mels)
        return F.pad(mel, (0, N_FRAMES - mel.shape[-1]), value=MEL_PAD_VALUE)[0]

    @torch.inference_mode()
    def quantize(self, clips: Sequence[Tensor]) -> list[Tensor]:
        """Tokens of each clip (1-D float32 16 kHz, <= 30 s), all in one encoder batch."""
        counts = [self.geometry.n_tokens(int(clip.shape[-1])) for clip in clips]
        todo = [i for i, count in enumerate(counts) if count > 0]
        out = [torch.zeros(0, dtype=torch.long, device=self.device) for _ in clips]
        if not todo:
            return out
        mels = torch.stack([self.log_mel_window(clips[i]) for i in todo]).to(self.dtype)
        run = self.fixed_shapes or self.window_tokens
        tokens = run(mels)
        for row, i in enumerate(todo):
            out[i] = tokens[row, : counts[i]]
        return out

    def pad_tokens(self, tokens: Sequence[Sequence[int] | Tensor]) -> Tensor:
        """Token lists -> (B, tokens_per_window) on the device, padded with the mask token."""
        width = self.geometry.tokens_per_window
        batch = torch.full((len(tokens), width), self.dims.mask_token, dtype=torch.long)
        for row, seq in enumerate(tokens):
            seq_t = torch.as_tensor(seq, dtype=torch.long).flatten()
            if seq_t.numel() > width:
                raise ValueError(f"at most {width} tokens per window, got {seq_t.numel()}")
            if seq_t.numel() and (seq_t.min() < 0 or seq_t.max() >= self.dims.codebook_size):
                raise ValueError(f"token ids must be in [0, {self.dims.codebook_size})")
            batch[row, : seq_t.numel()] = seq_t
        return batch.to(self.device)

    @torch.inference_mode()
    def dequantize(self, tokens: Sequence[Sequence[int] | Tensor]) -> Tensor:
        """Token lists -> (B, 1500, width) float32 embeddings for Whisper's decoder."""
        return self.head.dequantize(self.pad_tokens(tokens))

    def attach_text_model(self, model: whisper.model.Whisper) -> None:
        """Give the tokenizer a Whisper model whose decoder turns embeddings into text."""
        self._text_model[:] = [model]

    @property
    def has_text_model(self) -> bool:
        return bool(self._text_model)

    @property
    def text_model(self) -> whisper.model.Whisper:
        """The attached Whisper model (RuntimeError if none)."""
        if not self._text_model:
            raise RuntimeError("no Whisper text model attached; load with text=True")
        return self._text_model[0]

    @torch.inference_mode()
    def decode_text(
        self, tokens: Sequence[Sequence[int] | Tensor], options: TextOptions = TextOptions()
    ) -> list[str]:
        """Token lists -> text, through dequantize and Whisper's decoder (greedy)."""
        if not self._text_model:
            raise RuntimeError("no Whisper text model attached; load with text=True")
        if not tokens:
            return []
        model = self._text_model[0]
        fp16 = model.decoder.token_embedding.weight.dtype == torch.float16
        embeddings = self.dequantize(tokens).to(torch.float16 if fp16 else torch.float32)
        decoding = whisper.DecodingOptions(
            task=options.task, language=options.language, prompt=options.prompt, fp16=fp16
        )
        results = model.decode(embeddings, decoding)
        return [result.text.strip() for result in results]
