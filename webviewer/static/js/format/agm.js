// Reader of the .agm bundle format, versions 1.0 and 1.1 (docs/agm-format.md; Python twin:
// exporter/agm/read.py).
// The constants below are the Python ones (agora_core/types/spec.py, exporter/agm/layout.py):
// tests/test_spec.py checks them.
//
// readAgm(arrayBuffer, label) validates everything the spec's "Validation" section lists and
// returns typed-array views into the buffer (no copies of float data). 1.1 quantised neutral
// attributes are decoded once, at load, for the CPU (camera framing, the sorter) and handed to the
// GPU as stored (`neutralQ`: the shaders decode them); an fp16/int8 MLP likewise (`weightHalf`).
// Any problem throws AgmFormatError with a one-line message naming the file, worded like the Python
// reader's. The JSON header is read by a strict parser of its own that knows which numbers were
// written as integers (JSON.parse cannot tell 16008 from 16008.0).

import { halfTable } from "./half.js";

export const MAGIC = [0x89, 0x41, 0x47, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a];
export const VERSION_MAJOR = 1;
const PREAMBLE_SIZE = 32;
const ALIGN = 64;
const MAX_SHAPE_DIMS = 8;
const MAX_JSON_DEPTH = 32;
// 2^53 - 1: every integer of the header (and |seed|) is at most this
const MAX_INT = 9007199254740991;
export const GROUPS = [["xyz", 3], ["scale", 3], ["rotation", 4], ["opacity", 1]];
const PARAMETER_GROUPS = ["expression", "jaw", "eyelids", "neck", "eyes"];
const ACTIVATIONS = ["leaky_relu", "none"];
const DTYPE_SIZE = { f32: 4, f16: 2, i8: 1, u32: 4, u8: 1, u16: 2 };
const DTYPES_1_0 = ["f32", "f16", "i8", "u32"];
const NEUTRAL_MODES = ["float", "quantized"];
const MLP_MODES = { f32: "f32", fp16: "f16", int8: "i8" };
const QUANTIZED_NEUTRAL = ["means", "scales", "opacities", "sh_dc", "sh_rest"];
const QUANT_DTYPE = { fp16: "f16", int8: "i8" };
const CONSTRAINT_KEYS = ["scale_min", "opacity_min", "opacity_max"];

export class AgmFormatError extends Error {
  constructor(message) {
    super(message);
    this.name = "AgmFormatError";
  }
}

// ---------------------------------------------------------------------------------------- CRC-32
const CRC_TABLES = (() => {
  const t = new Uint32Array(256 * 4);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n];
    for (let s = 1; s < 4; s++) {
      c = t[c & 0xff] ^ (c >>> 8);
      t[s * 256 + n] = c >>> 0;
    }
  }
  return t;
})();

