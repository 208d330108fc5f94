"""Synthetic XFD dataset in the exact DetReIDX layout (no download needed: demo, tests, benchmarks).

``python -m datasets.synthetic --root DIR [--ids N] [--test-ids M] [--seed S] ...``

What it draws, and why it is learnable the way the real data is:

* Every identity has a fixed body build (stature, shoulder and hip width, leg length, head size,
  torso depth, limb thickness) and a skin/hair colour, plus one outfit per outdoor session (colours,
  a pattern, shorts or trousers, shoes, optional bag and hat). A share of the identities
  (``--clothes-change``) wear a different outfit in session S2: colour identifies a person within a
  session, body build (and, in version 2, gait) across sessions.
* People are 3-D stick-and-box figures walking with a gait cycle, rendered with an orthographic
  camera: ground cameras look almost horizontally (large crops, camid 0); drones use the 18
  capture points of DetReIDX. Vertical extents shrink with cos(pitch) and the tops of head,
  shoulders and bag appear with sin(pitch), so the nadir view shows mostly head and shoulders.
* The apparent size falls as 1 / sqrt(h^2 + d^2): the crop is rendered at the saved size, shrunk to
  the apparent size (a few pixels tall at 120 m), blurred, given sensor noise there, and upsampled
  back, as real far-distance crops are. Stripes and checks vanish with distance; colour blobs stay.
* Tracklet lengths vary (some shorter than 8 frames); frame names follow the DetReIDX outdoor
  scheme (aerial) and a ground scheme; tracklet folders are ``{pid}_{tracklet_id}`` with tracklet
  ids unique over the whole dataset. ``--session-style int`` (default) writes the form the authors'
  loader reads: the bare session integer just before the frame number (``..._1_00001.jpg``) and
  short ground names (``PID_Gender_Age_View_Frame``, fewer than 8 tokens); ``--session-style S``
  writes ``S1``/``S2`` session tokens and the long ground scheme
  (``PID_Gender_Age_Height_Weight_Ethnicity_Angle_View_Frame``).
* Train and test identities are disjoint; the test identities are laid out as the three cases and
  every query has at least one true match in its case's gallery.
* Deterministic: the same arguments give the same bytes (per-identity and per-tracklet seeds,
  fixed JPEG encoder settings, no time stamps). The dataset is written to a temporary sibling
  folder and renamed into place, so an interrupted run never leaves half a dataset at ``root``.

Nuisances of aerial-ground video (generator version 2, the default; ``--no-nuisances`` /
``SyntheticConfig(nuisances=False)`` writes version 1's world, frame for frame the bytes of the
generator before versions existed). Each models a property of real footage, none a model's trick:

* **Camera colour response** (``camera_response``): a ground camera and a drone's camera in each
  session (camids 0/1/2) render the same clothes differently: their own white balance (R, B gains
  within +-8 %), colour rotation (hue: one camera within 2 degrees of each of -16, 0, +16, assigned
  by the seed, so two cameras differ by 12-36 degrees), saturation (x0.75-1.2), exposure (x0.85-1.15)
  and tone curve (gamma 0.85-1.2), plus a small auto white balance / exposure drift per tracklet
  (+-2 degrees, +-3 % R/B, +-8 % exposure). Real sensors, ISPs and lighting of the two sessions differ
  (DetReIDX's drones vs ground cameras); colours stay consistent within one camera.
* **Identity-specific gait** (``Gait``, ``tracklet_gait``): cadence (8-14 frames per gait cycle), leg
  swing (18-36 degrees), arm swing (0.3-1.2 x the leg swing), vertical bob and knee bend are drawn per
  identity and vary only a little per tracklet (+-3 % pace, +-5 % swing): gait is a biometric that
  survives a change of clothes, as in real walking-person footage.
* **Frame quality that comes and goes** (``plan_frame_quality``): short events (1-4 frames) of
  occlusion (a pole, a barrier or parked object in front of the legs, another pedestrian passing in
  front), motion blur (drone vibration, a camera pan, a fast step) and a truncated detector box
  (part of the body cut off, as detectors and trackers do at frame borders and under occlusion);
  about a quarter of the frames, the rate varying by tracklet (busier scenes); the first frame of a
  tracklet is clean (a tracker starts on a confident detection). Degradations draw nothing from the
  tracklet's random stream, so the clean frames are the frames of the undegraded tracklet.
* **Clothes changes reported**: the info file ``synthetic_xfd.json`` maps every tracklet folder to the
  outfit it shows (``"tracklet_outfits": {"0004_17": "0004/S2"}``; an identity who keeps its clothes has
  one key for both sessions; a ground tracklet gets the outfit it shows), read back with
  ``load_tracklet_outfits(root)``: a query whose true matches all show another outfit is a
  clothes-changed query. The info file also records ``generator_version`` (2, or 1 without nuisances).
  Both versions write the mapping.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import cv2
import numpy as np

from datasets.detreidx.names import CAPTURE_POINTS
from datasets.detreidx.splits import split_aerial_to_aerial
from utils.protocol import CASE_FOLDERS, TRAIN_FOLDER

logger = logging.getLogger(__name__)

INFO_FILE = "synthetic_xfd.json"
# Version of the synthetic world written into the info file: 2 = with the nuisances described above;
# ``SyntheticConfig(nuisances=False)`` writes version 1 (the frames of the generator before versions existed).
GENERATOR_VERSION = 2
SESSION_DATES = {"S1": (23, 10, 2024), "S2": (24, 10, 2024)}
# Named clothing colours (RGB); the palette index is the soft-biometric code in frame names.
PALETTE = np.array([
    (200, 30, 30), (30, 60, 170), (40, 140, 50), (230, 200, 40), (240, 240, 235), (25, 25, 28),
    (120, 120, 125), (130, 70, 30), (240, 130, 20), (130, 40, 140), (230, 120, 160), (40, 170, 180),
    (200, 180, 140), (90, 100, 40),
], dtype=np.float64)
HAIR_COLOURS = np.array([(20, 15, 10), (70, 40, 20), (140, 90, 40), (200, 170, 100), (120, 120, 120), (150, 50, 20)], dtype=np.float64)
SKIN_TONES = np.array([(240, 200, 170), (225, 175, 140), (190, 140, 100), (140, 95, 65), (95, 65, 45)], dtype=np.float64)
PATTERNS = ("plain", "stripes", "split", "checks")
# How frame names carry the session: "int" (the authors' form, short ground names) or "S" (S1/S2 tokens).
SESSION_STYLES = ("int", "S")


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings (the CLI flags)."""

    num_ids: int = 30                 # training identities
    num_test_ids: int = 20            # test identities (disjoint from training)
    seed: int = 0
    ground_tracklets: int = 2         # ground tracklets per identity
    aerial_tracklets: int = 3         # aerial tracklets per identity and session (S1, S2)
    min_frames: int = 4               # tracklet length range (inclusive)
    max_frames: int = 24
    clothes_change: float = 0.3       # share of identities with a different outfit in S2
    ground_size: int = 128            # saved ground crop height in pixels
    aerial_size: int = 80             # saved aerial crop longer side in pixels
    jpeg_quality: int = 90
    first_pid: int = 1                # PID of the first training identity
    session_style: str = "int"        # frame-name form, see SESSION_STYLES
    nuisances: bool = True            # camera colour response, identity gait, frame quality (False: version 1's world)

    @property
    def generator_version(self) -> int:
        return GENERATOR_VERSION if self.nuisances else 1

    def validate(self) -> None:
        checks = [
            (self.num_ids >= 1, "--ids must be >= 1"),
            (self.num_test_ids >= 0, "--test-ids must be >= 0"),
            (self.ground_tracklets >= 1, "--ground-tracklets must be >= 1 (cases 1 and 2 need ground tracklets)"),
            (self.aerial_tracklets >= 1, "--aerial-tracklets must be >= 1"),
            (1 <= self.min_frames <= self.max_frames, "need 1 <= --min-frames <= --max-frames"),
            (0.0 <= self.clothes_change <= 1.0, "--clothes-change must be in [0, 1]"),
            (16 <= self.ground_size <= 1024 and 16 <= self.aerial_size <= 1024, "crop sizes must be in [16, 1024] px"),
            (1 <= self.jpeg_quality <= 100, "--jpeg-quality must be in [1, 100]"),
            (self.first_pid >= 0 and self.first_pid + self.num_ids + self.num_test_ids <= 10000,
             "PIDs must fit in 4 digits (first_pid + ids + test ids <= 10000)"),
            (self.session_style in SESSION_STYLES, f"--session-style must be one of {SESSION_STYLES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Invalid synthetic dataset settings: {message}")


# ----------------------------------------------------------------------------- identities
@dataclass(frozen=True)
class BodyBuild:
    """Fixed per identity; lengths in metres."""

    stature: float
    shoulder_width: float
    hip_width: float
    leg_fraction: float       # hip height / stature
    head_radius: float
    torso_depth: float
    limb_radius: float
    weight_kg: int
    gender: str
    age: int
    ethnicity: int


@dataclass(frozen=True)
class Outfit:
    """One session's clothing; colour indices point into PALETTE."""

    upper: int
    upper_second: int
    pattern: int              # index into PATTERNS
    lower: int
    shorts: bool
    shoes: int
    bag: int | None
    hat: int | None


@dataclass(frozen=True)
class Gait:
    """How a person walks: a biometric, the same in both sessions (clothes do not change it)."""

    stride_frames: float      # frames per gait cycle (two steps): the cadence
    leg_swing_deg: float      # hip swing amplitude (stride length)
    arm_ratio: float          # arm swing amplitude / leg swing amplitude
    bob: float                # vertical bob amplitude / stature
    knee_bend: float          # knee flexion (radians) at full back swing


# Version 1's walk: the same swing, arms, bob and knee for everybody (its cadence was drawn per tracklet).
CLASSIC_GAIT = Gait(stride_frames=11.0, leg_swing_deg=28.0, arm_ratio=0.8, bob=0.012, knee_bend=0.7)


def draw_gait(pid: int, seed: int) -> Gait:
    """One identity's gait, from its own seed (stream 7; independent of the other identities)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, pid]))
    return Gait(
        stride_frames=float(rng.uniform(8.0, 14.0)), leg_swing_deg=float(rng.uniform(18.0, 36.0)),
        arm_ratio=float(rng.uniform(0.3, 1.2)), bob=float(rng.uniform(0.006, 0.022)),
        knee_bend=float(rng.uniform(0.4, 1.0)),
    )


@dataclass(frozen=True)
class Identity:
    pid: int
    build: BodyBuild
    skin: tuple[float, float, float]
    hair: int                 # index into HAIR_COLOURS
    long_hair: bool
    beard: bool
    glasses: bool
    outfits: dict[str, Outfit]
    gait: Gait = CLASSIC_GAIT  # rendered only with SyntheticConfig.nuisances

    @property
    def changes_clothes(self) -> bool:
        return self.outfits["S1"] != self.outfits["S2"]

    def outfit_key(self, session: str) -> str:
        """Names the outfit worn in ``session`` ("S1"/"S2"): ``"0004/S1"``; one key for both sessions
        when the identity keeps its clothes."""
        return f"{self.pid:04d}/{session if self.changes_clothes else 'S1'}"


def _random_outfit(rng: np.random.Generator) -> Outfit:
    upper, upper_second, lower, shoes = (int(x) for x in rng.choice(len(PALETTE), size=4, replace=True))
    if upper_second == upper:
        upper_second = (upper + 5) % len(PALETTE)
    return Outfit(
        upper=upper, upper_second=upper_second, pattern=int(rng.choice(len(PATTERNS), p=[0.4, 0.25, 0.15, 0.2])),
        lower=lower, shorts=bool(rng.random() < 0.2), shoes=shoes,
        bag=int(rng.integers(len(PALETTE))) if rng.random() < 0.35 else None,
        hat=int(rng.integers(len(PALETTE))) if rng.random() < 0.15 else None,
    )


def make_identity(pid: int, seed: int, clothes_change: float) -> Identity:
    """Draw one identity from its own seed (independent of how many identities are generated)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, pid]))
    gender = "F" if rng.random() < 0.5 else "M"
    stature = float(np.clip(rng.normal(1.64 if gender == "F" else 1.77, 0.08), 1.45, 2.0))
    # Widths span wide ranges so that body build separates identities even without colour.
    build = BodyBuild(
        stature=stature,
        shoulder_width=float(rng.uniform(0.32, 0.52)),
        hip_width=float(rng.uniform(0.26, 0.42)),
        leg_fraction=float(rng.uniform(0.43, 0.54)),
        head_radius=float(rng.uniform(0.095, 0.13)),
        torso_depth=float(rng.uniform(0.18, 0.30)),
        limb_radius=float(rng.uniform(0.04, 0.07)),
        weight_kg=int(rng.integers(50, 110)), gender=gender, age=int(rng.integers(18, 70)),
        ethnicity=int(rng.integers(1, 6)),
    )
    first = _random_outfit(rng)
    second_candidate = _random_outfit(rng)
    second = second_candidate if rng.random() < clothes_change else first
    return Identity(
        pid=pid, build=build, skin=tuple(SKIN_TONES[rng.integers(len(SKIN_TONES))]),
        hair=int(rng.integers(len(HAIR_COLOURS))), long_hair=bool(rng.random() < 0.35),
        beard=bool(gender == "M" and rng.random() < 0.3), glasses=bool(rng.random() < 0.25),
        outfits={"S1": first, "S2": second}, gait=draw_gait(pid, seed),
    )


