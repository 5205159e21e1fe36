// From FaceMesh landmarks (478 points: MediaPipe's 468 + 10 iris, [x, y, z] in pixels) to the
// expression measurements the live drive maps onto a bundle's parameters.
//
// Every measurement is taken in the face's own frame (x: from the subject's right eye to the left
// one, y: up the face, z: towards the camera) in units of the outer eye-corner distance, so it does
// not change with the head's position, size in the picture or rotation. A "neutral" calibration
// stores the user's resting measurements; an expression parameter is the change from rest over the
// change that reads as full strength (GAIN), clamped to [0, 1].

// MediaPipe FaceMesh landmark indices (the subject's left/right)
const LM = {
  eyeOuterR: 33, eyeInnerR: 133, eyeOuterL: 263, eyeInnerL: 362,
  lidPairsR: [[159, 145], [158, 153], [160, 144]], // upper, lower
  lidPairsL: [[386, 374], [385, 380], [387, 373]],
  lowerLidR: 145, lowerLidL: 374,
  mouthR: 61, mouthL: 291, lipInnerUp: 13, lipInnerDown: 14, lipOuterUp: 0, lipOuterDown: 17,
  browInnerR: 105, browInnerR2: 107, browOuterR: 70, browOuterR2: 46,
  browInnerL: 334, browInnerL2: 336, browOuterL: 300, browOuterL2: 276,
  noseBridge: 168, noseTip: 1, chin: 152, forehead: 10,
};

// the change of each measurement (face units) that reads as a parameter of 1
export const GAIN = {
  eyeClose: 0.75, // of the resting eye opening (a relative measure)
  eyeWide: 0.35,
  squint: 0.03,
  mouthOpen: 0.35,
  cornerUp: 0.06,
  cornerOut: 0.06,
  cornerDown: 0.05,
  narrow: 0.12,
  browUp: 0.07,
  browDown: 0.05,
  jawSide: 0.08,
};

export const BROW_TURN = [0.1, 0.3]; // radians of head yaw: brows fully trusted below, not at all above

// typical resting measurements of an adult face (used until the user taps "neutral")
export const DEFAULT_NEUTRAL = {
  eyeOpenL: 0.1, eyeOpenR: 0.1, lowerLidL: -0.02, lowerLidR: -0.02, mouthOpen: 0.0, mouthWidth: 0.55,
  cornerL: 0.0, cornerR: 0.0, cornerOutL: 0.275, cornerOutR: 0.275, browInnerL: 0.2, browInnerR: 0.2,
  browOuterL: 0.2, browOuterR: 0.2, chinX: 0.0, yaw: 0, pitch: 0, roll: 0,
};

const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const norm = (a) => Math.sqrt(dot(a, a));
const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
const clamp01 = (x) => Math.min(1, Math.max(0, x));

/** Point `i` of a flat [x0, y0, z0, x1, ...] mesh, y flipped to point up. */
function point(mesh, i) {
  return [mesh[3 * i], -mesh[3 * i + 1], -mesh[3 * i + 2]];
}

/** The face's frame: origin between the eyes, unit axes, and the outer eye-corner distance. */
export function faceFrame(mesh) {
  const r = point(mesh, LM.eyeOuterR);
  const l = point(mesh, LM.eyeOuterL);
  const across = sub(l, r);
  const unit = norm(across) || 1;
  const x = scale(across, 1 / unit);
  const upRaw = sub(point(mesh, LM.noseBridge), point(mesh, LM.chin));
  const yRaw = sub(upRaw, scale(x, dot(upRaw, x)));
  const y = scale(yRaw, 1 / (norm(yRaw) || 1));
  const z = [x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0]];
  return { origin: scale([r[0] + l[0], r[1] + l[1], r[2] + l[2]], 0.5), x, y, z, unit };
}

/** Landmark `i` in the face frame, in eye-corner units. */
function local(mesh, frame, i) {
  const d = sub(point(mesh, i), frame.origin);
  return [dot(d, frame.x) / frame.unit, dot(d, frame.y) / frame.unit, dot(d, frame.z) / frame.unit];
}

function eyeOpening(mesh, frame, pairs, outer, inner) {
  const width = Math.abs(local(mesh, frame, outer)[0] - local(mesh, frame, inner)[0]) || 1e-6;
  let sum = 0;
  for (const [up, down] of pairs) sum += local(mesh, frame, up)[1] - local(mesh, frame, down)[1];
  return sum / pairs.length / width;
}

