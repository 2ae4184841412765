// AudioWorklet: microphone frames -> 16 kHz mono PCM16 chunks for the ichigo-stream protocol.
//
// Runs on the audio rendering thread at the AudioContext's rate (usually 44.1 or 48 kHz).
// Each render quantum (128 frames) is mixed down to mono, resampled to 16 kHz by Resampler
// below, converted to signed 16-bit and posted to the page in chunks of `chunkMs` (default
// 40 ms = 640 samples) together with the chunk's RMS and peak level.
//
// Resampler: a polyphase windowed-sinc FIR, i.e. band-limited interpolation with an
// anti-aliasing low-pass. The kernel is a sinc low-pass cut off at `cutoff` times the input
// rate, windowed by a Kaiser window designed for 80 dB of stopband attenuation (beta 7.86)
// and a transition band of 1 kHz that ends at the output Nyquist frequency (8 kHz): the
// passband is flat to 7 kHz and everything at or above 8 kHz, which would alias, is attenuated
// by at least 80 dB. The Kaiser formula N = (A - 7.95) / (14.36 * df / fs) gives the length:
// about 241 taps at 48 kHz, i.e. ~3.9 M multiply-adds per second of audio.
//
// The input/output ratio is taken as an exact fraction L/M (48000 -> 16000 is 1/3;
// 44100 -> 16000 is 160/441), so each output sample falls on one of L fractional positions
// between input samples; the kernel is precomputed once per position (the polyphase bank),
// and each phase is normalised to unit DC gain. Rates whose fraction needs more than 4096
// phases use the nearest of 4096 (a timing error below 1/8192 of an input sample, about
// -80 dB at 7 kHz). Equal rates pass through untouched; lower input rates (8 kHz) are
// interpolated up by the same code with the cut-off at their own Nyquist frequency.
//
// PCM16: floatToPcm16 below is the project's one float -> PCM16 rule (the Python side's
// ichigo_stream.audio.to_pcm16, tested to agree byte for byte): x * 2^15, rounded half to
// even, clipped to [-32768, 32767]. Non-finite input samples (a broken microphone or driver)
// are replaced by silence before the resampler, as the Python mic client does: one NaN in the
// filter's history would turn every output it touches into NaN.
//
// This file is a module: the page loads it with audioWorklet.addModule; the tests import
// the Resampler and floatToPcm16 from Node or the page (the processor is only defined where
// AudioWorkletProcessor exists).

const STOPBAND_DB = 80;
const MAX_PHASES = 4096;
const PCM16_SCALE = 32768; // 2^15: int16 <-> float, as libsndfile, ffmpeg and the server read PCM
const PCM16_MIN = -32768;
const PCM16_MAX = 32767;