# ----------------------------------------------------------------------------- camera colour response
# Hue rotation of the three cameras (ground, drone S1, drone S2) before a small per-camera offset: a
# seeded permutation gives each camera one slot, so any two cameras differ by 12-36 degrees of hue.
CAMERA_HUE_SLOTS_DEG = (-16.0, 0.0, 16.0)
NUM_CAMERAS = 3   # camid 0 ground, 1 drone session S1, 2 drone session S2


@dataclass(frozen=True)
class CameraResponse:
    """A camera's colour pipeline: white balance, colour rotation, saturation, exposure, tone curve."""

    hue_deg: float                             # rotation about the grey axis (~ HSV hue shift)
    saturation: float                          # chroma gain about the luma of each pixel
    wb_gains: tuple[float, float, float]       # per-channel (R, G, B) white-balance gains
    exposure: float                            # linear gain before the tone curve
    gamma: float                               # out = 255 * (in / 255) ** gamma

    def matrix(self) -> np.ndarray:
        """The 3x3 linear part (white balance, then hue rotation, then saturation), for column RGB vectors."""
        theta = math.radians(self.hue_deg)
        c, s = math.cos(theta), math.sin(theta)
        k, r = (1.0 - c) / 3.0, s / math.sqrt(3.0)
        # Rodrigues rotation about (1, 1, 1)/sqrt(3): positive angles turn red towards green (HSV hue up).
        hue = np.array([[c + k, k - r, k + r], [k + r, c + k, k - r], [k - r, k + r, c + k]])
        luma = np.tile(np.array([0.299, 0.587, 0.114]), (3, 1))
        saturation = self.saturation * np.eye(3) + (1.0 - self.saturation) * luma
        return saturation @ hue @ np.diag(self.wb_gains)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(H,W,3) float32 RGB in 0..255 -> the camera's rendering of it (float32, 0..255).

        The tone curve is read from a table in steps of 1/16 grey level (exact to ~0.2 levels, 3x
        faster than a power per pixel)."""
        linear = cv2.transform(np.ascontiguousarray(rgb, dtype=np.float32), _camera_matrix(self))
        steps = np.clip(linear * _TONE_STEPS + 0.5, 0.0, 255.0 * _TONE_STEPS).astype(np.int32)
        return _tone_table(self.gamma)[steps]


_TONE_STEPS = 16   # tone-curve table entries per grey level


@functools.lru_cache(maxsize=64)
def _camera_matrix(response: CameraResponse) -> np.ndarray:
    return (response.matrix() * response.exposure).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _tone_table(gamma: float) -> np.ndarray:
    levels = np.arange(255 * _TONE_STEPS + 1, dtype=np.float64) / (255.0 * _TONE_STEPS)
    return (255.0 * np.power(levels, gamma)).astype(np.float32)


def camera_response(config: SyntheticConfig, camid: int) -> CameraResponse | None:
    """Camera ``camid``'s colour response for this dataset seed (None when ``config.nuisances`` is off).

    Fixed per camera (streams 5), so an identity's colours stay consistent within one camera.
    """
    if not config.nuisances:
        return None
    if not 0 <= camid < NUM_CAMERAS:
        raise ValueError(f"camid must be in [0, {NUM_CAMERAS}), got {camid}")
    slot = int(np.random.default_rng(np.random.SeedSequence([config.seed, 5])).permutation(NUM_CAMERAS)[camid])
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 5, camid]))
    return CameraResponse(
        hue_deg=CAMERA_HUE_SLOTS_DEG[slot] + float(rng.uniform(-2.0, 2.0)),
        saturation=float(rng.uniform(0.75, 1.2)),
        wb_gains=(float(np.exp(rng.uniform(-0.08, 0.08))), 1.0, float(np.exp(rng.uniform(-0.08, 0.08)))),
        exposure=float(rng.uniform(0.85, 1.15)), gamma=float(rng.uniform(0.85, 1.2)),
    )


# ----------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class View:
    """How one tracklet is filmed."""

    aerial: bool
    pitch_deg: float                      # 0 = horizontal, 90 = nadir
    yaw_deg: float                        # walking direction relative to the camera (180 = towards it)
    px_per_metre_apparent: float | None   # real resolution of the person (aerial); None = saved size
    noise_sigma: float                    # sensor noise std (0..255) at the apparent resolution
    blur_sigma: float                     # optical blur std in apparent pixels
    light: tuple[float, float, float]     # per-channel illumination gain
    session: str
    camera: CameraResponse | None = None  # colour response of the camera (None: version 1, none)


def apparent_px_per_metre(aerial_distance: float) -> float:
    """Pixels per metre on the drone sensor: about 90 px for a person at 11.6 m, 8 px at 134 m."""
    return 600.0 / max(aerial_distance, 1.0)


class _Figure:
    """Primitives of one posed figure, projected to the image plane (metres, v pointing up)."""

    def __init__(self, pitch_deg: float):
        theta = math.radians(pitch_deg)
        self.sin, self.cos = math.sin(theta), math.cos(theta)
        self.items: list[tuple] = []   # (closeness, kind, geometry, colour, extra)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N,3) world points -> (N,2) image-plane (u, v); orthographic camera looking along +y, pitched down."""
        return np.stack([points[:, 0], points[:, 1] * self.sin + points[:, 2] * self.cos], axis=1)

    def closeness(self, point: np.ndarray) -> float:
        # Larger = nearer to the camera; painted later.
        return float(-point[1] * self.cos + point[2] * self.sin)

    def capsule(self, p0, p1, radius, colour, bias=0.0):
        pts = self.project(np.stack([p0, p1]))
        self.items.append((self.closeness((p0 + p1) / 2) + bias, "capsule", (pts, radius), colour, None))

    def sphere(self, centre, radius, colour, bias=0.0):
        pts = self.project(centre[None])
        self.items.append((self.closeness(centre) + bias, "circle", (pts, radius), colour, None))

    def hull(self, corners, colour, bias=0.0, pattern=None, top=None):
        pts = self.project(corners)
        top_pts = self.project(top) if top is not None and self.sin > 0.05 else None
        self.items.append((self.closeness(corners.mean(0)) + bias, "hull", (pts, 0.0), colour, (pattern, top_pts)))

    def bounds(self) -> tuple[float, float, float, float]:
        lo = np.array([np.inf, np.inf])
        hi = -lo
        for _, _, (pts, radius), _, _ in self.items:
            lo = np.minimum(lo, pts.min(0) - radius)
            hi = np.maximum(hi, pts.max(0) + radius)
        return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _rot_z(yaw_rad: float) -> np.ndarray:
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose_figure(identity: Identity, outfit: Outfit, view: View, phase: float, gait: Gait = CLASSIC_GAIT) -> _Figure:
    """Build the walking figure at gait phase ``phase`` (radians), walking with ``gait``, as projected primitives."""
    b = identity.build
    fig = _Figure(view.pitch_deg)
    rot = _rot_z(math.radians(view.yaw_deg))

    def world(x, y, z):
        return rot @ np.array([x, y, z], dtype=np.float64)

    swing = math.radians(gait.leg_swing_deg) * math.sin(phase)
    bob = gait.bob * b.stature * abs(math.cos(phase))
    hip_z = b.leg_fraction * b.stature + bob
    shoulder_z = b.stature - 2.0 * b.head_radius - 0.04 * b.stature + bob
    head_z = b.stature - b.head_radius + bob
    leg_r = max(b.limb_radius * 1.15, b.hip_width * 0.2)
    upper = PALETTE[outfit.upper]
    lower = PALETTE[outfit.lower]
    skin = np.array(identity.skin)
    hair = HAIR_COLOURS[identity.hair]

    # Legs: thigh + shin; the knee bends while the leg swings back.
    thigh = shin = hip_z / 2.0
    for side, angle in ((-1, swing), (1, -swing)):
        bend = max(0.0, -math.sin(phase * side)) * gait.knee_bend
        hip = world(side * b.hip_width / 4.0, 0.0, hip_z)
        knee = hip + rot @ np.array([0.0, thigh * math.sin(angle), -thigh * math.cos(angle)])
        ankle = knee + rot @ np.array([0.0, shin * math.sin(angle - bend), -shin * math.cos(angle - bend)])
        fig.capsule(hip, knee, leg_r, lower)
        fig.capsule(knee, ankle, leg_r * 0.9, skin if outfit.shorts else lower)
        toe = ankle + rot @ np.array([0.0, 0.16, 0.0])
        fig.capsule(ankle, toe, leg_r * 0.8, PALETTE[outfit.shoes], bias=0.01)

    # Torso: a frustum from hip width to shoulder width; its top face shows from above.
    half_d = b.torso_depth / 2.0
    bottom = [(sx * b.hip_width / 2.0, sy * half_d, hip_z - 0.03) for sx in (-1, 1) for sy in (-1, 1)]
    top = [(sx * b.shoulder_width / 2.0, sy * half_d, shoulder_z) for sx in (-1, 1) for sy in (-1, 1)]
    corners = np.stack([world(*c) for c in bottom + top])
    top_corners = np.stack([world(*c) for c in (top[0], top[1], top[3], top[2])])
    fig.hull(corners, upper, pattern=(PATTERNS[outfit.pattern], PALETTE[outfit.upper_second], shoulder_z - hip_z), top=top_corners)
    # Waist band in the trouser colour, drawn over the torso's lower edge.
    waist = [(sx * b.hip_width / 2.0, sy * half_d * 1.02, z) for z in (hip_z - 0.04, hip_z + 0.07) for sx in (-1, 1) for sy in (-1, 1)]
    fig.hull(np.stack([world(*c) for c in waist]), lower, bias=0.02)

    # Arms swing against the legs.
    arm_r = b.limb_radius
    for side, angle in ((-1, -swing * gait.arm_ratio), (1, swing * gait.arm_ratio)):
        shoulder = world(side * (b.shoulder_width / 2.0 + arm_r * 0.6), 0.0, shoulder_z - arm_r)
        elbow = shoulder + rot @ np.array([side * 0.02, 0.18 * b.stature * math.sin(angle), -0.18 * b.stature * math.cos(angle)])
        wrist = elbow + rot @ np.array([0.0, 0.16 * b.stature * math.sin(angle + 0.3), -0.16 * b.stature * math.cos(angle + 0.3)])
        fig.capsule(shoulder, elbow, arm_r, upper, bias=0.005)
        fig.capsule(elbow, wrist, arm_r * 0.85, upper if not outfit.shorts else skin, bias=0.005)
        fig.sphere(wrist, arm_r * 0.9, skin, bias=0.006)

    if outfit.bag is not None:
        back = [(sx * b.shoulder_width * 0.33, -half_d - sy, z) for sx in (-1, 1) for sy in (0.0, 0.14)
                for z in (shoulder_z - 0.05, shoulder_z - 0.42)]
        back_top = [(sx * b.shoulder_width * 0.33, -half_d - sy, shoulder_z - 0.05) for sx, sy in ((-1, 0.0), (1, 0.0), (1, 0.14), (-1, 0.14))]
        fig.hull(np.stack([world(*c) for c in back]), PALETTE[outfit.bag], top=np.stack([world(*c) for c in back_top]))

    # Neck, head (hair colour) and face (skin) on the side the person faces.
    neck_top = world(0.0, 0.0, head_z - b.head_radius * 0.6)
    fig.capsule(world(0.0, 0.0, shoulder_z - 0.02), neck_top, b.head_radius * 0.4, skin)
    head = world(0.0, 0.0, head_z)
    if identity.long_hair:
        fig.capsule(world(0.0, -b.head_radius * 0.4, head_z), world(0.0, -b.head_radius * 0.5, shoulder_z - 0.04),
                    b.head_radius * 0.85, hair, bias=-0.01)
    fig.sphere(head, b.head_radius, hair, bias=0.03)
    face = world(0.0, b.head_radius * 0.35, head_z - b.head_radius * 0.15)
    fig.sphere(face, b.head_radius * 0.65, skin, bias=0.035)
    if outfit.hat is not None:
        fig.sphere(world(0.0, 0.0, head_z + b.head_radius * 0.35), b.head_radius * 0.8, PALETTE[outfit.hat], bias=0.04)
    return fig


