// Driving sequences in the browser: every format the viewer can open, turned into its own JSON
// {num_frames, params_dim, fps, frames, names, source}, and the layout check by parameter name.
// Same rules as exporter/interop/sequences.py (docs/interop.md):
//  - .json: the viewer's / the authors' format (passed through), or ARKit-52 weights (a list of
//    per-frame {name: value} objects, {fps, frames: [...]}, a column object {name: [values]}, or
//    MediaPipe-style [{categoryName, score}] lists);
//  - .csv: ARKit-52 with the names as columns (Live Link Face: Timecode, BlendShapeCount, the 52
//    names, head/eye rotations - dropped);
//  - .npz: VHAP/GaussianAvatars flame_param.npz (expr, jaw_pose; neck, eyes and head pose dropped)
//    or SMIRK outputs stacked per frame (expression_params/exp, jaw_params/jawpose,
//    eyelid_params/eyelid). The zip container and the .npy arrays are parsed here (stored or
//    deflate entries, zip64 sizes); object (pickled) arrays are refused.
// A sequence from a foreign format is matched to the bundle by name and refused when its layout
// does not fit (e.g. ARKit weights against a FLAME-layout bundle).

import { halfTable } from "./half.js";

export class SequenceFormatError extends Error {}

export const ARKIT_NAMES = (
  "browDownLeft browDownRight browInnerUp browOuterUpLeft browOuterUpRight cheekPuff cheekSquintLeft " +
  "cheekSquintRight eyeBlinkLeft eyeBlinkRight eyeLookDownLeft eyeLookDownRight eyeLookInLeft eyeLookInRight " +
  "eyeLookOutLeft eyeLookOutRight eyeLookUpLeft eyeLookUpRight eyeSquintLeft eyeSquintRight eyeWideLeft " +
  "eyeWideRight jawForward jawLeft jawOpen jawRight mouthClose mouthDimpleLeft mouthDimpleRight mouthFrownLeft " +
  "mouthFrownRight mouthFunnel mouthLeft mouthLowerDownLeft mouthLowerDownRight mouthPressLeft mouthPressRight " +
  "mouthPucker mouthRight mouthRollLower mouthRollUpper mouthShrugLower mouthShrugUpper mouthSmileLeft " +
  "mouthSmileRight mouthStretchLeft mouthStretchRight mouthUpperUpLeft mouthUpperUpRight noseSneerLeft " +
  "noseSneerRight tongueOut"
).split(" ");
const ARKIT_LOWER = new Map(ARKIT_NAMES.map((n) => [n.toLowerCase(), n]));
const POSE_COLUMNS = new Set(["headyaw", "headpitch", "headroll", "lefteyeyaw", "lefteyepitch", "lefteyeroll",
  "righteyeyaw", "righteyepitch", "righteyeroll"]);
const META_COLUMNS = new Set(["timecode", "blendshapecount", "time", "timestamp", "frame", "_neutral"]);
const FLAME_TAIL = ["jaw_x", "jaw_y", "jaw_z", "eyelid_l", "eyelid_r"];
const SMIRK_KEYS = { expression: ["expression_params", "exp", "expression"], jaw: ["jaw_params", "jawpose", "jaw", "jaw_pose"],
  eyelids: ["eyelid_params", "eyelid", "eyelids"] };
const VHAP_DROPPED = ["translation", "rotation", "neck_pose", "eyes_pose", "shape", "static_offset", "dynamic_offset"];
const DEFAULT_FPS = { smirk: 25, vhap: 25, arkit: 60 }; // SMIRK: the rate the authors' exporter writes
const EXP = /^exp_(\d+)$/;
const MAX_BYTES = 512 << 20;

/** exp_0..exp_{E-1}, jaw_x, jaw_y, jaw_z, eyelid_l, eyelid_r (the authors' condition for E = 50). */
export function flameNames(expressionCount = 50) {
  return [...Array(expressionCount).keys()].map((i) => `exp_${i}`).concat(FLAME_TAIL);
}

