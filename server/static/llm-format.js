// The token text formats the Ichigo LLMs read, built in the browser when the server sent none.
// Mirrors ichigo_stream/tokens.py exactly:
//   "ichigo"     (Ichigo-llama3.1 v0.3/v0.4): <|sound_start|><|sound_NNNN|>...<|sound_end|>
//   "ichigo-rle" (v0.5): as "ichigo", but a run of k > 1 equal ids is
//                <|duration_KK|><|sound_NNNN|>; readers take exactly two digits of KK,
//                so runs longer than 99 are split.

export const LLM_FORMATS = ["ichigo-rle", "ichigo"];
export const SOUND_START = "<|sound_start|>";
export const SOUND_END = "<|sound_end|>";
const MAX_TOKEN_ID = 9999; // <|sound_NNNN|> has exactly four digits
const MAX_RUN = 99; // <|duration_KK|> has exactly two digits

function sound(token) {
  if (!Number.isInteger(token) || token < 0 || token > MAX_TOKEN_ID) {
    throw new RangeError(`token ${token} is outside the valid range 0..${MAX_TOKEN_ID}`);
  }
  return `<|sound_${String(token).padStart(4, "0")}|>`;
}

/** [id, length] of each run of equal consecutive ids, no run longer than 99. */
export function runs(tokens) {
  const out = [];
  for (const token of tokens) {
    const last = out[out.length - 1];
    if (last && last[0] === token && last[1] < MAX_RUN) last[1] += 1;
    else out.push([token, 1]);
  }
  return out;
}

export function toIchigo(tokens) {
  return SOUND_START + tokens.map(sound).join("") + SOUND_END;
}

export function toIchigoRle(tokens) {
  const body = runs(tokens).map(([token, k]) =>
    k === 1 ? sound(token) : `<|duration_${String(k).padStart(2, "0")}|>${sound(token)}`,
  );
  return SOUND_START + body.join("") + SOUND_END;
}

/** tokens -> the LLM text of `format` ("ichigo" or "ichigo-rle"). */
export function formatTokens(tokens, format) {
  if (format === "ichigo") return toIchigo(tokens);
  if (format === "ichigo-rle") return toIchigoRle(tokens);
  throw new RangeError(`unknown LLM format ${JSON.stringify(format)}: expected ${LLM_FORMATS}`);
}