/** Round to the nearest integer, ties to even (numpy's rint; Math.round sends ties up). */
export function roundHalfEven(x) {
  const r = Math.round(x); // ties toward +infinity
  // r - x is exact for |x| < 2^52; a tie that went up to an odd integer goes down instead.
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * One sample as signed 16-bit PCM: the value as float32 (the protocol's sample type), times
 * 2^15 (exact), rounded half to even, clipped. A non-finite sample has no right value: it
 * throws, like the Python side; the processor cleans its input so that never happens there.
 */
export function floatToPcm16(sample) {
  if (!Number.isFinite(sample)) {
    throw new RangeError(`cannot convert a non-finite sample (${sample}) to 16-bit PCM`);
  }
  const scaled = roundHalfEven(Math.fround(sample) * PCM16_SCALE);
  // + 0 turns -0 into 0: the Python side's int16 has no negative zero either.
  return Math.min(PCM16_MAX, Math.max(PCM16_MIN, scaled)) + 0;
}

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Zeroth-order modified Bessel function of the first kind (series; converges fast). */
function besselI0(x) {
  let sum = 1;
  let term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 64; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

export class Resampler {
  /**
   * @param {number} inRate input sample rate in Hz (integer)
   * @param {number} outRate output sample rate in Hz (integer), 16000 for the protocol
   * @param {{transitionHz?: number, stopbandDb?: number}} [options]
   */
  constructor(inRate, outRate = 16000, options = {}) {
    if (!Number.isInteger(inRate) || !Number.isInteger(outRate) || inRate <= 0 || outRate <= 0) {
      throw new RangeError(`sample rates must be positive integers: ${inRate} -> ${outRate}`);
    }
    this.inRate = inRate;
    this.outRate = outRate;
    this.passthrough = inRate === outRate;
    const g = gcd(inRate, outRate);
    this.L = outRate / g; // output positions per period: the number of phases
    this.M = inRate / g; // input samples per period
    const nyquist = Math.min(inRate, outRate) / 2;
    const attenuation = options.stopbandDb ?? STOPBAND_DB;
    const transition = options.transitionHz ?? nyquist / 8; // 1 kHz for 16 kHz output
    const cutoffHz = nyquist - transition / 2;
    this.cutoffHz = cutoffHz;
    // Kaiser's beta for this attenuation (his empirical formula).
    const beta =
      attenuation > 50
        ? 0.1102 * (attenuation - 8.7)
        : 0.5842 * Math.max(0, attenuation - 21) ** 0.4 + 0.07886 * Math.max(0, attenuation - 21);
    // Kernel length in input samples (Kaiser's estimate), as a half-width H around the centre.
    const taps = (attenuation - 7.95) / (14.36 * (transition / inRate)) + 1;
    const half = taps / 2;
    this.K = Math.ceil(half); // each output reads input samples i-K .. i+K
    this.taps = 2 * this.K + 1;
    const fc = cutoffHz / inRate; // cycles per input sample
    const i0beta = besselI0(beta);
    this.quantized = this.L > MAX_PHASES;
    const phases = this.quantized ? MAX_PHASES + 1 : this.L;
    const phaseStep = 1 / (this.quantized ? MAX_PHASES : this.L);
    this.bank = [];
    for (let p = 0; p < phases; p++) {
      const frac = p * phaseStep; // output time = i + frac, in input samples
      const h = new Float64Array(this.taps);
      let sum = 0;
      for (let k = 0; k < this.taps; k++) {
        // tap k reads x[i - K + k]; tau = t - j = frac + K - k
        const tau = frac + this.K - k;
        const r = tau / half;
        if (Math.abs(r) >= 1) continue;
        const x = 2 * fc * tau;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = besselI0(beta * Math.sqrt(1 - r * r)) / i0beta;
        h[k] = 2 * fc * sinc * w;
        sum += h[k];
      }
      const taps32 = new Float32Array(this.taps);
      for (let k = 0; k < this.taps; k++) taps32[k] = h[k] / sum; // unit DC gain per phase
      this.bank.push(taps32);
    }
    // Input history: buf[0] holds input sample number `bufStart` (negative: zeros before 0).
    this.buf = new Float32Array(8192);
    this.bufStart = -this.K;
    this.bufLen = this.K; // K zeros of history before the first sample
    this.i = 0; // input index of the next output sample
    this.p = 0; // its phase numerator: output time = i + p / L
    this.out = new Float32Array(1024);
    this.latencySamples = this.passthrough ? 0 : this.K; // input samples of look-ahead
  }

  /** Feed input samples; returns a view of the output samples they completed (reused). */
  push(input) {
    if (this.passthrough) {
      if (this.out.length < input.length) this.out = new Float32Array(input.length);
      this.out.set(input);
      return this.out.subarray(0, input.length);
    }
    this._append(input);
    const maxOut = Math.ceil(((this.bufLen + 1) * this.L) / this.M) + 2;
    if (this.out.length < maxOut) this.out = new Float32Array(maxOut * 2);
    const { buf, bank, L, M, K, taps, out } = this;
    const end = this.bufStart + this.bufLen; // first input index not yet received
    let n = 0;
    let i = this.i;
    let p = this.p;
    while (i + K < end) {
      const h = bank[this.quantized ? Math.round((p * MAX_PHASES) / L) : p];
      const base = i - K - this.bufStart;
      let acc = 0;
      for (let k = 0; k < taps; k++) acc += buf[base + k] * h[k];
      out[n++] = acc;
      p += M;
      while (p >= L) {
        p -= L;
        i += 1;
      }
    }
    this.i = i;
    this.p = p;
    this._discardBefore(i - K);
    return out.subarray(0, n);
  }

  /** The output still held back by the filter's look-ahead: feed K zeros of silence. */
  flush() {
    return this.passthrough ? new Float32Array(0) : this.push(new Float32Array(this.K + 1));
  }

  _append(input) {
    if (this.bufLen + input.length > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.bufLen + input.length));
      bigger.set(this.buf.subarray(0, this.bufLen));
      this.buf = bigger;
    }
    this.buf.set(input, this.bufLen);
    this.bufLen += input.length;
  }

  _discardBefore(index) {
    const drop = index - this.bufStart;
    if (drop <= 0 || drop < this.buf.length / 2) return; // compact only now and then
    this.buf.copyWithin(0, drop, this.bufLen);
    this.bufLen -= drop;
    this.bufStart = index;
  }
}

if (typeof AudioWorkletProcessor === "function" && typeof registerProcessor === "function") {
  class CaptureProcessor extends AudioWorkletProcessor {
    constructor(options) {
      super();
      const opts = options.processorOptions || {};
      const targetRate = opts.targetRate || 16000;
      // sampleRate is the AudioWorkletGlobalScope's: the AudioContext's rate.
      this.resampler = new Resampler(sampleRate, targetRate);
      this.chunkSize = Math.round((targetRate * (opts.chunkMs || 40)) / 1000);
      this.chunk = new Int16Array(this.chunkSize);
      this.filled = 0;
      this.sumSquares = 0;
      this.peak = 0;
      this.mono = new Float32Array(128);
      this.running = true;
      this.port.onmessage = (event) => {
        const { type } = event.data || {};
        if (type === "flush") {
          // The last samples: what the filter still holds, then the partial chunk.
          this._consume(this.resampler.flush());
          this._post();
          this.port.postMessage({ type: "flushed" });
        } else if (type === "close") {
          this.running = false;
        }
      };
      this.port.postMessage({
        type: "info",
        inputRate: sampleRate,
        outputRate: targetRate,
        taps: this.resampler.passthrough ? 0 : this.resampler.taps,
        phases: this.resampler.passthrough ? 1 : this.resampler.bank.length,
        cutoffHz: this.resampler.cutoffHz,
      });
    }

    process(inputs) {
      const input = inputs[0];
      if (input && input.length > 0) {
        const frames = input[0].length;
        if (this.mono.length < frames) this.mono = new Float32Array(frames);
        const mono = this.mono.subarray(0, frames);
        mono.set(input[0]);
        if (input.length > 1) {
          for (let c = 1; c < input.length; c++) {
            const channel = input[c];
            for (let k = 0; k < frames; k++) mono[k] += channel[k];
          }
          const scale = 1 / input.length;
          for (let k = 0; k < frames; k++) mono[k] *= scale;
        }
        for (let k = 0; k < frames; k++) {
          if (!Number.isFinite(mono[k])) mono[k] = 0; // a broken source: silence (see top)
        }
        this._consume(this.resampler.push(mono));
      }
      return this.running;
    }

    _consume(samples) {
      for (let k = 0; k < samples.length; k++) {
        const s = samples[k];
        this.sumSquares += s * s;
        const a = s < 0 ? -s : s;
        if (a > this.peak) this.peak = a;
        this.chunk[this.filled++] = floatToPcm16(s);
        if (this.filled === this.chunkSize) this._post();
      }
    }

    _post() {
      if (this.filled === 0) return;
      const pcm = this.filled === this.chunkSize ? this.chunk : this.chunk.slice(0, this.filled);
      const rms = Math.sqrt(this.sumSquares / this.filled);
      this.port.postMessage({ type: "audio", pcm, rms, peak: this.peak }, [pcm.buffer]);
      this.chunk = new Int16Array(this.chunkSize);
      this.filled = 0;
      this.sumSquares = 0;
      this.peak = 0;
    }
  }

  registerProcessor("ichigo-capture", CaptureProcessor);
}