def _fill_pattern(canvas: np.ndarray, mask: np.ndarray, pattern, scale: float, origin: tuple[float, float]) -> None:
    """Paint the torso pattern (period in metres, so it shrinks away with distance) inside ``mask``."""
    name, second, torso_height = pattern
    if name == "plain":
        return
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return
    period = max(torso_height / 4.0, 0.05) * scale
    if name == "stripes":
        on = ((rows - origin[0]) // max(period / 2.0, 1.0)).astype(np.int64) % 2 == 1
    elif name == "split":
        on = cols >= cols.mean()
    else:  # checks
        step = max(period / 2.0, 1.0)
        on = (((rows - origin[0]) // step).astype(np.int64) + ((cols - origin[1]) // step).astype(np.int64)) % 2 == 1
    canvas[rows[on], cols[on]] = second


_SHIFT = 4  # cv2 sub-pixel bits
_ONE = 1 << _SHIFT


def draw_figure(canvas: np.ndarray, fig: _Figure, scale: float, u0: float, v1: float) -> None:
    """Paint ``fig`` on ``canvas`` (H,W,3 float32); pixel = ((u-u0)*scale, (v1-v)*scale)."""
    def to_px(pts: np.ndarray) -> np.ndarray:
        px = np.stack([(pts[:, 0] - u0) * scale, (v1 - pts[:, 1]) * scale], axis=1)
        return np.round(px * _ONE).astype(np.int32)

    for _, kind, (pts, radius), colour, extra in sorted(fig.items, key=lambda item: item[0]):
        colour = tuple(float(c) for c in colour)
        px = [tuple(int(v) for v in row) for row in to_px(pts)]
        r = max(int(round(radius * scale * _ONE)), _ONE // 2)
        if kind == "capsule":
            thickness = max(int(round(2 * radius * scale)), 1)
            cv2.line(canvas, px[0], px[1], colour, thickness, cv2.LINE_AA, _SHIFT)
            # cv2 caps thick lines roundly only approximately; end discs make a true capsule.
            cv2.circle(canvas, px[0], r, colour, -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(canvas, px[1], r, colour, -1, cv2.LINE_AA, _SHIFT)
        elif kind == "circle":
            cv2.circle(canvas, px[0], r, colour, -1, cv2.LINE_AA, _SHIFT)
        else:
            pattern, top_pts = extra
            hull = cv2.convexHull(np.array(px, np.int32))
            if pattern is not None and pattern[0] != "plain":
                mask = np.zeros(canvas.shape[:2], np.uint8)
                cv2.fillConvexPoly(mask, hull, 1, cv2.LINE_8, _SHIFT)
                cv2.fillConvexPoly(canvas, hull, colour, cv2.LINE_AA, _SHIFT)
                top_row = float(hull[:, 0, 1].min()) / _ONE
                _fill_pattern(canvas, mask.astype(bool), pattern, scale, (top_row, float(hull[:, 0, 0].min()) / _ONE))
            else:
                cv2.fillConvexPoly(canvas, hull, colour, cv2.LINE_AA, _SHIFT)
            if top_pts is not None:
                # Lit from above: the top face is brighter.
                top_colour = tuple(min(255.0, c * 1.15 + 8) for c in colour)
                cv2.fillConvexPoly(canvas, cv2.convexHull(to_px(top_pts)), top_colour, cv2.LINE_AA, _SHIFT)


def make_background(rng: np.random.Generator, height: int, width: int, aerial: bool) -> np.ndarray:
    """A textured background (H,W,3 float32): paving/grass seen from above, or an indoor wall and floor."""
    if aerial:
        base = np.array([(95, 120, 70), (120, 118, 112), (150, 135, 110), (80, 100, 60)][rng.integers(4)], np.float32)
    else:
        base = np.array([(200, 195, 185), (170, 175, 180), (210, 200, 170)][rng.integers(3)], np.float32)
    # Mostly brightness texture with a little colour, so the person's colours stand out as in real footage.
    coarse_size = (max(height // 12, 2), max(width // 12, 2))
    coarse = rng.normal(0.0, 10.0, size=(*coarse_size, 1)) + rng.normal(0.0, 3.0, size=(*coarse_size, 3))
    texture = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0.0, 5.0, size=(height, width, 1)).astype(np.float32)
    background = base + texture + fine
    if not aerial:
        floor = int(height * rng.uniform(0.75, 0.9))
        background[floor:] *= 0.7
    return background


# ----------------------------------------------------------------------------- frame quality
DEGRADATION_KINDS = ("occlusion", "motion_blur", "truncation")
OCCLUDERS = ("pole", "barrier", "pedestrian")
TRUNCATED_SIDES = ("bottom", "top", "left", "right")


@dataclass(frozen=True)
class FrameDegradation:
    """What spoils one frame. Positions and sizes are fractions of the crop, so they suit any crop size.

    occlusion: ``shape`` in OCCLUDERS, centred at ``position`` (fraction of the width; a barrier covers
    the full width), ``extent`` = its width (pole, pedestrian) or height (barrier), in ``colour``.
    motion_blur: a line kernel ``extent`` x the crop's longer side long, at ``angle_deg``.
    truncation: the detector box loses ``extent`` of its height/width on side ``shape`` (TRUNCATED_SIDES).
    """

    kind: str
    shape: str = ""
    position: float = 0.5
    extent: float = 0.0
    angle_deg: float = 0.0
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _draw_occluder(canvas: np.ndarray, d: FrameDegradation) -> None:
    """Paint an object between the camera and the person onto ``canvas`` (H,W,3 float32, in place)."""
    height, width = canvas.shape[:2]
    colour = tuple(float(c) for c in d.colour)
    centre = d.position * width
    if d.shape == "pole":
        half = max(d.extent * width / 2.0, 1.0)
        x0, x1 = int(round(centre - half)), int(round(centre + half))
        canvas[:, max(x0, 0):max(x1, 1)] = colour
    elif d.shape == "barrier":
        top = int(round((1.0 - d.extent) * height))
        canvas[top:] = colour
        canvas[top:top + max(height // 40, 1)] = tuple(min(255.0, c * 1.25 + 10.0) for c in colour)  # lit top edge
    else:  # a pedestrian passing in front: a body and a head, the body cut by the crop's bottom
        half = max(d.extent * width / 2.0, 2.0)
        body_top = 0.3 * height
        axes = (int(round(half)), int(round(height - body_top)))
        cv2.ellipse(canvas, (int(round(centre)), height), axes, 0.0, 180.0, 360.0, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, (int(round(centre)), int(round(body_top - 0.5 * half))), max(int(round(0.55 * half)), 1),
                   (60.0, 45.0, 35.0), -1, cv2.LINE_AA)


def _motion_blur(canvas: np.ndarray, d: FrameDegradation) -> np.ndarray:
    """Blur along a line: the camera (or the person) moved during the exposure."""
    length = max(d.extent * max(canvas.shape[:2]), 2.0)
    size = int(math.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2.0
    dx, dy = 0.5 * length * math.cos(math.radians(d.angle_deg)), 0.5 * length * math.sin(math.radians(d.angle_deg))
    to_px = lambda x, y: (int(round(x * _ONE)), int(round(y * _ONE)))  # noqa: E731
    cv2.line(kernel, to_px(c - dx, c - dy), to_px(c + dx, c + dy), 1.0, 1, cv2.LINE_AA, _SHIFT)
    kernel /= kernel.sum()
    return cv2.filter2D(canvas, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _truncate(canvas: np.ndarray, d: FrameDegradation) -> np.ndarray:
    """Cut the crop as a detector box that misses part of the person would (the scale stays)."""
    height, width = canvas.shape[:2]
    rows, cols = max(int(round(d.extent * height)), 0), max(int(round(d.extent * width)), 0)
    rows, cols = min(rows, height - 8), min(cols, width - 8)
    if rows <= 0 and d.shape in ("bottom", "top") or cols <= 0 and d.shape in ("left", "right"):
        return canvas
    return {"bottom": canvas[:height - rows], "top": canvas[rows:], "left": canvas[:, cols:],
            "right": canvas[:, :width - cols]}[d.shape]


def render_frame(identity: Identity, outfit: Outfit, view: View, phase: float, long_side: int,
                 rng: np.random.Generator, background: np.ndarray, bg_offset: tuple[int, int], *,
                 gait: Gait = CLASSIC_GAIT, degradation: FrameDegradation | None = None) -> np.ndarray:
    """One crop (H,W,3 uint8 RGB): the figure inside a detector-like box, degraded by distance.

    ``view.camera`` (if any) colours the crop as that camera renders; ``degradation`` (if any) occludes,
    blurs or truncates this frame. Neither draws from ``rng``, so the clean frames of a tracklet are
    the same with or without degraded frames between them.
    """
    fig = pose_figure(identity, outfit, view, phase, gait)
    u_min, u_max, v_min, v_max = fig.bounds()
    # Detector box: a margin around the figure, jittered per frame.
    margin = 0.08 * max(u_max - u_min, v_max - v_min)
    jitter = rng.uniform(-0.04, 0.04, size=4) * max(u_max - u_min, v_max - v_min)
    u0, u1 = u_min - margin + jitter[0], u_max + margin + jitter[1]
    v0, v1 = v_min - margin + jitter[2], v_max + margin + jitter[3]
    box_w, box_h = u1 - u0, v1 - v0
    scale = long_side / max(box_w, box_h)
    height, width = max(int(round(box_h * scale)), 8), max(int(round(box_w * scale)), 8)
    bh, bw = background.shape[:2]
    oy, ox = bg_offset[0] % max(bh - height, 1), bg_offset[1] % max(bw - width, 1)
    canvas = np.ascontiguousarray(background[oy:oy + height, ox:ox + width])
    if canvas.shape[:2] != (height, width):
        canvas = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    draw_figure(canvas, fig, scale, u0, v1)
    if degradation is not None and degradation.kind == "occlusion":
        _draw_occluder(canvas, degradation)
    canvas *= np.asarray(view.light, np.float32)
    if degradation is not None and degradation.kind == "motion_blur":
        canvas = _motion_blur(canvas, degradation)

    if view.px_per_metre_apparent is not None and view.px_per_metre_apparent < scale:
        # Shrink to what the drone really resolved, degrade there, upsample back to the saved size.
        small_h = max(int(round(box_h * view.px_per_metre_apparent)), 2)
        small_w = max(int(round(box_w * view.px_per_metre_apparent)), 2)
        small = cv2.resize(canvas, (small_w, small_h), interpolation=cv2.INTER_AREA)
        if view.blur_sigma > 0:
            small = cv2.GaussianBlur(small, (0, 0), view.blur_sigma)
        small += rng.normal(0.0, view.noise_sigma, size=small.shape).astype(np.float32)
        canvas = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    else:
        if view.blur_sigma > 0:
            canvas = cv2.GaussianBlur(canvas, (0, 0), view.blur_sigma)
        canvas += rng.normal(0.0, view.noise_sigma, size=canvas.shape).astype(np.float32)
    if view.camera is not None:
        canvas = view.camera.apply(canvas)
    if degradation is not None and degradation.kind == "truncation":
        canvas = _truncate(canvas, degradation)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- tracklets
@dataclass(frozen=True)
class TrackletPlan:
    """Everything needed to render and name one tracklet."""

    pid: int
    tracklet_id: int
    session: str | None              # aerial session; None for ground
    outfit_session: str              # whose outfit a ground tracklet shows
    capture_point: tuple[float, float, float] | None
    num_frames: int
    camid: int                       # 0 ground, 1 aerial S1, 2 aerial S2

    @property
    def name(self) -> str:
        return f"{self.pid:04d}_{self.tracklet_id}"

    @property
    def aerial(self) -> bool:
        return self.capture_point is not None


def plan_identity_tracklets(identity: Identity, config: SyntheticConfig, next_tracklet_id: int) -> list[TrackletPlan]:
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2, identity.pid]))
    plans = []
    tid = next_tracklet_id

    def length() -> int:
        return int(rng.integers(config.min_frames, config.max_frames + 1))

    for _ in range(config.ground_tracklets):
        outfit_session = "S1" if rng.random() < 0.5 else "S2"
        plans.append(TrackletPlan(identity.pid, tid, None, outfit_session, None, length(), 0))
        tid += 1
    for camid, session in ((1, "S1"), (2, "S2")):
        points = rng.choice(len(CAPTURE_POINTS), size=config.aerial_tracklets, replace=config.aerial_tracklets > len(CAPTURE_POINTS))
        for point in points:
            plans.append(TrackletPlan(identity.pid, tid, session, session, CAPTURE_POINTS[int(point)], length(), camid))
            tid += 1
    return plans


def tracklet_camera_response(plan: TrackletPlan, config: SyntheticConfig) -> CameraResponse | None:
    """The camera's response for one tracklet: its camera's (``camera_response``) with a small auto white
    balance / auto exposure drift of its own (stream 6), constant over the tracklet. None without nuisances."""
    base = camera_response(config, plan.camid)
    if base is None:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 6, plan.pid, plan.tracklet_id]))
    r, b = (float(np.exp(rng.uniform(-0.03, 0.03))) for _ in range(2))
    return CameraResponse(
        hue_deg=base.hue_deg + float(rng.uniform(-2.0, 2.0)), saturation=base.saturation,
        wb_gains=(base.wb_gains[0] * r, base.wb_gains[1], base.wb_gains[2] * b),
        exposure=base.exposure * float(np.exp(rng.uniform(-0.08, 0.08))), gamma=base.gamma,
    )


def tracklet_gait(identity: Identity, plan: TrackletPlan, config: SyntheticConfig) -> Gait | None:
    """How the person walks in this tracklet: the identity's gait with a little variation of its own
    (pace, stride, arm swing; stream 8). None without nuisances (version 1 draws a cadence per tracklet
    while rendering and walks with CLASSIC_GAIT otherwise)."""
    if not config.nuisances:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 8, plan.pid, plan.tracklet_id]))
    g = identity.gait
    return Gait(
        stride_frames=g.stride_frames * float(rng.uniform(0.97, 1.03)),
        leg_swing_deg=g.leg_swing_deg * float(rng.uniform(0.95, 1.05)),
        arm_ratio=g.arm_ratio * float(rng.uniform(0.93, 1.07)),
        bob=g.bob * float(rng.uniform(0.9, 1.1)), knee_bend=g.knee_bend * float(rng.uniform(0.95, 1.05)),
    )


def plan_frame_quality(plan: TrackletPlan, config: SyntheticConfig) -> tuple[FrameDegradation | None, ...]:
    """Per frame of the tracklet: None (clean) or what spoils it (stream 9). All None without nuisances.

    Degradations come as short events (1-4 frames, mean 2) starting after a clean frame with a rate drawn
    per tracklet (0.05-0.25: some scenes are busier); about a quarter of all frames are spoiled. The first
    frame is always clean (a tracker starts on a confident detection). An occluder moves across the crop
    during its event; a truncated box or a blur changes a little from frame to frame.
    """
    frames: list[FrameDegradation | None] = [None] * plan.num_frames
    if not config.nuisances:
        return tuple(frames)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 9, plan.pid, plan.tracklet_id]))
    rate = float(rng.uniform(0.05, 0.25))
    index = 1
    while index < plan.num_frames:
        if rng.random() >= rate:
            index += 1
            continue
        length = min(int(rng.geometric(0.5)), 4)
        kind = DEGRADATION_KINDS[int(rng.choice(len(DEGRADATION_KINDS), p=[0.4, 0.3, 0.3]))]
        if kind == "occlusion":
            shape = OCCLUDERS[int(rng.choice(len(OCCLUDERS), p=[0.35, 0.3, 0.35]))]
            if shape == "pedestrian":
                colour = tuple(float(c) for c in PALETTE[int(rng.integers(len(PALETTE)))])
            else:   # street furniture: greys and muted colours
                grey = float(rng.uniform(40.0, 170.0))
                colour = tuple(grey * float(t) for t in rng.uniform(0.85, 1.15, size=3))
            extent = float(rng.uniform(*{"pole": (0.08, 0.22), "barrier": (0.25, 0.5), "pedestrian": (0.3, 0.6)}[shape]))
            position, velocity = float(rng.uniform(0.15, 0.85)), float(rng.uniform(-0.15, 0.15))
            event = [FrameDegradation(kind, shape, position + velocity * step, extent, 0.0, colour) for step in range(length)]
        elif kind == "motion_blur":
            extent, angle = float(rng.uniform(0.05, 0.12)), float(rng.uniform(0.0, 180.0))
            event = [FrameDegradation(kind, "", 0.5, extent * float(rng.uniform(0.8, 1.2)), angle) for _ in range(length)]
        else:
            side = TRUNCATED_SIDES[int(rng.choice(len(TRUNCATED_SIDES), p=[0.35, 0.25, 0.2, 0.2]))]
            extent = float(rng.uniform(0.15, 0.35)) if side in ("bottom", "top") else float(rng.uniform(0.15, 0.3))
            event = [FrameDegradation(kind, side, 0.5, extent * float(rng.uniform(0.85, 1.15))) for _ in range(length)]
        for step, degradation in enumerate(event[:plan.num_frames - index]):
            frames[index + step] = degradation
        index += length
    return tuple(frames)


