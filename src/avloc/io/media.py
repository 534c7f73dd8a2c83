"""Video and audio decoding/encoding with PyAV.

* :func:`probe` — streams, duration, fps, frame count, resolution, audio rate
  and channels; it demuxes (does not decode) every packet, so it also finds
  truncated files whose header promises more than the file holds.
* :func:`iter_frames` — frames sampled at an analysis rate with exact
  timestamps, streamed (constant memory however long the video).
* :func:`decode_audio` — mono float32 from any container with audio (one copy in memory).
* :class:`AudioStream` — the same samples decoded on demand for windows at
  non-decreasing times (constant memory however long the track).
* :func:`write_video` — H.264 (yuv420p) + AAC MP4 from numpy frames and audio.

Rotation: phones store portrait video as landscape pictures plus a display
matrix (side data) saying how to turn them. :func:`probe` reports the coded
size, the ``rotation`` (degrees counter-clockwise, as ``ffprobe`` shows the
display matrix: a phone's portrait clip is usually -90) and the display size
(``width`` x ``height``); :func:`iter_frames` returns pictures in display
orientation, and its ``size`` is a display size. Everything downstream
(analysis, JSON coordinates, overlay) therefore works in display orientation.

Sampling rule of :func:`iter_frames`: target times are ``t_k = start + k / fps``
for ``t_k < duration``; for each target the decoded frame shown at that time is
returned (the last frame whose presentation time is <= ``t_k``; the first
frame for targets before it). This is correct for variable frame rate video.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from avloc.errors import MediaError

# A file whose streams end this much earlier than the container says is truncated.
TRUNCATION_TOLERANCE_S = 0.5


@dataclass
class MediaInfo:
    """What :func:`probe` reports; ``None`` where a stream is absent."""

    path: str
    duration: float | None
    fps: float | None
    fps_fraction: str | None
    width: int | None
    height: int | None
    frames: int | None
    video_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None
    audio_codec: str | None
    format: str
    #: size as stored in the stream, before the display matrix's rotation (``width``/``height``: as displayed)
    coded_width: int | None = None
    coded_height: int | None = None
    #: display-matrix rotation, degrees counter-clockwise (ffprobe's convention): 0, 90, -90 or 180
    rotation: int = 0

    @property
    def has_video(self) -> bool:
        return self.width is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_sample_rate is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the most video packets probe decodes to find the first frame (and its display matrix)
ROTATION_PROBE_PACKETS = 64


def frame_rotation(frame: Any, path: str | Path) -> int:
    """The display-matrix rotation of a decoded frame: 0, 90, -90 or 180 (degrees counter-clockwise)."""
    r = float(getattr(frame, "rotation", 0) or 0)
    q = round(r / 90) * 90
    if abs(r - q) > 1:
        raise MediaError(f"{path}: display rotation of {r:g} degrees is not a multiple of 90 (not supported)")
    q = ((q + 180) % 360) - 180  # in [-180, 180)
    return 180 if q == -180 else q


def rotate_picture(img: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a coded picture (H, W, 3) to display orientation (``rotation`` counter-clockwise)."""
    k = (rotation // 90) % 4
    return img if k == 0 else np.ascontiguousarray(np.rot90(img, k))


def _open(path: str | Path) -> Any:
    import av

    p = Path(path)
    if not p.exists():
        raise MediaError(f"file not found: {p}")
    if p.is_dir():
        raise MediaError(f"{p} is a directory, not a media file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p} is empty (0 bytes)")
    try:
        return av.open(str(p))
    except av.FFmpegError as e:
        raise MediaError(f"{p}: not a readable media file ({e.strerror or e})") from None


def probe(path: str | Path) -> MediaInfo:
    """Describe ``path``; raises :class:`MediaError` if unreadable, truncated or empty."""
    import av

    p = Path(path)
    with _open(p) as c:
        vs = c.streams.video[0] if c.streams.video else None
        aus = c.streams.audio[0] if c.streams.audio else None
        if vs is None and aus is None:
            raise MediaError(f"{p}: no video or audio stream")
        streams = [s for s in (vs, aus) if s is not None]
        n_video = 0
        ends: dict[int, float] = {}
        rotation: int | None = None if vs is not None else 0
        try:
            for pkt in c.demux(*streams):
                if pkt.size == 0 or pkt.pts is None:
                    continue
                t = float((pkt.pts + (pkt.duration or 0)) * pkt.time_base)
                ends[pkt.stream.index] = max(ends.get(pkt.stream.index, 0.0), t)
                if vs is not None and pkt.stream.index == vs.index:
                    n_video += 1
                    if rotation is None:  # the display matrix comes with the first decoded frame
                        try:
                            first = next(iter(pkt.decode()), None)
                        except av.FFmpegError:
                            first = None
                        if first is not None:
                            rotation = frame_rotation(first, p)
                        elif n_video >= ROTATION_PROBE_PACKETS:
                            rotation = 0
        except av.FFmpegError as e:
            raise MediaError(f"{p}: truncated or corrupt media ({e.strerror or e})") from None
        declared = c.duration / 1_000_000 if c.duration else None
        measured = max(ends.values()) if ends else 0.0
        start = float(c.start_time / 1_000_000) if c.start_time else 0.0
        if not ends or measured - start <= 0:
            raise MediaError(f"{p}: zero duration (no decodable packets)")
        if declared is not None and measured - start < declared - TRUNCATION_TOLERANCE_S:
            raise MediaError(
                f"{p}: truncated: the header says {declared:.2f} s but the streams end at {measured - start:.2f} s"
            )
        duration = declared if declared is not None else measured - start
        fps = fps_frac = None
        if vs is not None:
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            if rate:
                fps, fps_frac = float(rate), f"{rate.numerator}/{rate.denominator}"
        rotation = rotation or 0
        cw = vs.codec_context.width if vs is not None else None
        ch = vs.codec_context.height if vs is not None else None
        turned = rotation in (90, -90)
        return MediaInfo(
            path=str(p),
            duration=round(float(duration), 6),
            fps=fps,
            fps_fraction=fps_frac,
            width=ch if turned else cw,
            height=cw if turned else ch,
            frames=n_video if vs is not None else None,
            video_codec=vs.codec_context.name if vs is not None else None,
            audio_sample_rate=aus.codec_context.sample_rate if aus is not None else None,
            audio_channels=aus.codec_context.channels if aus is not None else None,
            audio_codec=aus.codec_context.name if aus is not None else None,
            format=c.format.name,
            coded_width=cw,
            coded_height=ch,
            rotation=rotation,
        )


@dataclass
class Frame:
    """One analysed frame: its index, target time, the source frame's own time, pixels."""

    index: int
    time: float
    source_time: float
    image: np.ndarray  # (H, W, 3) uint8 RGB


def fit_size(width: int, height: int, max_side: int | None = None, short_side: int | None = None) -> tuple[int, int]:
    """Output (w, h) keeping aspect: short side = ``short_side`` or long side <= ``max_side`` (even sizes)."""
    s = 1.0
    if short_side is not None:
        s = short_side / min(width, height)
    elif max_side is not None and max(width, height) > max_side:
        s = max_side / max(width, height)
    return max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)