/** CRC-32 (zlib/IEEE) of bytes[start, end) (slice-by-4). */
export function crc32(bytes, start = 0, end = bytes.length) {
  const t = CRC_TABLES;
  let c = 0xffffffff;
  let i = start;
  // align to 4 bytes, then 4 bytes per step
  while (i < end && (bytes.byteOffset + i) & 3) c = t[(c ^ bytes[i++]) & 0xff] ^ (c >>> 8);
  const words = Math.max(0, (end - i) >> 2);
  if (words > 0) {
    const u32 = new Uint32Array(bytes.buffer, bytes.byteOffset + i, words);
    for (let w = 0; w < words; w++) {
      c ^= u32[w];
      c = t[768 + (c & 0xff)] ^ t[512 + ((c >>> 8) & 0xff)] ^ t[256 + ((c >>> 16) & 0xff)] ^ t[c >>> 24];
    }
    i += words * 4;
  }
  while (i < end) c = t[(c ^ bytes[i++]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ------------------------------------------------------------------------------------ strict JSON
// RFC 8259 with the spec's limits: no lone surrogates, at most MAX_JSON_DEPTH levels, no number
// outside binary64. `floatKeys` maps each object/array to the keys whose number was written with a
// fraction or an exponent (so the checker can refuse 16008.0 where the spec wants an integer).
class JsonError extends Error {}

function parseJson(text) {
  const floatKeys = new WeakMap();
  let i = 0;
  const n = text.length;
  const fail = (what) => { throw new JsonError(`${what} at character ${i}`); };
  const ws = () => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  const setKey = (container, key, value, isFloat) => {
    Object.defineProperty(container, key, { value, writable: true, enumerable: true, configurable: true });
    let set = floatKeys.get(container);
    if (isFloat) {
      if (!set) floatKeys.set(container, (set = new Set()));
      set.add(key);
    } else if (set) set.delete(key);
  };
  const hex4 = () => {
    const h = text.slice(i, i + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) fail("bad \\u escape");
    i += 4;
    return parseInt(h, 16);
  };
  const string = () => {
    i++; // opening quote
    let out = "";
    let start = i;
    for (;;) {
      if (i >= n) fail("unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) { out += text.slice(start, i); i++; return out; }
      if (c < 0x20) fail("control character in a string");
      if (c === 0x5c) {
        out += text.slice(start, i);
        const e = text[i + 1];
        i += 2;
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
        if (e in simple) out += simple[e];
        else if (e === "u") {
          const u = hex4();
          if (u >= 0xd800 && u <= 0xdbff) {
            if (text[i] !== "\\" || text[i + 1] !== "u") fail("lone surrogate");
            i += 2;
            const lo = hex4();
            if (lo < 0xdc00 || lo > 0xdfff) fail("lone surrogate");
            out += String.fromCharCode(u, lo);
          } else if (u >= 0xdc00 && u <= 0xdfff) fail("lone surrogate");
          else out += String.fromCharCode(u);
        } else fail("bad escape");
        start = i;
      } else i++;
    }
  };
  // returns [value, isFloatLexeme]
  const value = (depth) => {
    ws();
    if (i >= n) fail("unexpected end");
    const c = text[i];
    if (c === "{" || c === "[") {
      if (depth > MAX_JSON_DEPTH) fail(`nested more than ${MAX_JSON_DEPTH} levels deep`);
      i++;
      const isObj = c === "{";
      const container = isObj ? {} : [];
      ws();
      if (text[i] === (isObj ? "}" : "]")) { i++; return [container, false]; }
      for (let k = 0; ; k++) {
        let key = k;
        if (isObj) {
          ws();
          if (text[i] !== '"') fail("expected a key");
          key = string();
          ws();
          if (text[i] !== ":") fail("expected ':'");
          i++;
        }
        const [v, f] = value(depth + 1);
        if (isObj) setKey(container, key, v, f);
        else {
          container.push(v);
          if (f) {
            if (!floatKeys.has(container)) floatKeys.set(container, new Set());
            floatKeys.get(container).add(k);
          }
        }
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === (isObj ? "}" : "]")) { i++; return [container, false]; }
        fail(`expected ',' or '${isObj ? "}" : "]"}'`);
      }
    }
    if (c === '"') return [string(), false];
    if (text.startsWith("true", i)) { i += 4; return [true, false]; }
    if (text.startsWith("false", i)) { i += 5; return [false, false]; }
    if (text.startsWith("null", i)) { i += 4; return [null, false]; }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) fail("unexpected character");
    i += m[0].length;
    const v = Number(m[0]);
    if (!Number.isFinite(v)) fail(`number ${m[0].slice(0, 20)} out of range`);
    return [v, m[1] !== undefined || m[2] !== undefined];
  };
  const [root] = value(1);
  ws();
  if (i < n) fail("extra data");
  return { value: root, floatKeys };
}

// ------------------------------------------------------------------------------------ validation
// Python's repr of a JSON value (strings in single quotes, True/False/None), cut like reprlib, so
// the messages read like the Python reader's.
// Numbers written with a fraction or exponent (parseJson's floatKeys of the header being read) print
// as Python floats (3000.0), as Python's json module parses them.
let FLOAT_KEYS = new WeakMap();

function pyRepr(value, depth = 0, isFloat = false) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") {
    return Number.isInteger(value) && !Object.is(value, -0) && !isFloat ? String(value) : pyFloat(value);
  }
  if (typeof value === "string") {
    const v = value.length > 30 ? value.slice(0, 12) + "..." + value.slice(-13) : value;
    return v.includes("'") && !v.includes('"') ? `"${v}"` : `'${v.replace(/'/g, "\\'")}'`;
  }
  if (depth >= 2) return Array.isArray(value) ? "[...]" : "{...}";
  const floats = FLOAT_KEYS.get(value);
  if (Array.isArray(value)) {
    const items = value.slice(0, 4).map((v, i) => pyRepr(v, depth + 1, !!floats && floats.has(i)));
    return `[${items.join(", ")}${value.length > 4 ? ", ..." : ""}]`;
  }
  const keys = Object.keys(value).sort();
  const items = keys.slice(0, 3).map((k) => `${pyRepr(k, depth + 1)}: ${pyRepr(value[k], depth + 1, !!floats && floats.has(k))}`);
  return `{${items.join(", ")}${keys.length > 3 ? ", ..." : ""}}`;
}