/** A short name of a parameter layout for messages (same wording as the Python side). */
export function describeLayout(names) {
  const s = new Set(names);
  const extras = [["jaw", FLAME_TAIL.slice(0, 3)], ["eyelids", FLAME_TAIL.slice(3)]]
    .filter(([, members]) => members.some((m) => s.has(m))).map(([t]) => t);
  const tail = extras.length ? ` + ${extras.join(", ")}` : "";
  const arkit = names.filter((n) => ARKIT_LOWER.get(n.toLowerCase()) === n).length;
  const exps = names.map((n) => EXP.exec(n)).filter(Boolean).map((m) => Number(m[1])).sort((a, b) => a - b);
  if (arkit >= 26) return `ARKit-${arkit}${tail}`;
  if (exps.length) {
    const range = exps.length > 1 ? `exp_${exps[0]}..exp_${exps[exps.length - 1]}` : `exp_${exps[0]}`;
    return `FLAME (${range}${tail})`;
  }
  return `${names.length} named parameters (${names.slice(0, 3).join(", ")}${names.length > 3 ? ", ..." : ""})`;
}

/**
 * Map sequence columns onto bundle parameters by name; throws on a layout mismatch. FLAME
 * components exp_i beyond the bundle's count are dropped (index -1); any other unknown name fails.
 */
export function matchLayout(seqNames, bundleNames, label = "sequence") {
  const where = new Map(bundleNames.map((n, i) => [n, i]));
  const bundleExp = bundleNames.filter((n) => EXP.test(n)).length;
  const index = [];
  const unknown = [];
  const dropped = [];
  for (const name of seqNames) {
    const m = EXP.exec(name);
    if (where.has(name)) index.push(where.get(name));
    else {
      index.push(-1);
      if (m && bundleExp && Number(m[1]) >= bundleExp) dropped.push(name);
      else unknown.push(name);
    }
  }
  if (unknown.length) {
    const shown = unknown.slice(0, 4).join(", ") + (unknown.length > 4 ? ", ..." : "");
    throw new SequenceFormatError(`${label}: its parameter layout, ${describeLayout(seqNames)}, does not match the ` +
      `bundle's, ${describeLayout(bundleNames)}: ${unknown.length} of its ${seqNames.length} parameters are not in the ` +
      `bundle (${shown})`);
  }
  const matched = index.filter((i) => i >= 0).length;
  if (!matched) {
    throw new SequenceFormatError(`${label}: none of its ${seqNames.length} parameters is in the bundle ` +
      `(${describeLayout(bundleNames)})`);
  }
  return { index, matched, dropped };
}

// ---------------------------------------------------------------------------------- helpers
const fail = (label, msg) => { throw new SequenceFormatError(`${label}: ${msg}`); };

function finite(label, v, where) {
  if (typeof v !== "number" || !Number.isFinite(v)) fail(label, `${where} is not a finite number`);
  return v;
}

function positiveFps(label, v) {
  if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) fail(label, `fps must be a positive number, got ${v}`);
  return v;
}

function sequenceObject(names, frames, fps, source, notes = []) {
  if (!frames.length) throw new SequenceFormatError("the sequence has no frames");
  return { num_frames: frames.length, params_dim: names.length, fps, names, frames, source, notes };
}

// ---------------------------------------------------------------------------------- ARKit
function canonicalArkit(label, columns) {
  const keep = [];
  const names = [];
  const dropped = [];
  columns.forEach((col, j) => {
    const key = String(col).trim();
    const low = key.toLowerCase();
    if (ARKIT_LOWER.has(low)) {
      if (names.includes(ARKIT_LOWER.get(low))) fail(label, `column '${key}' appears twice`);
      keep.push(j);
      names.push(ARKIT_LOWER.get(low));
    } else if (POSE_COLUMNS.has(low)) dropped.push(key);
    else if (!META_COLUMNS.has(low)) {
      fail(label, `column '${key}' is not an ARKit blendshape name (expected the 52 ARKit names, e.g. eyeBlinkLeft, ` +
        "jawOpen; head/eye rotations and Timecode/BlendShapeCount are allowed)");
    }
  });
  if (!names.length) fail(label, "no ARKit blendshape column (expected names such as eyeBlinkLeft, jawOpen)");
  return { keep, names, dropped };
}