def iter_frames(
    path: str | Path,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> Iterator[Frame]:
    """Yield frames sampled at ``fps`` (all frames when ``None``) between ``start`` and ``end``.

    ``size`` = (width, height) resizes with FFmpeg's swscale (bilinear). Memory
    is constant: one decoded frame is held at a time. Pictures, and ``size``,
    are in display orientation (the display matrix applied; module doc).
    """
    import av

    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise MediaError(f"analysis fps must be positive, got {fps}")
    p = Path(path)
    with _open(p) as c:
        if not c.streams.video:
            raise MediaError(f"{p}: no video stream")
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        t0 = float(c.start_time / 1_000_000) if c.start_time else 0.0
        k = 0
        prev: Any = None
        prev_t = 0.0
        n_all = 0

        rotation: int | None = None

        def convert(fr: Any) -> np.ndarray:
            nonlocal rotation
            if rotation is None:
                rotation = frame_rotation(fr, p)
            if size is not None:
                w, h = (size[1], size[0]) if rotation in (90, -90) else size  # the coded picture's size
                img = fr.to_ndarray(width=w, height=h, format="rgb24", interpolation="BILINEAR")
            else:
                img = fr.to_ndarray(format="rgb24")
            return rotate_picture(img, rotation)

        try:
            for fr in c.decode(vs):
                ft = (float(fr.time) if fr.time is not None else n_all / float(vs.average_rate or 25)) - t0
                n_all += 1
                if end is not None and ft > end and fps is None:
                    return
                if fps is None:
                    if ft >= start:
                        yield Frame(k, ft, ft, convert(fr))
                        k += 1
                    continue
                # emit every target time that falls before this frame, using the previous frame
                while True:
                    target = start + k / fps
                    if end is not None and target >= end:
                        return
                    if target >= ft or (prev is None and target >= ft):
                        break
                    src = prev if prev is not None else fr
                    yield Frame(k, target, prev_t if prev is not None else ft, convert(src))
                    k += 1
                prev, prev_t = fr, ft
        except av.FFmpegError as e:
            raise MediaError(f"{p}: decoding failed at frame {n_all} ({e.strerror or e}); file truncated or corrupt?") from None
        if n_all == 0:
            raise MediaError(f"{p}: video stream has no decodable frames")
        if fps is not None and prev is not None:
            last_end = prev_t + (1.0 / float(vs.average_rate) if vs.average_rate else 0.0)
            stop = last_end if end is None else min(end, last_end)
            while start + k / fps < stop:
                yield Frame(k, start + k / fps, prev_t, convert(prev))
                k += 1


def decode_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any container to mono float32.

    Resampling (when ``sample_rate`` is given) and down-mixing are done by
    FFmpeg's swresample. Returns ``(samples (N,), rate)``.
    """

    p = Path(path)
    with _open(p) as c:
        if not c.streams.audio:
            raise MediaError(f"{p}: no audio stream (this operation needs sound)")
        st = c.streams.audio[0]
        rate = sample_rate or st.codec_context.sample_rate
        if not rate:
            raise MediaError(f"{p}: audio stream has no sample rate")
        # One buffer, sized from the container's duration and grown (doubling) only if the stream runs
        # longer: no list of chunks plus a concatenated copy (twice the track at its peak).
        guess = round(float(c.duration or 0) / 1_000_000 * rate) + rate
        wav = np.zeros(max(guess, rate), np.float32)
        total = 0
        for pos, data in _placed_chunks(c, st, int(rate), p):
            end = pos + data.size
            if end > wav.size:
                grown = np.zeros(max(end, 2 * wav.size), np.float32)
                grown[:total] = wav[:total]
                wav = grown
            wav[pos:end] = data
            total = max(total, end)
    if total == 0:
        raise MediaError(f"{p}: audio stream has no samples")
    return (wav[:total] if total == wav.size else wav[:total].copy()), int(rate)


def _placed_chunks(c: Any, st: Any, rate: int, p: Path) -> Iterator[tuple[int, np.ndarray]]:
    """Mono float32 chunks at ``rate`` with their sample positions from the stream's start.

    Chunks are placed at their presentation time (in samples at ``rate``), so
    timestamp gaps become silence instead of shifting later audio earlier.
    """
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    cursor = 0
    start = 0 if st.start_time is None else round(float(st.start_time * st.time_base) * rate)
    try:
        for fr in c.decode(st):
            for out in resampler.resample(fr):
                data = out.to_ndarray().reshape(-1)
                pos = cursor if out.pts is None else max(int(out.pts) - start, 0)
                cursor = pos + data.size
                yield pos, data
        for out in resampler.resample(None):
            data = out.to_ndarray().reshape(-1)
            pos = cursor if out.pts is None else max(int(out.pts) - start, 0)
            cursor = pos + data.size
            yield pos, data
    except av.FFmpegError as e:
        raise MediaError(f"{p}: audio decoding failed ({e.strerror or e}); file truncated or corrupt?") from None


class AudioStream:
    """The first audio stream of ``path`` as mono float32 at ``rate``, decoded on demand (constant memory).

    :meth:`window` gives the same samples as :func:`avloc.io.audio.window_at` on
    :func:`decode_audio`'s whole track (zero padding outside it), for window
    starts that never go back in time: what a front-to-back pass such as
    ``localize_video``'s analysis asks for. Only the samples from the last
    window's start onward are held.
    """

    def __init__(self, path: str | Path, rate: int) -> None:
        self.path = Path(path)
        self.rate = int(rate)
        self._c = _open(self.path)
        if not self._c.streams.audio:
            self._c.close()
            raise MediaError(f"{self.path}: no audio stream (this operation needs sound)")
        self._chunks: Iterator[tuple[int, np.ndarray]] | None = _placed_chunks(
            self._c, self._c.streams.audio[0], self.rate, self.path
        )
        self._buf = np.zeros(4 * self.rate, np.float32)
        self._base = 0  # sample index of _buf[0]
        self._end = 0  # samples decoded so far (index one past the last)

    def _put(self, pos: int, data: np.ndarray) -> None:
        lo = max(pos, self._base)
        end = pos + data.size
        if end <= lo:
            return
        need = end - self._base
        if need > self._buf.size:
            grown = np.zeros(max(need, 2 * self._buf.size), np.float32)
            grown[: self._end - self._base] = self._buf[: self._end - self._base]
            self._buf = grown
        self._buf[lo - self._base : end - self._base] = data[lo - pos :]
        if pos > self._end:  # a timestamp gap: silence (the buffer may hold older samples there)
            self._buf[self._end - self._base : pos - self._base] = 0
        self._end = max(self._end, end)

    def _drop_before(self, start: int) -> None:
        if start - self._base > self._buf.size // 2:  # compact rarely: amortised O(1) per sample
            keep = max(0, self._end - start)
            self._buf[:keep] = self._buf[start - self._base : start - self._base + keep]
            self._buf[keep:] = 0
            self._base = start

    def window(self, center: float, seconds: float) -> np.ndarray:
        """The ``seconds`` window centred on ``center`` (as :func:`avloc.io.audio.window_at`, zero padding)."""
        n = round(seconds * self.rate)
        if n <= 0:
            raise MediaError(f"window length must be positive, got {seconds} s")
        start = round(center * self.rate) - n // 2
        if max(start, 0) < self._base:
            raise ValueError(f"AudioStream windows must not go back in time ({start} < {self._base} samples)")
        while self._end < start + n and self._chunks is not None:
            nxt = next(self._chunks, None)
            if nxt is None:
                self._chunks = None
                self.close()
                break
            self._put(*nxt)
        out = np.zeros(n, np.float32)
        lo, hi = max(start, self._base), min(start + n, self._end)
        if hi > lo:
            out[lo - start : hi - start] = self._buf[lo - self._base : hi - self._base]
        self._drop_before(max(start, self._base))
        return out

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_audio(path: str | Path) -> Iterator[np.ndarray]:
    """The first audio stream of ``path`` as consecutive mono float32 chunks at its own rate (streamed).

    Timestamp gaps are filled with silence, as in :func:`decode_audio`; the chunks
    concatenated are that function's samples (where chunks overlap, the earlier wins).
    """
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError(f"{path}: no audio stream (this operation needs sound)")
        st = c.streams.audio[0]
        cursor = 0
        for pos, data in _placed_chunks(c, st, int(st.codec_context.sample_rate), Path(path)):
            if pos > cursor:
                yield np.zeros(pos - cursor, np.float32)
            elif pos < cursor:
                data = data[cursor - pos :]
            if data.size:
                yield data
            cursor = max(cursor, pos + data.size)


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | Iterable[np.ndarray] | None = None,
    sample_rate: int | None = None,
    crf: int = 23,
    preset: str = "veryfast",
    threads: int | None = None,
) -> Path:
    """Encode RGB uint8 frames (H, W, 3) as H.264 MP4, with mono AAC audio if given.

    ``threads``: x264 threads (``None``: FFmpeg's choice). Threaded encoding may differ from run to run with
    the machine's load; ``threads=1`` gives the same file for the same input (reproducible data sets).

    Frames are consumed lazily, and so is ``audio`` when it is an iterable of
    mono chunks (:func:`iter_audio`) rather than one array: the audio is encoded
    alongside the video, up to each frame's end time, so the muxer never queues
    more than a frame's worth of packets and memory stays constant however long
    the video. Odd frame sizes are padded by one pixel (yuv420p needs even
    sizes). Writes to ``path`` directly; the caller makes it atomic.
    """
    import av

    if audio is not None and not sample_rate:
        raise MediaError("write_video: audio given without sample_rate")
    rate = Fraction(fps).limit_denominator(1001)
    options = {"crf": str(crf), "preset": preset} | ({} if threads is None else {"threads": str(threads)})
    with av.open(str(path), "w", format="mp4") as out:
        track = None if audio is None else _AudioTrack(out, audio, int(sample_rate))  # type: ignore[arg-type]
        vs: Any = None
        for i, img in enumerate(frames):
            vs = _encode_frame(out, vs, img, i, rate, options)
            if track is not None:
                track.pump(round((i + 1) / float(rate) * track.rate))
        if vs is None:
            raise MediaError("write_video: no frames to write")
        for pkt in vs.encode():
            out.mux(pkt)
        if track is not None:
            track.finish()
    return Path(path)


def _encode_frame(out: Any, vs: Any, img: np.ndarray, i: int, rate: Fraction, options: dict[str, str]) -> Any:
    """Encode frame ``i`` (the video stream is made from the first frame's size); returns the stream."""
    import av

    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise MediaError(f"write_video: frame {i} must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    if vs is None:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height = img.shape[1], img.shape[0]
        vs.pix_fmt = "yuv420p"
        vs.options = options
    elif (img.shape[1], img.shape[0]) != (vs.width, vs.height):
        raise MediaError(f"write_video: frame {i} is {img.shape[1]}x{img.shape[0]}, expected {vs.width}x{vs.height}")
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    vf.pts = i
    vf.time_base = 1 / rate
    for pkt in vs.encode(vf):
        out.mux(pkt)
    return vs


class _AudioTrack:
    """The mono AAC track of :func:`write_video`, fed lazily from an array or an iterable of chunks.

    AAC encoders prepend ``frame_size`` priming samples that PyAV's MP4 muxer does not hide with an edit
    list; advancing the audio by that much keeps it in sync with the video (the first ``frame_size``
    samples are lost: 64 ms at 16 kHz).
    """

    def __init__(self, out: Any, audio: np.ndarray | Iterable[np.ndarray], rate: int) -> None:
        import av

        self.out, self.rate = out, rate
        self.chunks: Iterator[np.ndarray] | None = iter([audio]) if isinstance(audio, np.ndarray) else iter(audio)
        self.stream = out.add_stream("aac", rate=rate)
        self.stream.layout = "mono"
        self.fifo = av.AudioFifo()
        self.frame_size = self.stream.codec_context.frame_size or 1024
        self.skip = self.frame_size  # priming samples still to drop
        self.fed = 0  # samples written into the fifo
        self.encoded = 0  # samples sent to the encoder
        self.any_audio = False

    def feed(self) -> bool:
        """Move the next audio chunk into the fifo; False when there is none left."""
        import av

        nxt = None if self.chunks is None else next(self.chunks, None)
        if nxt is None:
            self.chunks = None
            return False
        a = np.asarray(nxt, dtype=np.float32).reshape(-1)
        if self.skip:
            cut = min(self.skip, a.size)
            a, self.skip = a[cut:], self.skip - cut
        if a.size:
            af = av.AudioFrame.from_ndarray(np.clip(a, -1, 1).reshape(1, -1), format="flt", layout="mono")
            af.sample_rate, af.pts = self.rate, self.fed
            self.fifo.write(af)
            self.fed += a.size
            self.any_audio = True
        return True

    def pump(self, until: int | None) -> None:
        """Encode audio up to sample ``until`` (all of it when ``None``)."""
        while until is None or self.encoded < until:
            if self.fifo.samples >= self.frame_size or (self.chunks is None and self.fifo.samples):
                chunk = self.fifo.read(min(self.frame_size, self.fifo.samples), partial=True)
                assert chunk is not None  # the fifo holds samples
                self.encoded += chunk.samples
                for pkt in self.stream.encode(chunk):
                    self.out.mux(pkt)
            elif not self.feed() and not self.fifo.samples:
                break

    def finish(self) -> None:
        """Encode what is left and flush (a track shorter than the priming gets one frame of silence)."""
        import av

        self.pump(None)
        if not self.any_audio:
            af = av.AudioFrame.from_ndarray(np.zeros((1, self.frame_size), np.float32), format="flt", layout="mono")
            af.sample_rate, af.pts = self.rate, 0
            for pkt in self.stream.encode(af):
                self.out.mux(pkt)
        for pkt in self.stream.encode():
            self.out.mux(pkt)