function pyFloat(x) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  const s = String(x);
  return /[.e]/.test(s) ? s.replace("e+", "e+").replace(/e(-?)(\d)$/, "e$10$2") : s + ".0";
}

function short(value, isFloat = false) {
  const text = pyRepr(value, 0, isFloat);
  return text.length <= 60 ? text : text.slice(0, 57) + "...";
}

class Checker {
  constructor(label, floatKeys = new WeakMap()) {
    this.label = label;
    this.floatKeys = floatKeys;
  }
  /** obj[key] was written as an integer (no fraction, no exponent) */
  intLexeme(obj, key) {
    const set = this.floatKeys.get(obj);
    return !(set && set.has(key));
  }
  fail(message) {
    throw new AgmFormatError(`${this.label}: ${message}`);
  }
  isKind(value, kind) {
    switch (kind) {
      case "int": return typeof value === "number" && Number.isInteger(value); // bounds: each key's minimum/maximum
      case "number": return typeof value === "number" && Number.isFinite(value);
      case "str": return typeof value === "string";
      case "bool": return typeof value === "boolean";
      case "list": return Array.isArray(value);
      case "dict": return value !== null && typeof value === "object" && !Array.isArray(value);
    }
    return false;
  }
  get(obj, key, kind, where, { nullable = false, optional = false, minimum = null, maximum = null } = {}) {
    const names = { int: "an integer", number: "a finite number", str: "a string", bool: "true/false",
      list: "a list", dict: "an object" };
    if (!Object.prototype.hasOwnProperty.call(obj, key)) {
      if (optional) return undefined;
      this.fail(where === "header" ? `header: missing the key '${key}'` : `header: ${where} is missing the key '${key}'`);
    }
    const value = obj[key];
    const path = where === "header" ? `'${key}'` : where.startsWith("section ") ? `${where} ${key}` : `${where}.${key}`;
    if (value === null && nullable) return null;
    const isFloat = !this.intLexeme(obj, key);
    if (!this.isKind(value, kind) || (kind === "int" && isFloat)) {
      this.fail(`header: ${path} must be ${names[kind]}${nullable ? " or null" : ""}, got ${short(value, isFloat)}`);
    }
    if (minimum !== null && value < minimum) this.fail(`header: ${path} must be >= ${minimum}, got ${short(value, isFloat)}`);
    if (maximum !== null && value > maximum) this.fail(`header: ${path} must be <= ${maximum}, got ${short(value, isFloat)}`);
    return value;
  }
  items(obj, key, where) {
    const list = this.get(obj, key, "list", where);
    list.forEach((item, i) => {
      if (!this.isKind(item, "dict")) {
        this.fail(`header: ${where === "header" ? key : where + "." + key}[${i}] must be an object, got ${short(item)}`);
      }
    });
    return list;
  }
}

function checkPreamble(ck, bytes) {
  const size = bytes.length;
  if (size === 0) ck.fail("empty file (not an .agm file)");
  for (let i = 0; i < Math.min(8, size); i++) {
    if (bytes[i] !== MAGIC[i]) ck.fail("not an .agm file (bad magic)");
  }
  if (size < PREAMBLE_SIZE) ck.fail(`truncated: the file has ${size} bytes, less than the ${PREAMBLE_SIZE}-byte preamble`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, PREAMBLE_SIZE);
  const major = dv.getUint16(8, true);
  const minor = dv.getUint16(10, true);
  const headerLength = dv.getUint32(12, true);
  const headerCrc = dv.getUint32(16, true);
  const fileLength = dv.getUint32(20, true) + dv.getUint32(24, true) * 4294967296;
  const reserved = dv.getUint32(28, true);
  if (major !== VERSION_MAJOR) {
    ck.fail(`unsupported .agm version ${major}.${minor} (this reader supports ${VERSION_MAJOR}.x)`);
  }
  if (reserved !== 0) ck.fail(`the reserved preamble field (bytes 28-31) must be 0, got ${reserved}`);
  if (size < fileLength) ck.fail(`truncated: header says ${fileLength} bytes, file has ${size}`);
  if (size > fileLength) ck.fail(`file has ${size} bytes but its header says ${fileLength} (trailing data or corrupted header)`);
  if (PREAMBLE_SIZE + headerLength > size) ck.fail(`header_length ${headerLength} runs past the end of the ${size}-byte file`);
  return { version: [major, minor], headerLength, headerCrc, fileLength };
}