function mediapipeRow(label, f, row) {
  if (row && typeof row === "object" && !Array.isArray(row) && "blendshapes" in row) row = row.blendshapes;
  if (Array.isArray(row)) {
    const out = {};
    for (const item of row) {
      if (!item || typeof item !== "object" || typeof item.categoryName !== "string" || !("score" in item)) {
        fail(label, `frame ${f}: a blendshape list needs {categoryName, score} entries`);
      }
      out[item.categoryName] = item.score;
    }
    return out;
  }
  return row;
}

/** ARKit weights from a parsed JSON value (see the header comment). */
export function arkitFromJson(obj, label) {
  let rows;
  let fps;
  if (obj && typeof obj === "object" && !Array.isArray(obj) && Array.isArray(obj.frames)) {
    rows = obj.frames;
    fps = obj.fps;
  } else if (Array.isArray(obj)) rows = obj;
  else if (obj && typeof obj === "object" && Object.keys(obj).length &&
           Object.entries(obj).every(([k, v]) => k === "fps" || Array.isArray(v))) {
    fps = obj.fps;
    const cols = Object.entries(obj).filter(([k]) => k !== "fps");
    const lengths = new Set(cols.map(([, v]) => v.length));
    if (lengths.size !== 1) fail(label, `the columns have different lengths ${[...lengths].join(", ")}`);
    const T = [...lengths][0];
    rows = [...Array(T).keys()].map((t) => Object.fromEntries(cols.map(([k, v]) => [k, v[t]])));
  } else {
    fail(label, "not a driving sequence: expected {num_frames, params_dim, fps, frames} or ARKit blendshape weights " +
      "(a list of per-frame objects, {fps, frames}, or {name: [values]})");
  }
  rows = rows.map((r, f) => mediapipeRow(label, f, r));
  const columns = [];
  rows.forEach((row, f) => {
    if (!row || typeof row !== "object" || Array.isArray(row)) fail(label, `frame ${f} must be an object of blendshape weights`);
    for (const k of Object.keys(row)) if (!columns.includes(k)) columns.push(k);
  });
  const { keep, names, dropped } = canonicalArkit(label, columns);
  const frames = rows.map((row, f) => keep.map((j) => finite(label, row[columns[j]] ?? 0, `frame ${f}: ${columns[j]}`)));
  if (!frames.length) fail(label, "has no frames");
  const notes = dropped.length ? [`dropped head/eye rotation columns: ${dropped.join(", ")}`] : [];
  return sequenceObject(names, frames, fps === undefined ? DEFAULT_FPS.arkit : positiveFps(label, fps), "arkit", notes);
}

const TIMECODE = /^(\d+):(\d+):(\d+)[:;](\d+)(?:\.(\d+))?$/;

/** Frame rate from hh:mm:ss:ff timecodes (the frame reached before the seconds roll over), or null. */
export function timecodeFps(codes) {
  const parsed = [];
  for (const c of codes) {
    const m = TIMECODE.exec(c.trim());
    if (!m) return null;
    parsed.push([Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3]), Number(m[4])]);
  }
  const tops = [];
  for (let i = 1; i < parsed.length; i++) {
    if (parsed[i][0] === parsed[i - 1][0] + 1 && parsed[i][1] < parsed[i - 1][1]) tops.push(parsed[i - 1][1]);
  }
  if (!tops.length) return null;
  const top = Math.max(...tops);
  return [24, 25, 30, 50, 60, 120].find((r) => top < r) ?? top + 1;
}