def tracklet_outfits(identity: Identity, plans: Sequence[TrackletPlan]) -> dict[str, str]:
    """Tracklet folder name -> the key of the outfit it shows (``Identity.outfit_key``)."""
    return {plan.name: identity.outfit_key(plan.outfit_session) for plan in plans}


def load_tracklet_outfits(root: str) -> dict[str, str] | None:
    """The tracklet -> outfit key mapping of a synthetic dataset at ``root`` (``"0004_17": "0004/S2"``):
    a query whose true matches all show another outfit key is a clothes-changed query. None when
    ``root`` has no info file or the file has no mapping (real data, or a dataset written before it)."""
    path = os.path.join(root, INFO_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("Cannot read %s (%s): no outfit information", path, exc)
        return None
    mapping = info.get("tracklet_outfits") if isinstance(info, dict) else None
    if not isinstance(mapping, dict):
        return None
    return {str(name): str(key) for name, key in mapping.items()}


def frame_name(identity: Identity, plan: TrackletPlan, frame_index: int, meta: dict, session_style: str = "int") -> str:
    """A DetReIDX-style frame file name: outdoor scheme for aerial frames, a ground scheme for ground frames.

    ``session_style`` "int": session as a bare integer before the frame number and short ground names
    (the authors' form); "S": ``S1``/``S2`` and the long ground scheme.
    """
    b = identity.build
    if not plan.aerial:
        if session_style == "int":
            fields = [f"{plan.pid:04d}", b.gender, str(b.age), meta["view_letter"], f"{frame_index:05d}"]
        else:
            fields = [f"{plan.pid:04d}", b.gender, str(b.age), str(int(round(b.stature * 100))), str(b.weight_kg),
                      str(b.ethnicity), str(meta["camera_angle"]), meta["view_letter"], f"{frame_index:05d}"]
        return "_".join(fields) + ".jpg"
    outfit = identity.outfits[plan.session]
    day, month, year = SESSION_DATES[plan.session]
    height, distance, angle = plan.capture_point
    fields = [
        f"{plan.pid:04d}", f"{day:02d}", f"{month:02d}", str(year), f"{meta['hour']:02d}", f"{meta['minute']:02d}",
        f"{height:g}", f"{distance:g}", f"{angle:g}", str(meta["location"]),
        str(identity.hair + 1), str(int(identity.long_hair) + 1), str(int(identity.beard)), str(int(identity.beard)),
        str(int(identity.glasses)), str(0 if outfit.hat is None else outfit.hat + 1),
        str(outfit.upper + 1), str(outfit.lower + 1), str(outfit.shoes + 1), str(0 if outfit.bag is None else outfit.bag + 1),
        "1", str(meta["scene"]), plan.session if session_style == "S" else plan.session.lstrip("S"), f"{frame_index:05d}",
    ]
    return "_".join(fields) + ".jpg"


def render_tracklet(identity: Identity, plan: TrackletPlan, config: SyntheticConfig) -> list[tuple[str, bytes]]:
    """Render one tracklet: [(frame file name, JPEG bytes)] in temporal order."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 3, plan.pid, plan.tracklet_id]))
    outfit = identity.outfits[plan.outfit_session]
    yaw = float(rng.uniform(0.0, 360.0))
    if plan.aerial:
        height, distance, angle = plan.capture_point
        aerial_distance = math.hypot(height, distance)
        gain = (1.0, 1.0, 1.0) if plan.session == "S1" else (0.86, 0.9, 1.0)   # sunny S1, overcast bluish S2
        view = View(True, angle, yaw, apparent_px_per_metre(aerial_distance),
                    noise_sigma=3.0 + 0.05 * aerial_distance, blur_sigma=float(rng.uniform(0.3, 0.8)),
                    light=tuple(g * float(rng.uniform(0.9, 1.1)) for g in gain), session=plan.session,
                    camera=tracklet_camera_response(plan, config))
        long_side = config.aerial_size
    else:
        warm = float(rng.uniform(0.9, 1.1))
        view = View(False, float(rng.uniform(5.0, 20.0)), yaw, None, noise_sigma=2.0, blur_sigma=0.4,
                    light=(warm, 1.0, 2.0 - warm), session=plan.outfit_session,
                    camera=tracklet_camera_response(plan, config))
        long_side = config.ground_size
    background = make_background(rng, long_side * 2, long_side * 2, plan.aerial)
    direction = rng.uniform(-1.0, 1.0, size=2)
    speed = rng.uniform(0.5, 2.0)
    phase0 = float(rng.uniform(0.0, 2 * math.pi))
    stride_frames = float(rng.uniform(8.0, 14.0))   # version 1's per-tracklet cadence (drawn in both worlds)
    gait = tracklet_gait(identity, plan, config)
    if gait is None:
        gait = replace(CLASSIC_GAIT, stride_frames=stride_frames)
    quality = plan_frame_quality(plan, config)
    meta = {
        "hour": int(rng.integers(9, 17)), "minute": int(rng.integers(0, 60)), "location": int(rng.integers(1, 4)),
        "scene": int(rng.integers(1, 4)), "camera_angle": int(rng.choice([0, 45, 90])),
        "view_letter": "FLBR"[int(((yaw + 45.0) % 360.0) // 90.0)],
    }
    frames = []
    encode_params = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
    for index in range(plan.num_frames):
        phase = phase0 + 2 * math.pi * index / gait.stride_frames
        offset = (int(round(index * speed * direction[0] * 3 + long_side)), int(round(index * speed * direction[1] * 3 + long_side)))
        rgb = render_frame(identity, outfit, view, phase, long_side, rng, background, offset,
                           gait=gait, degradation=quality[index])
        ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), encode_params)
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for tracklet {plan.name}")
        frames.append((frame_name(identity, plan, index + 1, meta, config.session_style), buffer.tobytes()))
    return frames


# ----------------------------------------------------------------------------- layout
def _write_tracklet(folder: str, frames: Sequence[tuple[str, bytes]]) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, data in frames:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def _generate_into(out_dir: str, config: SyntheticConfig) -> tuple[dict, dict[str, str]]:
    """Write the whole dataset into ``out_dir`` (a fresh folder); returns summary counts and the
    tracklet -> outfit key mapping."""
    train_pids = [config.first_pid + i for i in range(config.num_ids)]
    test_pids = [config.first_pid + config.num_ids + i for i in range(config.num_test_ids)]
    next_tid = 1
    counts = {"train_tracklets": 0, "test_tracklets": 0, "frames_rendered": 0, "short_tracklets": 0,
              "degraded_frames": 0, "clothes_changing_ids": 0}
    outfits: dict[str, str] = {}
    for case_folder in CASE_FOLDERS.values():
        for part in ("query", "gallery"):
            os.makedirs(os.path.join(out_dir, case_folder, part), exist_ok=True)
    os.makedirs(os.path.join(out_dir, TRAIN_FOLDER), exist_ok=True)
    for pid in train_pids + test_pids:
        identity = make_identity(pid, config.seed, config.clothes_change)
        plans = plan_identity_tracklets(identity, config, next_tid)
        next_tid += len(plans)
        rendered = {plan.name: render_tracklet(identity, plan, config) for plan in plans}
        counts["frames_rendered"] += sum(len(v) for v in rendered.values())
        counts["short_tracklets"] += sum(plan.num_frames < 8 for plan in plans)
        counts["degraded_frames"] += sum(d is not None for plan in plans for d in plan_frame_quality(plan, config))
        counts["clothes_changing_ids"] += int(identity.changes_clothes)
        outfits.update(tracklet_outfits(identity, plans))
        pid_folder = f"{pid:04d}"
        if pid in train_pids:
            counts["train_tracklets"] += len(plans)
            for plan in plans:
                _write_tracklet(os.path.join(out_dir, TRAIN_FOLDER, pid_folder, plan.name), rendered[plan.name])
            continue
        counts["test_tracklets"] += len(plans)
        ground = [p for p in plans if not p.aerial]
        aerial = [p for p in plans if p.aerial]
        split_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 4, pid]))
        a2a_query, a2a_gallery = split_aerial_to_aerial(aerial, split_rng)
        layout = {
            1: (aerial, ground),        # every aerial query has this identity's ground tracklets in the gallery
            2: (ground, aerial),
            3: (a2a_query, a2a_gallery),  # the gallery keeps tracklets of both sessions
        }
        for case, (query, gallery) in layout.items():
            for part, members in (("query", query), ("gallery", gallery)):
                for plan in members:
                    folder = os.path.join(out_dir, CASE_FOLDERS[case], part, pid_folder, plan.name)
                    _write_tracklet(folder, rendered[plan.name])
    return counts, outfits


def generate_dataset(root: str, config: SyntheticConfig = SyntheticConfig(), overwrite: bool = False) -> dict:
    """Generate the synthetic dataset at ``root`` atomically; returns summary counts.

    The data is written to a temporary sibling folder and renamed to ``root`` at the end. If another
    process finished the same root first (e.g. DDP ranks racing), its copy is kept: with the same
    settings it holds the same bytes.
    """
    config.validate()
    root = os.path.abspath(root)
    if os.path.exists(root) and os.listdir(root) and not overwrite:
        raise FileExistsError(f"{root} already exists and is not empty. Choose another --root or pass --overwrite.")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = os.path.join(parent, f".{os.path.basename(root)}.tmp-{os.getpid()}")
    if os.path.exists(tmp_dir):
        shutil.rmtree(tmp_dir)
    os.makedirs(tmp_dir)
    try:
        counts, outfits = _generate_into(tmp_dir, config)
        info = {"generator": "datasets.synthetic", "generator_version": config.generator_version,
                "config": asdict(config), **counts, "tracklet_outfits": outfits}
        with open(os.path.join(tmp_dir, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)
            f.write("\n")
        old = None
        if os.path.exists(root):
            if overwrite:
                old = os.path.join(parent, f".{os.path.basename(root)}.old-{os.getpid()}")
                os.rename(root, old)
            elif not os.listdir(root):
                os.rmdir(root)
        try:
            os.rename(tmp_dir, root)
        except OSError:
            if os.path.isdir(root) and os.listdir(root):
                logger.info("Another process generated %s first; keeping its copy", root)
                shutil.rmtree(tmp_dir, ignore_errors=True)
            else:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description="Generate the synthetic XFD dataset in the DetReIDX layout.")
    parser.add_argument("--root", required=True, help="output folder (must not exist or be empty unless --overwrite)")
    parser.add_argument("--ids", type=int, default=defaults.num_ids, help="training identities")
    parser.add_argument("--test-ids", type=int, default=defaults.num_test_ids, help="test identities")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="same seed, same bytes")
    parser.add_argument("--ground-tracklets", type=int, default=defaults.ground_tracklets, help="ground tracklets per identity")
    parser.add_argument("--aerial-tracklets", type=int, default=defaults.aerial_tracklets, help="aerial tracklets per identity and session")
    parser.add_argument("--min-frames", type=int, default=defaults.min_frames, help="shortest tracklet")
    parser.add_argument("--max-frames", type=int, default=defaults.max_frames, help="longest tracklet")
    parser.add_argument("--clothes-change", type=float, default=defaults.clothes_change, help="share of identities changing clothes between S1 and S2")
    parser.add_argument("--ground-size", type=int, default=defaults.ground_size, help="saved ground crop height (px)")
    parser.add_argument("--aerial-size", type=int, default=defaults.aerial_size, help="saved aerial crop longer side (px)")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality, help="JPEG quality")
    parser.add_argument("--session-style", choices=SESSION_STYLES, default=defaults.session_style,
                        help="frame names: 'int' = the authors' form (..._<session>_<frame>.jpg, short ground names); "
                             "'S' = S1/S2 session tokens and long ground names")
    parser.add_argument("--no-nuisances", action="store_true",
                        help=f"generate version 1's world (no camera colour response, identity gait or frame "
                             f"degradations) instead of version {GENERATOR_VERSION}'s, to compare results across versions")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --root")
    args = parser.parse_args(argv)
    config = SyntheticConfig(
        num_ids=args.ids, num_test_ids=args.test_ids, seed=args.seed, ground_tracklets=args.ground_tracklets,
        aerial_tracklets=args.aerial_tracklets, min_frames=args.min_frames, max_frames=args.max_frames,
        clothes_change=args.clothes_change, ground_size=args.ground_size, aerial_size=args.aerial_size,
        jpeg_quality=args.jpeg_quality, session_style=args.session_style, nuisances=not args.no_nuisances,
    )
    start = time.perf_counter()
    try:
        counts = generate_dataset(args.root, config, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}")
        return 2
    print(f"Wrote {os.path.abspath(args.root)} in {time.perf_counter() - start:.1f} s: "
          f"{args.ids} train + {args.test_ids} test identities, {counts['train_tracklets']} train and "
          f"{counts['test_tracklets']} test tracklets, {counts['frames_rendered']} rendered frames "
          f"({counts['short_tracklets']} tracklets shorter than 8 frames, {counts['degraded_frames']} degraded frames); "
          f"generator version {config.generator_version}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