function checkJson(ck, bytes, headerLength, headerCrc) {
  if (crc32(bytes, PREAMBLE_SIZE, PREAMBLE_SIZE + headerLength) !== headerCrc) {
    ck.fail("header CRC mismatch (the JSON header is corrupted)");
  }
  let parsed;
  try {
    const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
      .decode(bytes.subarray(PREAMBLE_SIZE, PREAMBLE_SIZE + headerLength));
    parsed = parseJson(text);
  } catch (err) {
    ck.fail(`the JSON header does not parse: ${String(err.message || err).split("\n")[0].slice(0, 120)}`);
  }
  ck.floatKeys = parsed.floatKeys;
  FLOAT_KEYS = parsed.floatKeys;
  if (!ck.isKind(parsed.value, "dict")) ck.fail("the JSON header is not an object");
  return parsed.value;
}

function validateHeader(ck, h, version) {
  if (h.format !== "agm") ck.fail(`header: 'format' must be "agm", got ${short(h.format)}`);
  ck.get(h, "gaussian_count", "int", "header", { minimum: 1, maximum: MAX_INT });
  const sh = ck.get(h, "sh_degree", "int", "header");
  if (sh !== 1) ck.fail(`header: unsupported sh_degree ${sh} (this reader supports 1)`);
  const groups = ck.items(h, "groups", "header");
  if (groups.length !== GROUPS.length) {
    ck.fail(`header: 'groups' must list the ${GROUPS.length} groups ${pyRepr(GROUPS.map((g) => g[0]))}, got ${groups.length}`);
  }
  GROUPS.forEach(([name, dim], i) => {
    const gname = ck.get(groups[i], "name", "str", `groups[${i}]`);
    const gdim = ck.get(groups[i], "dim", "int", `groups[${i}]`);
    if (gname !== name || gdim !== dim) {
      ck.fail(`header: groups[${i}] must be '${name}' with dim ${dim}, got ${pyRepr(gname)} with dim ${gdim}`);
    }
    ck.get(groups[i], "rank", "int", `groups[${i}]`, { minimum: 0, maximum: MAX_INT });
  });
  const names = new Set();
  ck.items(h, "parameters", "header").forEach((p, i) => {
    const where = `parameters[${i}]`;
    const pname = ck.get(p, "name", "str", where);
    if (names.has(pname)) ck.fail(`header: duplicate parameter name ${short(pname)}`);
    names.add(pname);
    const pgroup = ck.get(p, "group", "str", where);
    if (!PARAMETER_GROUPS.includes(pgroup)) {
      ck.fail(`header: ${where}.group must be one of ${PARAMETER_GROUPS.join(", ")}, got ${short(pgroup)}`);
    }
    for (const key of ["min", "max", "default"]) ck.get(p, key, "number", where);
  });
  const q = ck.get(h, "quantization", "dict", "header");
  const qb = ck.get(q, "bases", "str", "quantization");
  if (!(qb in QUANT_DTYPE)) ck.fail(`header: quantization.bases must be "fp16" or "int8", got ${short(qb)}`);
  ck.get(q, "sparse", "bool", "quantization");
  const threshold = ck.get(q, "sparse_threshold", "number", "quantization", { nullable: true, optional: true });
  if (threshold !== undefined && threshold !== null && !(threshold >= 0 && threshold <= 1)) {
    ck.fail(`header: quantization.sparse_threshold must be in [0, 1] or null, got ${short(threshold)}`);
  }
  const neutral = ck.get(q, "neutral", "str", "quantization", { optional: true }) ?? "float";
  if (!NEUTRAL_MODES.includes(neutral)) ck.fail(`header: quantization.neutral must be "float" or "quantized", got ${short(neutral)}`);
  const mlpMode = ck.get(q, "mlp", "str", "quantization", { optional: true }) ?? "f32";
  if (!(mlpMode in MLP_MODES)) ck.fail(`header: quantization.mlp must be "f32", "fp16" or "int8", got ${short(mlpMode)}`);
  if (version[1] < 1 && (neutral !== "float" || mlpMode !== "f32")) {
    ck.fail(`header: a ${version[0]}.${version[1]} file cannot use quantization.neutral ${pyRepr(neutral)} / mlp ` +
      `${pyRepr(mlpMode)} (they need version 1.1)`);
  }
  const c = ck.get(h, "constraints", "dict", "header");
  for (const key of CONSTRAINT_KEYS) ck.get(c, key, "number", "constraints");
  if (c.opacity_min > c.opacity_max) ck.fail("header: constraints.opacity_min is larger than opacity_max");
  const mlp = ck.get(h, "mlp", "dict", "header");
  const layers = ck.items(mlp, "layers", "mlp");
  if (layers.length === 0) ck.fail("header: mlp.layers is empty");
  let width = h.parameters.length;
  layers.forEach((layer, j) => {
    const where = `mlp.layers[${j}]`;
    const nIn = ck.get(layer, "in", "int", where, { minimum: 0, maximum: MAX_INT });
    ck.get(layer, "out", "int", where, { minimum: 0, maximum: MAX_INT });
    if (nIn !== width) {
      ck.fail(`header: ${where}.in is ${nIn}, expected ${width} (${j === 0 ? "the parameter count" : "the previous layer out"})`);
    }
    width = layer.out;
    const act = ck.get(layer, "activation", "str", where);
    if (!ACTIVATIONS.includes(act)) ck.fail(`header: ${where}.activation must be "leaky_relu" or "none", got ${short(act)}`);
    if (act === "leaky_relu") ck.get(layer, "negative_slope", "number", where);
  });
  const totalRank = groups.reduce((s, g) => s + g.rank, 0);
  if (width !== totalRank) ck.fail(`header: the MLP's last layer has ${width} outputs, expected sum(rank) = ${totalRank}`);
  const idents = ck.items(h, "identities", "header");
  if (idents.length === 0) ck.fail("header: 'identities' is empty");
  idents.forEach((ident, i) => {
    ck.get(ident, "name", "str", `identities[${i}]`);
    ck.get(ident, "seed", "int", `identities[${i}]`, { nullable: true, minimum: -MAX_INT, maximum: MAX_INT });
  });
  for (const key of ["camera", "coordinate_system", "fidelity", "provenance"]) {
    ck.get(h, key, "dict", "header", { optional: true });
  }
  ck.items(h, "sections", "header");
}