/** ARKit-52 CSV (a header row of names, one row per frame). */
export function arkitFromCsv(text, label) {
  const rows = text.replace(/^\uFEFF/, "").split(/\r?\n/).filter((l) => l.trim()).map((l) => l.split(","));
  if (rows.length < 2) fail(label, "needs a header row of blendshape names and at least one frame row");
  const header = rows[0].map((c) => c.trim());
  const { keep, names, dropped } = canonicalArkit(label, header);
  const frames = rows.slice(1).map((row, f) => {
    if (row.length !== header.length) fail(label, `row ${f + 2} has ${row.length} values, the header has ${header.length}`);
    return keep.map((j) => {
      const cell = row[j].trim();
      const v = Number(cell);
      if (cell === "" || !Number.isFinite(v)) fail(label, `row ${f + 2}, column ${header[j]}: '${cell.slice(0, 20)}' is not a number`);
      return v;
    });
  });
  const notes = dropped.length ? [`dropped head/eye rotation columns: ${dropped.join(", ")}`] : [];
  const tc = header.findIndex((h) => h.toLowerCase() === "timecode");
  const fps = tc >= 0 ? timecodeFps(rows.slice(1).map((r) => r[tc])) : null;
  if (fps) notes.push(`fps ${fps} from the timecodes`);
  return sequenceObject(names, frames, fps || DEFAULT_FPS.arkit, "arkit", notes);
}

