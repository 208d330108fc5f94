"""Compact frame lists: the frame names (:class:`FrameNames`) and paths (:class:`FramePaths`) of one tracklet.

A DetReIDX tracklet holds ~1,000 frames; one path string per frame would make the index of the whole
dataset take gigabytes, so a tracklet keeps its folder once and its names as a template plus numbers.
"""
from __future__ import annotations

import os
import re
from typing import Iterator, Sequence

import numpy as np

from utils.protocol import natural_sort_key

_LAST_NUMBER_RE = re.compile(r"(.*[^0-9])?([0-9]+)([^0-9]*)", re.S)
_MAX_NUMBER_DIGITS = 18            # fits int64


_NAME_SEPARATOR = "\0"


class FrameNames(Sequence):
    """The frame file names of one tracklet, in order, stored compactly.

    DetReIDX tracklets hold ~1,000 frames whose names differ only in a frame number, so a tracklet
    keeps one template ``prefix + number + suffix`` (``width`` > 0: zero-padded to that width) and
    its numbers (a ``range`` when evenly spaced, else an int array). Names that fit no template are
    kept as one NUL-joined string (NUL occurs in no path, so full paths fit too). Names are built when read.
    """

    __slots__ = ("prefix", "suffix", "width", "numbers", "_joined", "_starts")

    def __init__(self, prefix: str = "", suffix: str = "", width: int = 0, numbers: range | np.ndarray = range(0),
                 joined: str | None = None):
        self.prefix, self.suffix, self.width, self.numbers = prefix, suffix, width, numbers
        self._joined = joined
        self._starts = None
        if joined is not None:
            lengths = np.fromiter((len(n) + 1 for n in joined.split(_NAME_SEPARATOR)), dtype=np.int64)
            self._starts = np.concatenate([[0], np.cumsum(lengths)])

    @classmethod
    def from_names(cls, names: Sequence[str], sort: bool = True) -> "FrameNames":
        """Compact ``names``; ``sort``: in natural order (frame_2 before frame_10), else as given."""
        names = list(names)
        template = cls._template(names, sort)
        if template is not None:
            return template
        if sort:
            names.sort(key=natural_sort_key)
        return cls(joined=_NAME_SEPARATOR.join(names))

    @classmethod
    def _template(cls, names: list[str], sort: bool) -> "FrameNames | None":
        if not names:
            return cls()
        match = _LAST_NUMBER_RE.fullmatch(names[0])
        if match is None:
            return None
        prefix, suffix = match.group(1) or "", match.group(3)
        start, cut = len(prefix), len(suffix)
        if not all(n.startswith(prefix) and n.endswith(suffix) and len(n) > start + cut for n in names):
            return None
        digits = [n[start:len(n) - cut] for n in names]
        joined = "".join(digits)
        if not (joined.isascii() and joined.isdigit()):
            return None
        lengths = {len(d) for d in digits}
        if max(lengths) > _MAX_NUMBER_DIGITS:
            return None
        if len(lengths) == 1:
            width = lengths.pop()
        elif any(len(d) > 1 and d[0] == "0" for d in digits):
            return None          # mixed widths with leading zeros: no single template rebuilds them
        else:
            width = 0
        numbers = np.array(digits).astype(np.int64)
        if sort:
            numbers = np.sort(numbers)
        if len(numbers) == 1:
            return cls(prefix, suffix, width, range(int(numbers[0]), int(numbers[0]) + 1))
        steps = np.diff(numbers)
        if steps[0] > 0 and bool((steps == steps[0]).all()):
            return cls(prefix, suffix, width, range(int(numbers[0]), int(numbers[-1]) + 1, int(steps[0])))
        if numbers.min() >= 0 and numbers.max() < 2**31:
            numbers = numbers.astype(np.int32)
        return cls(prefix, suffix, width, numbers)

    def _name(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.width}d}{self.suffix}" if self.width else f"{self.prefix}{number}{self.suffix}"

    def __len__(self) -> int:
        if self._joined is not None:
            return len(self._starts) - 1
        return len(self.numbers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame index {index} out of range for a tracklet of {len(self)} frames")
        if self._joined is not None:
            return self._joined[int(self._starts[index]):int(self._starts[index + 1]) - 1]
        return self._name(int(self.numbers[index]))

    def __iter__(self) -> Iterator[str]:
        if self._joined is not None:
            if self._joined or len(self):
                yield from self._joined.split(_NAME_SEPARATOR)
            return
        for number in self.numbers:
            yield self._name(int(number))

    def _state(self) -> tuple:
        if self._joined is not None:
            return ("joined", self._joined)
        numbers = self.numbers
        key = (numbers.start, numbers.stop, numbers.step) if isinstance(numbers, range) else np.asarray(numbers, np.int64).tobytes()
        return (self.prefix, self.suffix, self.width, key)

    def __eq__(self, other) -> bool:
        if isinstance(other, FrameNames):
            # The same names always get the same representation, so comparing states is enough.
            return self._state() == other._state()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._state())

    def __repr__(self) -> str:
        return f"FrameNames({len(self)} names, first {self[0]!r})" if len(self) else "FrameNames(empty)"


class FramePaths(Sequence):
    """Frame file paths of one tracklet: its folder plus its :class:`FrameNames`; paths are built when read."""

    __slots__ = ("folder", "names")

    def __init__(self, folder: str, names: FrameNames):
        self.folder, self.names = folder, names

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> "FramePaths":
        """From full paths in the given order. Frames of one folder (the usual case) keep the folder once;
        frames from several folders (a hand-made frame list) keep their whole paths."""
        paths = [os.path.normpath(p) for p in paths]
        folders = {os.path.dirname(p) for p in paths}
        if len(folders) > 1:
            return cls("", FrameNames.from_names(paths, sort=False))
        return cls(folders.pop() if folders else "", FrameNames.from_names([os.path.basename(p) for p in paths], sort=False))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [os.path.join(self.folder, n) for n in self.names[index]]
        return os.path.join(self.folder, self.names[index])

    def __iter__(self) -> Iterator[str]:
        folder = self.folder
        return (os.path.join(folder, n) for n in self.names)

    def __eq__(self, other) -> bool:
        if isinstance(other, FramePaths):
            return self.folder == other.folder and self.names == other.names
        if isinstance(other, (tuple, list)):
            return list(self) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.folder, self.names))

    def __repr__(self) -> str:
        return f"FramePaths({self.folder!r}, {self.names!r})"