function validateSections(ck, h, headerLength, fileLength, version) {
  const dataStart = PREAMBLE_SIZE + headerLength;
  const known = version[1] < 1 ? DTYPES_1_0 : Object.keys(DTYPE_SIZE);
  const sections = new Map();
  h.sections.forEach((s, i) => {
    let where = `sections[${i}]`;
    const name = ck.get(s, "name", "str", where);
    where = `section '${name}'`;
    if (sections.has(name)) ck.fail(`${where} is listed twice`);
    const dtype = ck.get(s, "dtype", "str", where);
    if (!known.includes(dtype)) {
      ck.fail(`${where} has unknown dtype ${short(dtype)} (expected ${known.slice(0, -1).join(", ")} or ${known[known.length - 1]}` +
        `${version[1] >= 1 ? "" : "; u8 and u16 need version 1.1"})`);
    }
    const shape = ck.get(s, "shape", "list", where);
    if (shape.length > MAX_SHAPE_DIMS || !shape.every((d, k) => ck.isKind(d, "int") && ck.intLexeme(shape, k) && d >= 0 && d <= MAX_INT)) {
      ck.fail(`${where} has an invalid shape ${short(shape)}`);
    }
    const offset = ck.get(s, "offset", "int", where, { minimum: 0, maximum: MAX_INT });
    const length = ck.get(s, "length", "int", where, { minimum: 0, maximum: MAX_INT });
    ck.get(s, "crc32", "int", where, { minimum: 0, maximum: 0xffffffff });
    const expected = shape.reduce((a, d) => a * d, DTYPE_SIZE[dtype]);
    if (length !== expected) {
      ck.fail(`${where}: length ${length} does not match dtype ${dtype} and shape ${short(shape)} (${expected} bytes)`);
    }
    if (offset % ALIGN) ck.fail(`${where}: offset ${offset} is not a multiple of ${ALIGN}`);
    if (offset < dataStart || offset + length > fileLength) {
      ck.fail(`${where}: bytes ${offset}..${offset + length} lie outside the file's data area (${dataStart}..${fileLength})`);
    }
    sections.set(name, s);
  });
  const spans = [...sections.entries()].filter(([, s]) => s.length > 0)
    .map(([n, s]) => [s.offset, s.offset + s.length, n])
    .sort((a, b) => a[0] - b[0] || a[1] - b[1] || (a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0)); // as Python sorts the tuples
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) ck.fail(`sections '${spans[i - 1][2]}' and '${spans[i][2]}' overlap`);
  }
  return sections;
}