// ---------------------------------------------------------------------------------- npz / npy
async function inflateRaw(bytes, expected, label) {
  if (typeof DecompressionStream === "undefined") fail(label, "this browser cannot decompress .npz files (no DecompressionStream)");
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  let out;
  try {
    out = new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (err) {
    fail(label, `a compressed entry is corrupted (${err.message})`);
  }
  if (out.length !== expected) fail(label, `an entry decompresses to ${out.length} bytes, the directory says ${expected}`);
  return out;
}

/** The entries of a zip archive: Map name -> Uint8Array (stored and deflate entries; zip64 sizes). */
export async function readZip(buffer, label) {
  const u8 = new Uint8Array(buffer);
  const dv = new DataView(buffer);
  const n = u8.length;
  const need = (off, len, what) => { if (off < 0 || off + len > n) fail(label, `truncated or not a zip archive (${what})`); };
  let eocd = -1;
  for (let i = n - 22; i >= Math.max(0, n - 22 - 65535); i--) {
    if (dv.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) fail(label, "not an .npz (zip) file: no end-of-central-directory record");
  let count = dv.getUint16(eocd + 10, true);
  let cdOff = dv.getUint32(eocd + 16, true);
  if (cdOff === 0xffffffff || count === 0xffff) {
    const loc = eocd - 20;
    need(loc, 20, "zip64 locator");
    if (dv.getUint32(loc, true) !== 0x07064b50) fail(label, "corrupted zip64 end record");
    const z = Number(dv.getBigUint64(loc + 8, true));
    need(z, 56, "zip64 end record");
    if (dv.getUint32(z, true) !== 0x06064b50) fail(label, "corrupted zip64 end record");
    count = Number(dv.getBigUint64(z + 32, true));
    cdOff = Number(dv.getBigUint64(z + 48, true));
  }
  const entries = new Map();
  let p = cdOff;
  for (let e = 0; e < count; e++) {
    need(p, 46, "central directory");
    if (dv.getUint32(p, true) !== 0x02014b50) fail(label, "corrupted central directory");
    const flags = dv.getUint16(p + 8, true);
    const method = dv.getUint16(p + 10, true);
    let comp = dv.getUint32(p + 20, true);
    let size = dv.getUint32(p + 24, true);
    const nameLen = dv.getUint16(p + 28, true);
    const extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    let local = dv.getUint32(p + 42, true);
    need(p + 46, nameLen + extraLen, "entry name");
    const name = new TextDecoder().decode(u8.subarray(p + 46, p + 46 + nameLen));
    for (let x = p + 46 + nameLen; x + 4 <= p + 46 + nameLen + extraLen;) {
      const id = dv.getUint16(x, true);
      const len = dv.getUint16(x + 2, true);
      if (id === 0x0001) {
        let q = x + 4;
        if (size === 0xffffffff) { size = Number(dv.getBigUint64(q, true)); q += 8; }
        if (comp === 0xffffffff) { comp = Number(dv.getBigUint64(q, true)); q += 8; }
        if (local === 0xffffffff) { local = Number(dv.getBigUint64(q, true)); }
      }
      x += 4 + len;
    }
    if (flags & 1) fail(label, `entry ${name} is encrypted`);
    if (size > MAX_BYTES) fail(label, `entry ${name} is larger than ${MAX_BYTES >> 20} MB`);
    need(local, 30, `local header of ${name}`);
    if (dv.getUint32(local, true) !== 0x04034b50) fail(label, `corrupted local header of ${name}`);
    const start = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
    need(start, comp, `data of ${name}`);
    const raw = u8.subarray(start, start + comp);
    if (method === 0) {
      if (comp !== size) fail(label, `entry ${name}: stored sizes disagree`);
      entries.set(name, raw);
    } else if (method === 8) entries.set(name, await inflateRaw(raw, size, label));
    else fail(label, `entry ${name} uses compression method ${method} (stored and deflate are supported)`);
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

const NPY_TYPES = { f8: [8, "getFloat64"], f4: [4, "getFloat32"], i8: [8, "getBigInt64"], i4: [4, "getInt32"],
  i2: [2, "getInt16"], i1: [1, "getInt8"], u8: [8, "getBigUint64"], u4: [4, "getUint32"], u2: [2, "getUint16"],
  u1: [1, "getUint8"], b1: [1, "getUint8"], f2: [2, "half"] };

/** One .npy array: {shape, data: Float64Array (C order)}; object arrays are refused. */
export function parseNpy(bytes, label) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 10 || bytes[0] !== 0x93 || new TextDecoder().decode(bytes.subarray(1, 6)) !== "NUMPY") {
    fail(label, "not a .npy array (bad magic)");
  }
  const major = bytes[6];
  const hlen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const hstart = major === 1 ? 10 : 12;
  if (hstart + hlen > bytes.length) fail(label, "truncated .npy header");
  const header = new TextDecoder().decode(bytes.subarray(hstart, hstart + hlen));
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1] === "True";
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || shapeText === undefined) fail(label, "malformed .npy header");
  if (descr.includes("O")) fail(label, "holds an object (pickled) array, refused: only numeric arrays are read");
  const type = NPY_TYPES[descr.slice(1)];
  if (!type || !"<|".includes(descr[0])) fail(label, `unsupported .npy dtype '${descr}' (little-endian numbers only)`);
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const [size, getter] = type;
  const start = hstart + hlen;
  if (start + count * size !== bytes.length) {
    fail(label, `size mismatch: shape [${shape}] of ${descr} needs ${count * size} bytes, the array has ${bytes.length - start}`);
  }
  const data = new Float64Array(count);
  const half = getter === "half" ? halfTable() : null;
  for (let i = 0; i < count; i++) {
    const off = start + i * size;
    data[i] = half ? half[dv.getUint16(off, true)] : Number(size === 1 ? dv[getter](off) : dv[getter](off, true));
  }
  if (fortran && shape.length > 1) { // to C order
    const c = new Float64Array(count);
    const strides = shape.map((_, k) => shape.slice(0, k).reduce((a, b) => a * b, 1));
    const idx = new Array(shape.length).fill(0);
    for (let i = 0; i < count; i++) {
      c[i] = data[idx.reduce((a, v, k) => a + v * strides[k], 0)];
      for (let k = shape.length - 1; k >= 0; k--) { if (++idx[k] < shape[k]) break; idx[k] = 0; }
    }
    return { shape, data: c };
  }
  return { shape, data };
}

/** Arrays of an .npz: Map name (without .npy) -> {shape, data}. */
export async function readNpz(buffer, label) {
  const out = new Map();
  for (const [name, bytes] of await readZip(buffer, label)) {
    out.set(name.replace(/\.npy$/, ""), parseNpy(bytes, `${label}: ${name}`));
  }
  return out;
}

/** An array as rows [T][D] (1-D -> one row; [T, 1, D] -> [T, D]); checks the width and finiteness. */
function rowsOf(label, arr, key, width) {
  let shape = arr.shape;
  if (shape.length === 1) shape = [1, shape[0]];
  if (shape.length === 3 && shape[1] === 1) shape = [shape[0], shape[2]];
  if (shape.length !== 2 || (width && shape[1] !== width)) {
    fail(label, `size mismatch: '${key}' has shape [${arr.shape}], expected [T, ${width || "D"}]`);
  }
  const rows = [];
  for (let t = 0; t < shape[0]; t++) {
    const row = Array.from(arr.data.subarray(t * shape[1], (t + 1) * shape[1]));
    if (!row.every(Number.isFinite)) fail(label, `'${key}' has a non-finite value in frame ${t}`);
    rows.push(row);
  }
  return rows;
}

