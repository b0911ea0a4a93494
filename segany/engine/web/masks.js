// Masks in the browser. Two sources reach the page:
// - accepted objects come as COCO compressed RLE ({size: [h, w], counts: "..."});
// - a click's three candidates come as the decoder's low-res logits (int16, 1/scale units),
//   which are upscaled to the image and thresholded at zero exactly as the predictor does.
// Both become a Uint8Array in row-major order (index y * width + x), 1 inside the mask.
"use strict";

const Masks = (() => {
  // RLE runs alternate background/foreground, start with background and walk the image
  // column by column. The string packs each run length in 5-bit groups (offset by 48 to
  // printable characters), 0x20 meaning "more groups follow" and 0x10 in the last group the
  // sign; from the third run on, the value is a difference to the run two places before.
  function runs(counts) {
    const out = [];
    let position = 0;
    while (position < counts.length) {
      let value = 0;
      let shift = 0;
      let more = true;
      while (more) {
        const code = counts.charCodeAt(position++) - 48;
        value |= (code & 0x1f) << shift;
        more = (code & 0x20) !== 0;
        shift += 5;
        if (!more && (code & 0x10)) value |= -1 << shift;
      }
      if (out.length > 2) value += out[out.length - 2];
      out.push(value);
    }
    return out;
  }

  function fromRle(rle) {
    const [height, width] = rle.size;
    const mask = new Uint8Array(height * width);
    let index = 0;
    let inside = false;
    for (const length of runs(rle.counts)) {
      if (inside) {
        for (let i = index; i < index + length; i++) {
          const x = (i / height) | 0;
          mask[(i - x * height) * width + x] = 1;
        }
      }
      index += length;
      inside = !inside;
    }
    return mask;
  }

  // The predictor upscales logits in two bilinear steps with half-pixel centres (PyTorch's
  // align_corners=False): by `upscale` to the resized-image frame (inputSize), then to the
  // image. Along one axis the two steps compose into 4 taps on the low-res logits per output
  // pixel: output o samples frame position q, which samples low-res position p; positions
  // are clamped at 0 and indices at the last row/column, as PyTorch does.
  function taps(size, inputSize, upscale, limit) {
    const index = new Int32Array(4 * size), weight = new Float64Array(4 * size);
    const sample = (position, last) => {
      const first = Math.min(Math.floor(position), last);
      return [first, Math.min(first + 1, last), Math.min(Math.max(position - first, 0), 1)];
    };
    for (let o = 0; o < size; o++) {
      const [q0, q1, lq] = sample(Math.max(0, ((o + 0.5) * inputSize) / size - 0.5), inputSize - 1);
      [[q0, 1 - lq], [q1, lq]].forEach(([q, wq], k) => {
        const [p0, p1, lp] = sample(Math.max(0, (q + 0.5) / upscale - 0.5), limit - 1);
        index[4 * o + 2 * k] = p0;
        weight[4 * o + 2 * k] = wq * (1 - lp);
        index[4 * o + 2 * k + 1] = p1;
        weight[4 * o + 2 * k + 1] = wq * lp;
      });
    }
    return { index, weight };
  }

  // Low-res logits (rows x cols, row-major) to the width x height mask "logit > 0".
  function fromLogits(logits, rows, cols, inputSize, upscale, width, height) {
    const ys = taps(height, inputSize[0], upscale, rows), xs = taps(width, inputSize[1], upscale, cols);
    const line = new Float64Array(cols);
    const mask = new Uint8Array(width * height);
    for (let y = 0; y < height; y++) {
      line.fill(0);
      for (let k = 4 * y; k < 4 * y + 4; k++) {
        const offset = ys.index[k] * cols, w = ys.weight[k];
        if (w !== 0) for (let j = 0; j < cols; j++) line[j] += w * logits[offset + j];
      }
      const row = y * width;
      for (let x = 0; x < width; x++) {
        const k = 4 * x;
        const value = xs.weight[k] * line[xs.index[k]] + xs.weight[k + 1] * line[xs.index[k + 1]] +
          xs.weight[k + 2] * line[xs.index[k + 2]] + xs.weight[k + 3] * line[xs.index[k + 3]];
        mask[row + x] = value > 0 ? 1 : 0;
      }
    }
    return mask;
  }

  // Paint a mask into an RGBA pixel buffer (Uint32Array view of an ImageData): the inside in
  // `fill`, a border of `thickness` pixels in `edge` (colours as 0xAABBGGRR).
  function paint(pixels, mask, width, height, fill, edge, thickness) {
    for (let y = 0; y < height; y++) {
      const row = y * width;
      for (let x = 0; x < width; x++) {
        if (!mask[row + x]) continue;
        const border =
          x < thickness || y < thickness || x >= width - thickness || y >= height - thickness ||
          !mask[row + x - thickness] || !mask[row + x + thickness] ||
          !mask[row + x - thickness * width] || !mask[row + x + thickness * width];
        pixels[row + x] = border ? edge : fill;
      }
    }
  }

  return { runs, fromRle, fromLogits, paint };
})();