function requiredSections(ck, h, sections) {
  const G = h.gaussian_count;
  const H0 = h.mlp.layers[0].out;
  const need = (name, dtype, shape) => {
    const s = sections.get(name);
    if (!s) ck.fail(`required section '${name}' is missing`);
    if (s.dtype !== dtype || s.shape.length !== shape.length || s.shape.some((d, i) => d !== shape[i])) {
      ck.fail(`section '${name}' is ${s.dtype} ${short(s.shape)}, expected ${dtype} ${pyRepr(shape)}`);
    }
  };
  const forbid = (name, why) => {
    if (sections.has(name)) ck.fail(`section '${name}' must not be present (${why})`);
  };
  const needUint = (name, shape) => {
    const s = sections.get(name);
    if (!s) ck.fail(`required section '${name}' is missing`);
    if (!["u8", "u16"].includes(s.dtype) || s.shape.length !== shape.length || s.shape.some((d, i) => d !== shape[i])) {
      ck.fail(`section '${name}' is ${s.dtype} ${short(s.shape)}, expected u8 or u16 ${pyRepr(shape)}`);
    }
  };
  const q = h.quantization;
  const neutralShapes = { means: [G, 3], scales: [G, 3], opacities: [G], sh_dc: [G, 3], sh_rest: [G, 3, 3] };
  for (let i = 0; i < h.identities.length; i++) {
    if ((q.neutral ?? "float") === "quantized") {
      for (const [name, shape] of Object.entries(neutralShapes)) {
        needUint(`identity/${i}/${name}`, shape);
        need(`identity/${i}/${name}_range`, "f32", [2, ...shape.slice(1)]);
      }
      need(`identity/${i}/quats`, "u32", [G]);
      forbid(`identity/${i}/sh`, "the neutral attributes are quantised (sh_dc, sh_rest)");
    } else {
      need(`identity/${i}/means`, "f32", [G, 3]);
      need(`identity/${i}/scales`, "f32", [G, 3]);
      need(`identity/${i}/quats`, "f32", [G, 4]);
      need(`identity/${i}/opacities`, "f32", [G]);
      need(`identity/${i}/sh`, "f16", [G, 4, 3]);
      for (const name of QUANTIZED_NEUTRAL) forbid(`identity/${i}/${name}_range`, "the neutral attributes are not quantised");
      forbid(`identity/${i}/sh_dc`, "the neutral attributes are not quantised");
      forbid(`identity/${i}/sh_rest`, "the neutral attributes are not quantised");
    }
    need(`identity/${i}/mlp_bias0`, "f32", [H0]);
  }
  const quant = q.bases;
  const sparse = q.sparse;
  for (const grp of h.groups) {
    const { name: g, dim: d, rank: K } = grp;
    if (K === 0) {
      for (const part of ["values", "scales", "index", "mask"]) forbid(`bases/${g}/${part}`, `group '${g}' has rank 0`);
      continue;
    }
    let n = G;
    if (sparse && sections.has(`bases/${g}/mask`)) {
      forbid(`bases/${g}/index`, `group '${g}' has a mask`);
      need(`bases/${g}/mask`, "u8", [Math.ceil(G / 8)]);
      const values = sections.get(`bases/${g}/values`);
      n = values && values.shape.length === 3 ? values.shape[1] : -1;
    } else if (sparse) {
      const s = sections.get(`bases/${g}/index`);
      if (!s) ck.fail(`required section 'bases/${g}/index' is missing (the bases are sparse)`);
      if (s.dtype !== "u32" || s.shape.length !== 1 || s.shape[0] > G) {
        ck.fail(`section 'bases/${g}/index' is ${s.dtype} ${short(s.shape)}, expected u32 [n <= ${G}]`);
      }
      n = s.shape[0];
    } else {
      forbid(`bases/${g}/index`, "the bases are dense");
      forbid(`bases/${g}/mask`, "the bases are dense");
    }
    if (!(n >= 0 && n <= G)) {
      ck.fail(`section 'bases/${g}/values' must be ${QUANT_DTYPE[quant]} [${K}, n <= ${G}, ${d}] (n: the Gaussians its mask selects)`);
    }
    need(`bases/${g}/values`, QUANT_DTYPE[quant], [K, n, d]);
    if (quant === "int8") need(`bases/${g}/scales`, "f32", [K]);
    else forbid(`bases/${g}/scales`, "the bases are fp16");
  }
  const mlpMode = q.mlp ?? "f32";
  h.mlp.layers.forEach((layer, j) => {
    need(`mlp/${j}/weight`, MLP_MODES[mlpMode], [layer.out, layer.in]);
    if (mlpMode === "int8") need(`mlp/${j}/weight_scales`, "f32", [layer.out]);
    else forbid(`mlp/${j}/weight_scales`, "the MLP is not int8");
    if (j === 0) forbid("mlp/0/bias", "each identity has its own mlp_bias0");
    else need(`mlp/${j}/bias`, "f32", [layer.out]);
  });
}