/** The raw measurements of one face (see the file's header), plus the head angles (radians). */
export function measure(mesh, rotation = [0, 0, 0]) {
  const f = faceFrame(mesh);
  const p = (i) => local(mesh, f, i);
  const mid = (a, b) => (p(a)[1] + p(b)[1]) / 2;
  const lipMidY = mid(LM.lipInnerUp, LM.lipInnerDown);
  const mouthCentreX = (p(LM.mouthL)[0] + p(LM.mouthR)[0]) / 2;
  return {
    eyeOpenL: eyeOpening(mesh, f, LM.lidPairsL, LM.eyeOuterL, LM.eyeInnerL),
    eyeOpenR: eyeOpening(mesh, f, LM.lidPairsR, LM.eyeOuterR, LM.eyeInnerR),
    lowerLidL: p(LM.lowerLidL)[1] - (p(LM.eyeOuterL)[1] + p(LM.eyeInnerL)[1]) / 2,
    lowerLidR: p(LM.lowerLidR)[1] - (p(LM.eyeOuterR)[1] + p(LM.eyeInnerR)[1]) / 2,
    mouthOpen: p(LM.lipInnerUp)[1] - p(LM.lipInnerDown)[1],
    mouthWidth: p(LM.mouthL)[0] - p(LM.mouthR)[0],
    cornerL: p(LM.mouthL)[1] - lipMidY,
    cornerR: p(LM.mouthR)[1] - lipMidY,
    cornerOutL: p(LM.mouthL)[0] - mouthCentreX,
    cornerOutR: mouthCentreX - p(LM.mouthR)[0],
    browInnerL: mid(LM.browInnerL, LM.browInnerL2) - p(LM.eyeInnerL)[1],
    browInnerR: mid(LM.browInnerR, LM.browInnerR2) - p(LM.eyeInnerR)[1],
    browOuterL: mid(LM.browOuterL, LM.browOuterL2) - p(LM.eyeOuterL)[1],
    browOuterR: mid(LM.browOuterR, LM.browOuterR2) - p(LM.eyeOuterR)[1],
    chinX: p(LM.chin)[0] - p(LM.noseBridge)[0],
    yaw: rotation[0], pitch: rotation[1], roll: rotation[2],
  };
}

/** ARKit-named expression values in [0, 1] (and the head angles relative to rest) of measurements `m`
 * against the resting measurements `rest`. */
export function arkitFromMeasures(m, rest = DEFAULT_NEUTRAL) {
  const d = (key) => m[key] - rest[key];
  const out = {};
  // a turned head's far brow drifts in a tracker's mesh: the brows fade out from 0.1 to 0.3 rad of yaw
  const browTrust = clamp01(1 - (Math.abs(d("yaw")) - BROW_TURN[0]) / (BROW_TURN[1] - BROW_TURN[0]));
  for (const [side, S] of [["Left", "L"], ["Right", "R"]]) {
    const open = m[`eyeOpen${S}`] / Math.max(1e-3, rest[`eyeOpen${S}`]); // 1 at rest
    out[`eyeBlink${side}`] = clamp01((1 - open) / GAIN.eyeClose);
    out[`eyeWide${side}`] = clamp01((open - 1) / GAIN.eyeWide);
    out[`eyeSquint${side}`] = clamp01(d(`lowerLid${S}`) / GAIN.squint) * (1 - out[`eyeBlink${side}`]);
    const up = d(`corner${S}`);
    out[`mouthSmile${side}`] = clamp01(0.35 * up / GAIN.cornerUp + 0.65 * d(`cornerOut${S}`) / GAIN.cornerOut);
    out[`mouthFrown${side}`] = clamp01(-up / GAIN.cornerDown);
    out[`browOuterUp${side}`] = clamp01(d(`browOuter${S}`) / GAIN.browUp) * browTrust;
    // a closing eye pulls a tracker's brow points down with the lid: no brow-down from half a blink on
    out[`browDown${side}`] = clamp01(-(d(`browInner${S}`) + d(`browOuter${S}`)) / 2 / GAIN.browDown)
      * (1 - clamp01(2 * out[`eyeBlink${side}`])) * browTrust;
  }
  out.browInnerUp = clamp01((d("browInnerL") + d("browInnerR")) / 2 / GAIN.browUp) * browTrust;
  out.jawOpen = clamp01(d("mouthOpen") / GAIN.mouthOpen);
  const narrow = clamp01(-d("mouthWidth") / GAIN.narrow);
  const rounded = clamp01(d("mouthOpen") / 0.08);
  out.mouthPucker = narrow * (1 - rounded);
  out.mouthFunnel = narrow * rounded;
  out.jawLeft = clamp01(d("chinX") / GAIN.jawSide);
  out.jawRight = clamp01(-d("chinX") / GAIN.jawSide);
  out.headYaw = d("yaw");
  out.headPitch = d("pitch");
  out.headRoll = d("roll");
  return out;
}

/** The same values seen in a mirror: Left and Right swapped, yaw and roll negated, jaw sides swapped. */
export function mirrored(values) {
  const out = {};
  for (const [key, v] of Object.entries(values)) {
    const swapped = key.includes("Left") ? key.replace("Left", "Right") : key.replace("Right", "Left");
    out[swapped] = key === "headYaw" || key === "headRoll" ? -v : v;
  }
  return out;
}

export const LANDMARKS = LM;

/** The ARKit names arkitFromMeasures gives (the others stay at rest). */
export const MEASURED = ["eyeBlinkLeft", "eyeBlinkRight", "eyeWideLeft", "eyeWideRight", "eyeSquintLeft",
  "eyeSquintRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "browOuterUpLeft",
  "browOuterUpRight", "browDownLeft", "browDownRight", "browInnerUp", "jawOpen", "mouthPucker", "mouthFunnel",
  "jawLeft", "jawRight"];