export function sequenceFromArrays(arrays, label) {
  if (arrays.has("expr")) {
    if (!arrays.has("jaw_pose")) fail(label, "not a VHAP/GaussianAvatars flame_param.npz: missing 'jaw_pose'");
    const exp = rowsOf(label, arrays.get("expr"), "expr", 0);
    const jaw = rowsOf(label, arrays.get("jaw_pose"), "jaw_pose", 3);
    if (exp.length !== jaw.length) fail(label, `size mismatch: ${exp.length} expression and ${jaw.length} jaw frames`);
    const E = exp[0].length;
    const names = [...Array(E).keys()].map((i) => `exp_${i}`).concat(FLAME_TAIL.slice(0, 3));
    const dropped = VHAP_DROPPED.filter((k) => arrays.has(k));
    const notes = dropped.length ? [`not part of the animation condition, dropped: ${dropped.join(", ")}`] : [];
    notes.push("no eyelid parameters (eyelids stay at their default)");
    return sequenceObject(names, exp.map((r, t) => r.concat(jaw[t])), DEFAULT_FPS.vhap, "vhap", notes);
  }
  const pick = (part) => SMIRK_KEYS[part].find((k) => arrays.has(k));
  if (pick("expression")) {
    const missing = ["jaw", "eyelids"].filter((p) => !pick(p));
    if (missing.length) fail(label, `not SMIRK output: missing ${missing.map((p) => `${p} (${SMIRK_KEYS[p].join(" / ")})`).join(", ")}`);
    const exp = rowsOf(label, arrays.get(pick("expression")), pick("expression"), 0);
    const jaw = rowsOf(label, arrays.get(pick("jaw")), pick("jaw"), 3);
    const lids = rowsOf(label, arrays.get(pick("eyelids")), pick("eyelids"), 2);
    if (exp.length !== jaw.length || exp.length !== lids.length) {
      fail(label, `size mismatch: ${exp.length} expression, ${jaw.length} jaw and ${lids.length} eyelid frames`);
    }
    if (exp[0].length !== 50) fail(label, `size mismatch: SMIRK expressions have 50 values, '${pick("expression")}' has ${exp[0].length}`);
    return sequenceObject(flameNames(50), exp.map((r, t) => r.concat(jaw[t], lids[t])), DEFAULT_FPS.smirk, "smirk");
  }
  fail(label, `an .npz with neither VHAP 'expr'/'jaw_pose' nor SMIRK expression_params/jaw_params/eyelid_params arrays ` +
    `(has: ${[...arrays.keys()].slice(0, 6).join(", ") || "nothing"})`);
}

/**
 * Any supported sequence file (name decides the format, bytes as an ArrayBuffer) -> the viewer's
 * JSON object. The viewer's/authors' JSON is returned as parsed; other formats carry "source".
 */
export async function readSequenceFile(name, buffer) {
  const label = name;
  if (buffer.byteLength > MAX_BYTES) fail(label, `larger than ${MAX_BYTES >> 20} MB`);
  const lower = name.toLowerCase();
  if (lower.endsWith(".npz")) return sequenceFromArrays(await readNpz(buffer, label), label);
  const text = new TextDecoder().decode(buffer);
  if (lower.endsWith(".csv")) return arkitFromCsv(text, label);
  let obj;
  try {
    obj = JSON.parse(text);
  } catch (err) {
    fail(label, `not valid JSON (${err.message})`);
  }
  if (obj && typeof obj === "object" && !Array.isArray(obj) && "num_frames" in obj && "frames" in obj) return obj;
  return arkitFromJson(obj, label);
}

/** True for file names the viewer opens as driving sequences. */
export const isSequenceFile = (name) => /\.(json|csv|npz)$/i.test(name);