const TYPED = { f32: Float32Array, f16: Uint16Array, i8: Int8Array, u32: Uint32Array, u8: Uint8Array, u16: Uint16Array };

/** True when a f32 or f16 section holds a NaN or an infinity. */
function nonFinite(bytes, s) {
  if (s.dtype === "f32") {
    const v = view(bytes, s);
    for (let i = 0; i < v.length; i++) if (v[i] - v[i] !== 0) return true;
  } else if (s.dtype === "f16") {
    const v = view(bytes, s);
    for (let i = 0; i < v.length; i++) if ((v[i] & 0x7c00) === 0x7c00) return true;
  }
  return false;
}

// ------------------------------------------------------------------------------------ 1.1 decoding
const QUAT_R = Math.fround(1 / Math.sqrt(2));

/** origin + step * q per component (binary32), as Float32Array of q.length. */
function dequantize(q, range, comps) {
  const out = new Float32Array(q.length);
  for (let i = 0; i < q.length; i++) {
    const c = i % comps;
    out[i] = range[c] + Math.fround(range[comps + c] * q[i]);
  }
  return out;
}

/** Smallest-three u32 -> quaternions w x y z (Float32Array of 4 per word). */
export function decodeQuats(words) {
  const out = new Float32Array(words.length * 4);
  const twoR = Math.fround(2 * QUAT_R);
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    const big = w >>> 30;
    let sum = 0;
    const rest = [0, 0, 0];
    for (let s = 0; s < 3; s++) {
      const u = (w >>> (10 * (2 - s))) & 1023;
      rest[s] = Math.fround(Math.fround(Math.fround(u / 1023) * twoR) - QUAT_R);
      sum += rest[s] * rest[s];
    }
    out[i * 4 + big] = Math.sqrt(Math.max(0, 1 - sum));
    for (let s = 0; s < 3; s++) out[i * 4 + (s >= big ? s + 1 : s)] = rest[s];
  }
  return out;
}

/** The Gaussian indices a mask selects (null when a bit at or past G is set). */
function maskIndex(mask, G) {
  let count = 0;
  for (let b = 0; b < mask.length; b++) for (let v = mask[b]; v; v &= v - 1) count++;
  const index = new Uint32Array(count);
  let m = 0;
  for (let b = 0; b < mask.length; b++) {
    for (let bit = 0; bit < 8; bit++) {
      if (mask[b] & (1 << bit)) {
        const n = b * 8 + bit;
        if (n >= G) return null;
        index[m++] = n;
      }
    }
  }
  return index;
}

/** Float32 <- IEEE binary16 bits. */
function halfToFloat(bits, table) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

function view(bytes, s) {
  const count = s.shape.reduce((a, d) => a * d, 1);
  return new TYPED[s.dtype](bytes.buffer, bytes.byteOffset + s.offset, count);
}

/**
 * Read and validate an .agm file held in an ArrayBuffer (or Uint8Array).
 * Returns { label, version, header, gaussianCount, parameters, groups, constraints, quantization,
 *           mlp: {layers}, identities, camera, ... } with typed-array views into the buffer.
 */
export function readAgm(source, label = "bundle") {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
    throw new AgmFormatError(`${label}: this viewer needs a little-endian platform`);
  }
  const bytes = source instanceof Uint8Array ? source : new Uint8Array(source);
  if (bytes.byteOffset % 4) throw new AgmFormatError(`${label}: internal error: unaligned buffer`);
  const ck = new Checker(label);
  const { version, headerLength, headerCrc, fileLength } = checkPreamble(ck, bytes);
  const h = checkJson(ck, bytes, headerLength, headerCrc);
  validateHeader(ck, h, version);
  const sections = validateSections(ck, h, headerLength, fileLength, version);
  requiredSections(ck, h, sections);
  for (const [name, s] of sections) {
    if (crc32(bytes, s.offset, s.offset + s.length) !== s.crc32) {
      ck.fail(`section '${name}' CRC mismatch (the file is corrupted)`);
    }
    if (nonFinite(bytes, s)) ck.fail(`section '${name}' holds a NaN or an infinity`);
  }
  const G = h.gaussian_count;
  const sec = (name) => view(bytes, sections.get(name));
  const groups = h.groups.map((grp) => {
    const out = { name: grp.name, dim: grp.dim, rank: grp.rank, carried: 0, values: null, scales: null, index: null };
    if (grp.rank === 0) return out;
    if (h.quantization.sparse && sections.has(`bases/${grp.name}/mask`)) {
      const index = maskIndex(sec(`bases/${grp.name}/mask`), G);
      if (index === null) ck.fail(`section 'bases/${grp.name}/mask' has a bit set at or past Gaussian ${G}`);
      const n = sections.get(`bases/${grp.name}/values`).shape[1];
      if (index.length !== n) {
        ck.fail(`section 'bases/${grp.name}/mask' selects ${index.length} Gaussians but 'bases/${grp.name}/values' has ${n}`);
      }
      out.index = index;
      out.carried = index.length;
    } else if (h.quantization.sparse) {
      const index = sec(`bases/${grp.name}/index`);
      for (let m = 0; m < index.length; m++) {
        if ((m > 0 && index[m] <= index[m - 1]) || index[m] >= G) {
          ck.fail(`section 'bases/${grp.name}/index' is not strictly increasing with every index < ${G}`);
        }
      }
      out.index = index;
      out.carried = index.length;
    } else {
      out.carried = G;
    }
    out.values = sec(`bases/${grp.name}/values`);
    if (h.quantization.bases === "int8") out.scales = sec(`bases/${grp.name}/scales`);
    return out;
  });
  const mlpMode = h.quantization.mlp ?? "f32";
  const layers = h.mlp.layers.map((layer, j) => {
    const raw = sec(`mlp/${j}/weight`);
    const scales = mlpMode === "int8" ? sec(`mlp/${j}/weight_scales`) : null;
    let weight = raw;
    if (mlpMode === "fp16") weight = halfToFloat(raw, halfTable());
    else if (mlpMode === "int8") {
      weight = new Float32Array(raw.length);
      for (let i = 0; i < raw.length; i++) weight[i] = Math.fround(raw[i] * scales[Math.floor(i / layer.in)]);
    }
    return {
      in: layer.in,
      out: layer.out,
      activation: layer.activation,
      negativeSlope: layer.activation === "leaky_relu" ? layer.negative_slope : 0,
      weight, // float32 (decoded once at load for fp16/int8)
      weightHalf: mlpMode === "fp16" ? raw : null, // the stored binary16 bits (uploaded as they are)
      weightInt8: mlpMode === "int8" ? raw : null, // the stored int8 values and per-row scales (likewise)
      weightScales: scales,
      bias: j === 0 ? null : sec(`mlp/${j}/bias`),
    };
  });
  const quantized = (h.quantization.neutral ?? "float") === "quantized";
  const identities = h.identities.map((ident, i) => {
    const out = { name: ident.name, seed: ident.seed, mlpBias0: sec(`identity/${i}/mlp_bias0`), neutralQ: null };
    if (!quantized) {
      for (const f of ["means", "scales", "quats", "opacities", "sh"]) out[f] = sec(`identity/${i}/${f}`);
      return out;
    }
    // what the shaders decode: the stored integers and their ranges
    const q = {};
    for (const f of QUANTIZED_NEUTRAL) q[f] = { data: sec(`identity/${i}/${f}`), range: sec(`identity/${i}/${f}_range`) };
    q.quats = { data: sec(`identity/${i}/quats`) };
    out.neutralQ = q;
    // decoded once for the CPU side (camera framing, depth sorting)
    out.means = dequantize(q.means.data, q.means.range, 3);
    return out;
  });
  return {
    label,
    version,
    byteLength: fileLength,
    header: h,
    gaussianCount: G,
    parameters: h.parameters.map((p) => ({ name: p.name, group: p.group, min: p.min, max: p.max, default: p.default })),
    groups,
    quantization: h.quantization.bases,
    sparse: h.quantization.sparse,
    neutralStorage: quantized ? "quantized" : "float",
    mlpStorage: mlpMode,
    constraints: { scale_min: h.constraints.scale_min, opacity_min: h.constraints.opacity_min, opacity_max: h.constraints.opacity_max },
    mlp: { layers },
    identities,
    camera: h.camera || null,
    coordinateSystem: h.coordinate_system || null,
    fidelity: h.fidelity || null,
    provenance: h.provenance || null,
  };
}
